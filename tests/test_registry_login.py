"""The container host pulls from an environment's own registry with that registry's login: an auth file
(0600, in a fresh 0700 directory removed after the pull), never the secret on a command line.

The argv and the file are checked with the recording Runner; the whole path end to end against a real
docker-registry behind htpasswd (tests/fakes/registries.py), the real CLI, podman and HAProxy."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.runner import Completed, RecordingRunner
from conveyor.targets.container_host.engine import Engine, RegistryLogin
from tests.e2e import App
from tests.fakes.registries import AuthRegistry

PASSWORD = "pull-secret-7f3a"
IMAGE = "127.0.0.1:5999/hello-prod@sha256:" + "a" * 64
PRODUCTION_POLICY = "    policy:\n      require_promotion_from: staging\n"


def _recording(seen: dict[str, object]) -> RecordingRunner:
    def answer(argv: tuple[str, ...]) -> Completed | None:
        if "pull" in argv:
            where = argv[argv.index("--authfile") + 1] if "--authfile" in argv else argv[argv.index("--config") + 1]
            auth_file = Path(where) if where.endswith(".json") else Path(where) / "config.json"
            seen.update(argv=argv, file=auth_file, text=auth_file.read_text(),
                        file_mode=stat.S_IMODE(auth_file.stat().st_mode),
                        dir_mode=stat.S_IMODE(auth_file.parent.stat().st_mode))
        return None
    return RecordingRunner(answer)


@pytest.mark.parametrize("engine", ["podman", "docker"])
def test_a_pull_with_a_login_reads_it_from_a_private_auth_file(engine: str) -> None:
    seen: dict[str, object] = {}
    login = RegistryLogin("127.0.0.1:5999", "deployer", PASSWORD)
    Engine(engine, engine, _recording(seen)).pull(IMAGE, login, insecure=True)
    argv = seen["argv"]
    assert PASSWORD not in " ".join(argv) and "deployer" not in " ".join(argv)  # type: ignore[arg-type]
    directory = str(seen["file"].parent)  # type: ignore[attr-defined]
    if engine == "podman":
        assert argv == ("podman", "pull", "-q", "--authfile", str(seen["file"]), "--tls-verify=false", IMAGE)
    else:
        assert argv == ("docker", "--config", directory, "pull", "-q", IMAGE)
    assert seen["file_mode"] == 0o600 and seen["dir_mode"] == 0o700
    auth = json.loads(seen["text"])["auths"]["127.0.0.1:5999"]["auth"]  # type: ignore[arg-type]
    assert base64.b64decode(auth).decode() == f"deployer:{PASSWORD}"
    assert not os.path.exists(directory)  # gone once the pull is done
    assert PASSWORD not in repr(login)


def test_a_pull_without_a_login_has_no_auth_file() -> None:
    runner = RecordingRunner()
    Engine("podman", "podman", runner).pull(IMAGE)
    Engine("podman", "podman", runner).pull(IMAGE, insecure=True)  # an environment's plain-HTTP registry
    assert runner.calls == [("podman", "pull", "-q", IMAGE), ("podman", "pull", "-q", "--tls-verify=false", IMAGE)]


@pytest.fixture
def login_registry(tmp_path: Path) -> Iterator[AuthRegistry]:
    reg = AuthRegistry(tmp_path / "prod-registry", "basic", {"deployer": PASSWORD}).start()
    yield reg
    reg.stop()


def _own_registry_with_login(host: str) -> object:
    """production pulls from its own registry, and is deployed to directly (no promotion policy): a
    promotion would find the digest already in podman's storage from staging's pull, and not pull it."""
    def change(text: str) -> str:
        return text.replace(PRODUCTION_POLICY, f"    registry:\n      image: {host}/hello-prod\n"
                            "      insecure: true\n      username_env: PROD_USER\n      password_env: PROD_PASSWORD\n")
    return change


def test_production_pulls_from_its_own_registry_with_its_login(app: App, login_registry: AuthRegistry) -> None:
    app.extra_env.update(PROD_USER="deployer", PROD_PASSWORD=PASSWORD)
    sha = app.reconfigure(_own_registry_with_login(login_registry.host))  # type: ignore[arg-type]
    promoted = app.ok("deploy", "production", sha)
    live = app.status()["production"]["live"]
    assert live["image"] == f"{login_registry.host}/hello-prod@{live['digest']}"
    assert "pulled " + live["image"] in promoted.err  # from the registry that wants the login, not a cache
    assert app.serves("production") == "v2"
    assert PASSWORD not in promoted.err and PASSWORD not in promoted.out
    wrong = app.run("rollback", "production", "--to", "1", PROD_PASSWORD="")
    assert wrong.code == 2 and "PROD_PASSWORD not set (or empty)" in wrong.err
