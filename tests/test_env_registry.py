"""An environment with its own `registry:` gets the artifact copied there by digest before the apply,
end to end through the real CLI (real registry, podman, HAProxy). The copy's other paths (another
registry, missing blobs, resume, credentials, a digest that arrives different) are in test_registry_copy.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cut_relay import CutRelay
from tests.e2e import App
from tests.fakes.registries import AuthRegistry

PRODUCTION_POLICY = "    policy:\n      require_promotion_from: staging\n"


def _own_registry(host: str, login: str = "") -> object:
    def change(text: str) -> str:
        return text.replace(PRODUCTION_POLICY, PRODUCTION_POLICY + f"    registry:\n      image: {host}/hello-prod\n"
                            "      insecure: true\n" + login)
    return change


def test_promotion_copies_the_digest_to_the_environments_registry(app: App, registry) -> None:
    sha = app.reconfigure(_own_registry(registry.host))  # type: ignore[arg-type]
    app.ok("deploy", "staging", sha)
    staged = app.status()["staging"]["live"]
    assert staged["image"] == f"{registry.host}/hello@{staged['digest']}"  # staging has no registry of its own
    result = app.ok("promote")
    assert "copy " + staged["digest"] in result.err
    assert "mounted" in result.err  # the same registry: linked, not sent
    live = app.status()["production"]["live"]
    assert live["image"] == f"{registry.host}/hello-prod@{staged['digest']}"
    assert app.serves("production") == "v2"
    again = app.ok("rollback", "production", "--to", "1")  # the stored spec: its copy finds nothing missing
    assert "already in the destination: nothing to copy" in again.err


def test_dry_run_lists_the_copy(app: App, registry) -> None:
    sha = app.reconfigure(_own_registry(registry.host), build=False)  # type: ignore[arg-type]
    app.ok("build", sha)
    app.ok("deploy", "staging", sha)
    plan = app.ok("promote", "--dry-run").out
    assert f"to {registry.host}/hello-prod (only missing blobs)" in plan


@pytest.fixture
def cut_relay(registry) -> Iterator[CutRelay]:
    relay = CutRelay(("127.0.0.1", registry.port)).start()
    yield relay
    relay.stop()


def test_an_interrupted_copy_is_resumed_by_the_next_promotion(app: App, cut_relay: CutRelay) -> None:
    sha = app.reconfigure(_own_registry(cut_relay.host))  # type: ignore[arg-type]  # production's registry: the relay
    app.ok("deploy", "staging", sha)
    app.extra_env["CONVEYOR_COPY_CHUNK_MB"] = "0.25"  # the ~1.1 MB layer in five chunks
    cut_relay.cut_at_chunk(2)  # the layer's second chunk: the first is confirmed, nothing of the second is sent
    cut = app.run("promote")
    assert cut_relay.cut.is_set()
    assert cut.code == 2 and "Traceback" not in cut.err  # an unreachable registry (README's exit codes)
    # Whichever request the cut reached first (the chunk, or a blob's next call) says so in one line.
    assert re.match(f"error: registry {cut_relay.host} (broke off|is unreachable)", cut.err.splitlines()[-1])
    assert app.history("production")[0]["status"] == "failed"
    assert app.status()["production"]["live"] is None
    cut_relay.heal()
    resumed = app.ok("promote")
    assert re.search(r"resuming \w{12} at 0\.3 MB of 1\.1 MB", resumed.err)
    assert "0.3 MB resumed from an earlier copy" in resumed.err
    live = app.status()["production"]["live"]
    assert live["image"] == f"{cut_relay.host}/hello-prod@{live['digest']}"
    assert app.serves("production") == "v2"


@pytest.fixture
def login_registry(tmp_path: Path) -> Iterator[AuthRegistry]:
    reg = AuthRegistry(tmp_path / "prod-registry", "basic", {"deployer": "right-password"}).start()
    yield reg
    reg.stop()


def test_a_wrong_destination_credential_is_one_line_and_changes_nothing(app: App, login_registry) -> None:
    login = "      username_env: PROD_USER\n      password_env: PROD_PASSWORD\n"
    app.extra_env.update(PROD_USER="deployer", PROD_PASSWORD="right-password")
    first = app.reconfigure(_own_registry(login_registry.host, login), on="main", message="first")  # type: ignore[arg-type]
    app.ok("deploy", "staging", first)
    app.ok("promote")
    second = app.reconfigure(_own_registry(login_registry.host, login), on="main", message="second")  # type: ignore[arg-type]
    app.ok("deploy", "staging", second)
    wrong = app.run("promote", PROD_PASSWORD="wrong-password")
    assert wrong.code == 2 and "Traceback" not in wrong.err
    [line] = [x for x in wrong.err.splitlines() if x.startswith("error:")]
    assert f"registry {login_registry.host} rejected the credentials for {login_registry.host}/hello-prod" in line
    assert "wrong-password" not in wrong.err + wrong.out
    records = app.history("production")
    assert [(r["number"], r["status"]) for r in records] == [(2, "failed"), (1, "succeeded")]
    status = app.status()["production"]
    assert status["live"]["number"] == 1 and status["live"]["sha"] == first and status["drift"] is False
    assert app.serves("production") == "v2"
