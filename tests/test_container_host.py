"""The container-host target against real podman, a real registry and a real Caddy. Nothing is mocked.

Each test gets its own app name, stable port, Caddy admin port and state dir; its fixture stops the Caddy
it started and removes its containers (by label) afterwards.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.config.models import AppConfig, ContainerHostTarget, Environment, HealthCheck, Task
from conveyor.errors import BadInput, InfrastructureMissing, TargetError
from conveyor.targets.base import Artifact, Outcome
from conveyor.targets.container_host import ContainerHost
from conveyor.targets.container_host.engine import Engine
from conveyor.targets.container_host.proxy import CaddyProxy
from devstack import Registry, free_port, git, make_sample_repo

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("podman", "buildah", "caddy", "busybox", "docker-registry")),
    reason="needs podman, buildah, caddy, busybox-static and docker-registry (see /work/shared/MACHINE.md)",
)

CRASHING_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
CMD ["/bin/busybox", "sh", "-c", "echo starting hello; echo 'fatal: cannot open database' >&2; exit 1"]
"""
# Serves a document root without index.html, so GET / answers 404; -v logs every request to stderr.
UNHEALTHY_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY broken /www
CMD ["/bin/busybox", "sh", "-c", \
     "echo 'hello (broken build) starting'; exec /bin/busybox httpd -f -v -p ${PORT:-8080} -h /www"]
"""


@dataclass(frozen=True)
class Images:
    v1: Artifact
    v2: Artifact
    crashing: Artifact
    unhealthy: Artifact


def _build_and_push(context: Path, reference: str, digest_file: Path) -> str:
    subprocess.run(["buildah", "bud", "-q", "-t", reference, str(context)], check=True, capture_output=True)
    subprocess.run(
        ["buildah", "push", "-q", "--tls-verify=false", "--digestfile", str(digest_file), reference],
        check=True, capture_output=True,
    )
    return digest_file.read_text().strip()


@pytest.fixture(scope="module")
def images(
    engine_env: dict[str, str], registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Images:
    root = tmp_path_factory.mktemp("images")
    values = {"REGISTRY": registry.host, "STAGING_PORT": "1", "PRODUCTION_PORT": "2", "PROXY_ADMIN_PORT": "3"}
    repo = make_sample_repo(root / "repo", values, version="v1")
    repository = f"{registry.host}/hello"

    def build(context: Path, tag: str, sha: str) -> Artifact:
        digest = _build_and_push(context, f"{repository}:{tag}", root / f"{tag}.digest")
        return Artifact(repository=repository, sha=sha, digest=digest)

    v1 = build(repo, "v1", git(repo, "rev-parse", "HEAD"))
    from devstack import commit_sample_version

    v2 = build(repo, "v2", commit_sample_version(repo, "v2"))
    crash_ctx = root / "crashing"
    crash_ctx.mkdir()
    shutil.copy(repo / "busybox", crash_ctx / "busybox")
    (crash_ctx / "Dockerfile").write_text(CRASHING_DOCKERFILE)
    unhealthy_ctx = root / "unhealthy"
    (unhealthy_ctx / "broken").mkdir(parents=True)
    shutil.copy(repo / "busybox", unhealthy_ctx / "busybox")
    (unhealthy_ctx / "broken" / "other.html").write_text("not the index\n")
    (unhealthy_ctx / "Dockerfile").write_text(UNHEALTHY_DOCKERFILE)
    return Images(v1=v1, v2=v2, crashing=build(crash_ctx, "crashing", v2.sha),
                  unhealthy=build(unhealthy_ctx, "unhealthy", v2.sha))


_apps = itertools.count(1)


@dataclass
class Events:
    lines: list[tuple[str, str, float]] = field(default_factory=list)

    def __call__(self, step: str, message: str) -> None:
        self.lines.append((step, message, time.monotonic()))

    def steps(self) -> list[str]:
        return [step for step, _, _ in self.lines]

    def text(self) -> str:
        return "\n".join(f"{step}: {message}" for step, message, _ in self.lines)


@dataclass
class Host:
    target: ContainerHost
    app: str
    port: int
    admin: str
    state_dir: Path

    def spec(
        self, artifact: Artifact, *, health: dict[str, Any] | None = None, secrets: list[str] | None = None,
        tasks: list[Task] | None = None, engine: str = "auto", drain: float = 0.5, port: int | None = None,
    ) -> dict[str, Any]:
        app = AppConfig(
            app=self.app,
            image=artifact.repository,
            tasks=tasks or [],
            environments=[
                Environment(
                    name="staging",
                    target=ContainerHostTarget(engine=engine, port=port or self.port, proxy_admin=self.admin,
                                               drain_seconds=drain, stop_timeout=5),
                    env={"APP_VERSION": "staging"},
                    secrets=secrets or [],
                    health=HealthCheck(**(health or {"timeout": 10})),
                )
            ],
        )
        return self.target.render(app, app.environment("staging"), artifact)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def containers(self) -> list[dict[str, Any]]:
        ids = podman("ps", "-a", "-q", "--filter", f"label=conveyor.app={self.app}").split()
        return json.loads(podman("container", "inspect", *ids)) if ids else []


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def host(engine_env: dict[str, str], tmp_path: Path) -> Iterator[Host]:
    state_dir = tmp_path / "proxy"
    admin = f"127.0.0.1:{free_port()}"
    app = f"hello{next(_apps)}-{os.getpid()}"
    yield Host(ContainerHost(state_dir), app, free_port(), admin, state_dir)
    CaddyProxy(admin, state_dir).stop()
    ids = podman("ps", "-a", "-q", "--filter", f"label=conveyor.app={app}").split()
    if ids:
        podman("rm", "-f", *ids)


def version_served(url: str) -> str:
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200, response.text
    return response.text.split('id="version">')[1].split("<")[0]


def test_first_deploy_serves_through_the_proxy_on_the_stable_port(host: Host, images: Images) -> None:
    events = Events()
    spec = host.spec(images.v1)
    assert host.target.live(host.app, "staging") is None
    host.target.preflight(spec)
    began = time.monotonic()
    outcome = host.target.deploy(spec, "staging#1", events)
    total = time.monotonic() - began
    assert outcome == Outcome(True), events.text()
    assert version_served(host.url()) == "v1"
    live = host.target.live(host.app, "staging")
    assert live is not None and live.image == images.v1.image and live.release_label == "staging#1"
    [container] = host.containers()
    assert container["State"]["Running"] and container["Config"]["Labels"]["conveyor.release"] == "staging#1"
    assert container["Name"].startswith(f"conveyor-{host.app}-staging-staging-1-")
    # The stable port is now served by our own Caddy server: preflight accepts it.
    host.target.preflight(spec)
    at = {step: t for step, _, t in events.lines}
    print(f"\n[timing] first deploy {total:.2f}s: pull+prepare {at['start'] - began:.2f}s, "
          f"start+health {at['health'] - at['start']:.2f}s, switch {at['switch'] - at['health']:.2f}s, "
          f"drain+retire {at['done'] - at['switch']:.2f}s\n{events.text()}")


def test_second_deploy_switches_and_removes_the_old_container(host: Host, images: Images) -> None:
    assert host.target.deploy(host.spec(images.v1), "staging#1", Events()).succeeded
    [old] = host.containers()
    events = Events()
    began = time.monotonic()
    outcome = host.target.deploy(host.spec(images.v2), "staging#2", events)
    total = time.monotonic() - began
    assert outcome.succeeded, events.text()
    assert version_served(host.url()) == "v2"
    [new] = host.containers()
    assert new["Id"] != old["Id"] and new["ImageName"] == images.v2.image
    assert "retire" in events.steps()
    live = host.target.live(host.app, "staging")
    assert live is not None and (live.image, live.release_label) == (images.v2.image, "staging#2")
    at = {step: t for step, _, t in events.lines}
    print(f"\n[timing] second deploy {total:.2f}s (pull {at['start'] - began:.2f}s, start+health "
          f"{at['health'] - at['start']:.2f}s, switch {at['switch'] - at['health']:.2f}s, drain+retire "
          f"{at['done'] - at['switch']:.2f}s)")


def test_failing_health_check_keeps_the_old_version_serving(host: Host, images: Images) -> None:
    assert host.target.deploy(host.spec(images.v1), "staging#1", Events()).succeeded
    events = Events()
    outcome = host.target.deploy(host.spec(images.unhealthy, health={"timeout": 2}), "staging#2", events)
    assert not outcome.succeeded and outcome.previous_still_serving
    assert outcome.reason == "health check failed: GET / answered 404 for 2s"
    assert any("broken build" in line for line in outcome.logs), outcome.logs
    assert any("response:404" in line for line in outcome.logs), outcome.logs
    assert version_served(host.url()) == "v1"
    [only] = host.containers()
    assert only["ImageName"] == images.v1.image
    live = host.target.live(host.app, "staging")
    assert live is not None and live.release_label == "staging#1"


def test_exiting_container_fails_fast_and_keeps_the_old_version_serving(host: Host, images: Images) -> None:
    assert host.target.deploy(host.spec(images.v1), "staging#1", Events()).succeeded
    began = time.monotonic()
    outcome = host.target.deploy(host.spec(images.crashing, health={"timeout": 30}), "staging#2", Events())
    # It stops waiting as soon as the container exits, not after the 30 s health timeout.
    assert time.monotonic() - began < 15
    assert not outcome.succeeded and outcome.previous_still_serving
    assert outcome.reason == "container exited with code 1 before becoming healthy"
    assert "fatal: cannot open database" in outcome.logs and "starting hello" in outcome.logs
    assert version_served(host.url()) == "v1"
    assert [c["ImageName"] for c in host.containers()] == [images.v1.image]


class Client(threading.Thread):
    """Requests the stable URL in a loop; each failure (error or non-200) is kept.

    With keep_alive, it reuses one connection and behaves like browsers and Go's HTTP client: an idempotent
    request whose reused connection closes before any response is sent again once (RFC 9110 9.2.2). Each
    proxy switch is a Caddy graceful reload, which closes idle keep-alive connections; a request racing
    into one at that instant meets a closed connection. Those retries are counted, and must stay within
    one per switch.
    """

    def __init__(self, url: str, keep_alive: bool) -> None:
        super().__init__(daemon=True)
        self.url, self.keep_alive = url, keep_alive
        self.requests = 0
        self.retried = 0
        self.failures: list[str] = []
        self.versions: list[str] = []
        self.halt = threading.Event()

    def get(self, client: httpx.Client | None) -> httpx.Response:
        if client is None:
            return httpx.get(self.url, timeout=10)  # a new connection every time
        try:
            return client.get(self.url)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            self.retried += 1
            return client.get(self.url)

    def run(self) -> None:
        client = httpx.Client(timeout=10) if self.keep_alive else None
        while not self.halt.is_set():
            try:
                response = self.get(client)
                if response.status_code != 200:
                    self.failures.append(f"HTTP {response.status_code}: {response.text[:100]}")
                else:
                    version = response.text.split('id="version">')[1].split("<")[0]
                    if not self.versions or self.versions[-1] != version:
                        self.versions.append(version)
            except httpx.HTTPError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.requests += 1
        if client:
            client.close()


def test_continuous_client_sees_no_failed_request_across_deploys(host: Host, images: Images) -> None:
    first = host.spec(images.v1)
    assert host.target.deploy(first, "staging#1", Events()).succeeded
    clients = [Client(host.url(), keep_alive=False), Client(host.url(), keep_alive=True)]
    for client in clients:
        client.start()
    try:
        time.sleep(0.5)
        assert host.target.deploy(host.spec(images.v2), "staging#2", Events()).succeeded
        failed = host.target.deploy(host.spec(images.unhealthy, health={"timeout": 1}), "staging#3", Events())
        assert not failed.succeeded
        crashed = host.target.deploy(host.spec(images.crashing), "staging#4", Events())
        assert not crashed.succeeded
        # A rollback re-applies the first release's stored spec exactly.
        assert host.target.deploy(first, "staging#5", Events()).succeeded
        time.sleep(0.5)
    finally:
        for client in clients:
            client.halt.set()
        for client in clients:
            client.join(timeout=15)
    for client in clients:
        kind = "keep-alive" if client.keep_alive else "new connection per request"
        print(f"\n[traffic] {kind}: {client.requests} requests, {len(client.failures)} failed, "
              f"{client.retried} retried on a closed keep-alive connection, versions seen {client.versions}")
        assert client.requests > 50
        assert client.failures == [], client.failures[:5]
        assert client.retried <= 2  # two switches (to v2, back to v1); failed deploys never touch Caddy
        assert client.versions == ["v1", "v2", "v1"]


def test_run_task_streams_output_and_raises_with_logs_on_failure(host: Host, images: Images) -> None:
    command = ["/bin/busybox", "sh", "-c", "true"]
    spec = host.spec(images.v1, tasks=[Task(name="migrate", command=command)])
    assert spec["tasks"] == [{"name": "migrate", "command": command, "timeout": 300}]
    events = Events()
    ok = {"name": "migrate", "timeout": 60,
          "command": ["/bin/busybox", "sh", "-c", "echo migrating for $APP_VERSION; echo step 2 >&2"]}
    host.target.run_task(spec, ok, events)
    assert [(s, m) for s, m, _ in events.lines if s == "task"] == [
        ("task", "migrating for staging"), ("task", "step 2")]
    script = "echo loading seed data; echo 'duplicate key' >&2; exit 3"
    bad = {"name": "seed", "timeout": 60, "command": ["/bin/busybox", "sh", "-c", script]}
    with pytest.raises(TargetError) as failure:
        host.target.run_task(spec, bad, Events())
    assert failure.value.message == "task seed exited with 3"
    assert failure.value.logs == ["loading seed data", "duplicate key"]
    assert host.containers() == []  # --rm: nothing left behind


def test_run_task_timeout_kills_and_removes_the_container(host: Host, images: Images) -> None:
    spec = host.spec(images.v1)
    task = {"name": "slow", "timeout": 1.5, "command": ["/bin/busybox", "sh", "-c", "echo begun; sleep 60"]}
    began = time.monotonic()
    with pytest.raises(TargetError) as failure:
        host.target.run_task(spec, task, Events())
    assert time.monotonic() - began < 15
    assert failure.value.message == "task slow timed out after 1.5s" and failure.value.logs == ["begun"]
    assert host.containers() == []


def test_preflight_refuses_a_port_held_by_another_process(host: Host, images: Images) -> None:
    spec = host.spec(images.v1)
    with socket.socket() as foreign:
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        foreign.bind(("127.0.0.1", host.port))
        foreign.listen()
        with pytest.raises(BadInput) as refused:
            host.target.preflight(spec)
    assert refused.value.message == (f"port {host.port} is in use by another process; "
                                     "choose another target.port for staging")


def test_preflight_refuses_a_port_served_by_another_apps_caddy_server(host: Host, images: Images) -> None:
    assert host.target.deploy(host.spec(images.v1), "staging#1", Events()).succeeded
    other = Host(host.target, f"other-{host.app}", host.port, host.admin, host.state_dir)
    with pytest.raises(BadInput, match="is in use by another process"):
        other.target.preflight(other.spec(images.v1))


def test_missing_secret_is_bad_input_naming_it(host: Host, images: Images,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HELLO_DB_PASSWORD", raising=False)
    spec = host.spec(images.v1, secrets=["HELLO_DB_PASSWORD"])
    with pytest.raises(BadInput, match="HELLO_DB_PASSWORD"):
        host.target.preflight(spec)
    with pytest.raises(BadInput, match="HELLO_DB_PASSWORD"):
        host.target.deploy(spec, "staging#1", Events())
    assert host.containers() == []


def test_secrets_reach_the_container_but_never_a_command_line_or_the_spec(
    host: Host, images: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = "s3cr3t-" + os.urandom(8).hex()
    monkeypatch.setenv("HELLO_DB_PASSWORD", value)
    spec = host.spec(images.v1, secrets=["HELLO_DB_PASSWORD"])
    assert value not in json.dumps(spec) and spec["secrets"] == ["HELLO_DB_PASSWORD"]
    host.target.preflight(spec)
    events = Events()
    probe = {"name": "probe", "timeout": 60,
             "command": ["/bin/busybox", "sh", "-c", "echo secret length ${#HELLO_DB_PASSWORD}"]}
    host.target.run_task(spec, probe, events)
    assert ("task", f"secret length {len(value)}") in [(s, m) for s, m, _ in events.lines]
    assert host.target.deploy(spec, "staging#1", events).succeeded
    [container] = host.containers()
    assert f"HELLO_DB_PASSWORD={value}" in container["Config"]["Env"]  # the engine's business, not argv
    argv = {key: container.get(key) or container["Config"].get(key)
            for key in ("Args", "Cmd", "Entrypoint", "CreateCommand", "Path")}
    assert "HELLO_DB_PASSWORD" in json.dumps(argv["CreateCommand"])  # passed by name...
    assert value not in json.dumps(argv)  # ...never by value
    assert value not in events.text()


def test_live_reports_the_serving_image_and_survives_a_caddy_restart(host: Host, images: Images) -> None:
    assert host.target.deploy(host.spec(images.v2), "staging#7", Events()).succeeded
    proxy = CaddyProxy(host.admin, host.state_dir)
    proxy.stop()
    live = host.target.live(host.app, "staging")
    assert live is not None and live.image == images.v2.image and "not running" in live.detail
    # Caddy resumes its autosaved config: the same container serves again on the stable port.
    proxy.ensure_running()
    assert version_served(host.url()) == "v2"
    live = host.target.live(host.app, "staging")
    assert live is not None and live.release_label == "staging#7" and "not running" not in live.detail


def test_two_apps_share_one_caddy(host: Host, images: Images) -> None:
    other = Host(host.target, f"other-{host.app}", free_port(), host.admin, host.state_dir)
    try:
        assert host.target.deploy(host.spec(images.v1), "staging#1", Events()).succeeded
        assert other.target.deploy(other.spec(images.v2), "staging#1", Events()).succeeded
        assert version_served(host.url()) == "v1" and version_served(other.url()) == "v2"
        servers = httpx.get(f"http://{host.admin}/config/apps/http/servers").json()
        assert set(servers) == {f"{host.app}-staging", f"{other.app}-staging"}
    finally:
        ids = podman("ps", "-a", "-q", "--filter", f"label=conveyor.app={other.app}").split()
        if ids:
            podman("rm", "-f", *ids)


def test_leftover_containers_from_a_crashed_run_are_removed_but_not_the_serving_one(
    host: Host, images: Images
) -> None:
    assert host.target.deploy(host.spec(images.v1), "staging#1", Events()).succeeded
    [serving] = host.containers()
    engine = Engine.detect("auto")
    labels = {"conveyor.app": host.app, "conveyor.env": "staging", "conveyor.role": "service",
              "conveyor.port": str(free_port()), "conveyor.release": "staging#2"}
    engine.run_detached(images.v1.image, name=f"conveyor-{host.app}-staging-crashed", labels=labels,
                        env={}, secret_names=[], init=True)
    events = Events()
    assert host.target.deploy(host.spec(images.v2), "staging#3", events).succeeded
    cleaned = [m for s, m, _ in events.lines if s == "cleanup"]
    assert len(cleaned) == 1 and "crashed" in cleaned[0]
    assert serving["Name"] not in cleaned[0]
    assert [c["ImageName"] for c in host.containers()] == [images.v2.image]


def test_pull_from_a_dead_registry_names_the_image_and_the_cause(host: Host, images: Images) -> None:
    # A digest nothing here holds: podman finds a local image by digest whatever its repository.
    digest = "sha256:" + os.urandom(32).hex()
    dead = Artifact(repository=f"127.0.0.1:{free_port()}/hello", sha=images.v1.sha, digest=digest)
    with pytest.raises(TargetError) as failure:
        host.target.deploy(host.spec(dead), "staging#1", Events())
    message = failure.value.message
    assert message.startswith(f"could not pull {dead.image}: ") and "connection refused" in message
    assert "\n" not in message
    print(f"\n[pull error] {message}")


def test_missing_engine_or_proxy_is_infrastructure_missing(
    host: Host, images: Images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docker = shutil.which("docker")
    docker_works = bool(docker) and subprocess.run([str(docker), "info"], capture_output=True).returncode == 0
    # A docker CLI without a daemon (as on these machines) is no engine: it must be refused, not used.
    if not docker_works:
        with pytest.raises(InfrastructureMissing, match="docker"):
            host.target.preflight(host.spec(images.v1, engine="docker"))
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(InfrastructureMissing) as missing:
        ContainerHost(host.state_dir).preflight(host.spec(images.v1))
    assert missing.value.message == (
        "no container engine found: install podman or docker, or set target.engine"
    )
    only_podman = tmp_path / "only-podman"
    only_podman.mkdir()
    podman_binary = shutil.which("podman", path="/usr/bin:/usr/local/bin") or "/usr/bin/podman"
    (only_podman / "podman").symlink_to(podman_binary)
    monkeypatch.setenv("PATH", str(only_podman))
    with pytest.raises(InfrastructureMissing, match="caddy is not installed"):
        ContainerHost(host.state_dir).preflight(host.spec(images.v1))
    with pytest.raises(InfrastructureMissing, match="caddy is not installed"):
        ContainerHost(host.state_dir).deploy(host.spec(images.v1), "staging#1", Events())
