"""The container-host target against real podman, a real registry and a real HAProxy. Nothing is mocked.

Each test gets its own app name, stable ports and state dir (so its own HAProxy); its fixture stops that
HAProxy and removes the test's containers (by label) afterwards.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.config.models import AppConfig, Environment, HealthCheck, Task
from conveyor.errors import BadInput, InfrastructureMissing, TargetError
from conveyor.targets.base import Artifact, Outcome
from conveyor.targets.container_host import ContainerHost
from conveyor.targets.container_host.engine import Engine
from conveyor.targets.container_host.proxy import HAProxy
from conveyor.targets.container_host.settings import ContainerHostTarget
from devstack import Registry, free_port, git, make_sample_repo, wait_for_port

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("podman", "buildah", "haproxy", "busybox", "docker-registry")),
    reason="needs podman, buildah, haproxy, busybox-static and docker-registry (see /work/shared/MACHINE.md)",
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
    state_dir: Path

    @property
    def proxy(self) -> HAProxy:
        return HAProxy(self.state_dir)

    def spec(
        self, artifact: Artifact, *, health: dict[str, Any] | None = None, secrets: list[str] | None = None,
        tasks: list[Task] | None = None, engine: str = "auto", drain: float = 0.5, port: int | None = None,
        env: str = "staging",
    ) -> dict[str, Any]:
        app = AppConfig(
            app=self.app,
            image=artifact.repository,
            tasks=tasks or [],
            environments=[
                Environment(
                    name=env,
                    target=ContainerHostTarget(engine=engine, port=port or self.port, drain_seconds=drain,
                                               stop_timeout=5),
                    env={"APP_VERSION": env},
                    secrets=secrets or [],
                    health=HealthCheck(**(health or {"timeout": 10})),
                )
            ],
        )
        return self.target.render(app, app.environment(env), artifact)

    def url(self, path: str = "/", port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.port}{path}"

    def containers(self) -> list[dict[str, Any]]:
        ids = podman("ps", "-a", "-q", "--filter", f"label=conveyor.app={self.app}").split()
        return json.loads(podman("container", "inspect", *ids)) if ids else []


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def host(engine_env: dict[str, str], tmp_path: Path) -> Iterator[Host]:
    state_dir = tmp_path / "proxy"
    app = f"hello{next(_apps)}-{os.getpid()}"
    yield Host(ContainerHost(state_dir), app, free_port(), state_dir)
    HAProxy(state_dir).stop()
    ids = podman("ps", "-a", "-q", "--filter", f"label=conveyor.app={app}").split()
    if ids:
        podman("rm", "-f", *ids)


def version_of(body: str) -> str:
    return body.split('id="version">')[1].split("<")[0]


def version_served(url: str) -> str:
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200, response.text
    return version_of(response.text)


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
    # The stable port is now served by our own HAProxy listener: preflight accepts it.
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


class Traffic(threading.Thread):
    """Requests `url` in a loop until halted, and never retries: any exception or non-200 answer is a failure.

    kind "new": a new connection per request (urllib). "persistent": one http.client connection reused for
    every request (http.client opens a new one only after an answer said Connection: close). "pooled": an
    httpx client (keep-alive pool, no retries).
    """

    def __init__(self, url: str, kind: str) -> None:
        super().__init__(daemon=True)
        self.url, self.kind = url, kind
        self.failures: list[str] = []
        self.served: list[tuple[float, str]] = []  # (when the request was sent, version that answered)
        self.halt = threading.Event()

    @property
    def requests(self) -> int:
        return len(self.served) + len(self.failures)

    def versions(self) -> list[str]:
        """The versions served, in order, each run of one version counted once."""
        seen: list[str] = []
        for _, version in self.served:
            if not seen or seen[-1] != version:
                seen.append(version)
        return seen

    def run(self) -> None:
        host, port = urllib.parse.urlsplit(self.url).hostname, urllib.parse.urlsplit(self.url).port
        connection: http.client.HTTPConnection | None = None
        pool = httpx.Client(timeout=10) if self.kind == "pooled" else None
        while not self.halt.is_set():
            sent = time.monotonic()
            try:
                if self.kind == "new":
                    with urllib.request.urlopen(self.url, timeout=10) as response:
                        status, body = response.status, response.read().decode()
                elif self.kind == "persistent":
                    if connection is None:
                        connection = http.client.HTTPConnection(str(host), port, timeout=10)
                    connection.request("GET", "/")
                    answer = connection.getresponse()
                    status, body = answer.status, answer.read().decode()
                else:
                    assert pool is not None
                    reply = pool.get(self.url)
                    status, body = reply.status_code, reply.text
            except urllib.error.HTTPError as exc:
                status, body = exc.code, ""
            except Exception as exc:  # noqa: BLE001 - every kind of failure counts, none is retried
                self.failures.append(f"{type(exc).__name__}: {exc}")
                if connection is not None:
                    connection.close()  # the next request opens a new connection (a failure is already counted)
                continue
            if status != 200:
                self.failures.append(f"HTTP {status}: {body[:100]}")
            else:
                self.served.append((sent, version_of(body)))
        if connection is not None:
            connection.close()
        if pool is not None:
            pool.close()


@contextlib.contextmanager
def traffic(url: str, kinds: list[str]) -> Iterator[list[Traffic]]:
    clients = [Traffic(url, kind) for kind in kinds]
    for client in clients:
        client.start()
    try:
        time.sleep(0.3)
        yield clients
        time.sleep(0.3)
    finally:
        for client in clients:
            client.halt.set()
        for client in clients:
            client.join(timeout=15)


ALL_KINDS = ["new", "persistent", "pooled", "pooled", "pooled"]


def report(clients: list[Traffic], what: str) -> None:
    for client in clients:
        print(f"\n[traffic] {what}, {client.kind}: {client.requests} requests, {len(client.failures)} failed "
              f"{client.failures[:3]}, versions seen {client.versions()}")


def test_continuous_clients_see_no_failed_request_across_deploys(host: Host, images: Images) -> None:
    first = host.spec(images.v1)
    assert host.target.deploy(first, "staging#1", Events()).succeeded
    with traffic(host.url(), ALL_KINDS) as clients:
        assert host.target.deploy(host.spec(images.v2), "staging#2", Events()).succeeded
        failed = host.target.deploy(host.spec(images.unhealthy, health={"timeout": 1}), "staging#3", Events())
        assert not failed.succeeded
        crashed = host.target.deploy(host.spec(images.crashing), "staging#4", Events())
        assert not crashed.succeeded
        # A rollback re-applies the first release's stored spec exactly.
        assert host.target.deploy(first, "staging#5", Events()).succeeded
    report(clients, "4 deploys")
    for client in clients:
        assert client.failures == [], (client.kind, client.failures[:5])
        assert client.requests > 200, client.kind
        assert client.versions() == ["v1", "v2", "v1"], client.kind


UPSTREAM = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Page(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, unlike busybox httpd: HAProxy pools connections to it
    disable_nagle_algorithm = True

    def do_GET(self):
        body = f'<p id="version">{sys.argv[2]}</p>'.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Page)
server.daemon_threads = True
server.serve_forever()
"""


def keep_alive_upstream(version: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(port), version], stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return process, f"127.0.0.1:{port}"


def test_thirty_back_to_back_switches_under_hot_clients_fail_nothing_and_serve_the_new_upstream_at_once(
    tmp_path: Path,
) -> None:
    """Switches between upstreams that keep connections alive (as most apps do), each retired 0.2 s after
    the switch the way a deploy retires the old container: killed, closing its connections."""
    proxy = HAProxy(tmp_path / "proxy")
    port = free_port()
    current, upstream = keep_alive_upstream("u0")
    processes = [current]
    try:
        proxy.ensure_running()
        proxy.switch("stress", "staging", "127.0.0.1", port, upstream)
        durations: list[float] = []
        switched_at: list[tuple[float, int]] = []
        with traffic(f"http://127.0.0.1:{port}/", ALL_KINDS) as clients:
            for number in range(1, 31):
                following, upstream = keep_alive_upstream(f"u{number}")
                processes.append(following)
                began = time.monotonic()
                proxy.switch("stress", "staging", "127.0.0.1", port, upstream)
                durations.append(time.monotonic() - began)
                switched_at.append((time.monotonic(), number))
                time.sleep(0.2)  # drain
                current.terminate()
                current.wait()
                current = following
        report(clients, "30 switches")
        print(f"\n[switch] runtime switch took {1000 * sum(durations) / len(durations):.1f} ms on average, "
              f"{1000 * max(durations):.1f} ms at most")
        for client in clients:
            assert client.failures == [], (client.kind, client.failures[:5])
            assert client.requests > 300, client.kind
            assert client.versions() == [f"u{n}" for n in range(31)], client.kind
            # A request sent after a switch returned is answered by the new upstream, never the old one:
            # no pooled connection to the old upstream is reused.
            for at, number in switched_at:
                stale = [served for sent, served in client.served if sent > at and int(served[1:]) < number]
                assert stale == [], (client.kind, number, stale[:5])
    finally:
        proxy.stop()
        for process in processes:
            process.kill()
            process.wait()


def test_a_new_environment_reloads_without_failing_another_environments_clients(
    host: Host, images: Images
) -> None:
    assert host.target.deploy(host.spec(images.v1), "staging#1", Events()).succeeded
    # An idle keep-alive connection: it sends its next request only after the reload and during the next deploy.
    idle = http.client.HTTPConnection("127.0.0.1", host.port, timeout=10)
    idle.request("GET", "/")
    assert version_of(idle.getresponse().read().decode()) == "v1"
    production = free_port()
    with traffic(host.url(), ALL_KINDS) as clients:
        before = host.proxy.processes()
        began = time.monotonic()
        assert host.target.deploy(host.spec(images.v2, env="production", port=production), "production#1",
                                  Events()).succeeded
        print(f"\n[reload] deploy of a new environment (start, health, reload) took {time.monotonic() - began:.2f}s")
        assert version_served(host.url(port=production)) == "v2"
        after = host.proxy.processes()
        assert after.reloads == before.reloads + 1 and after.workers != before.workers
        # The worker the reload left keeps the idle connection open (idle-close-on-response), and routes its
        # next request with the upstream it had: the next staging deploy keeps the v1 container until then.
        assert before.workers[0] in after.old_workers
        assert host.proxy.held_by_old_workers(host.app, "staging") == 1
        events = Events()
        outcomes: list[Outcome] = []
        deploying = threading.Thread(target=lambda: outcomes.append(
            host.target.deploy(host.spec(images.v2, drain=0.2), "staging#2", events)))
        deploying.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("left by a reload" in m for _, m, _ in events.lines):
            time.sleep(0.05)
        assert any("left by a reload" in message for _, message, _ in events.lines), events.text()
        idle.request("GET", "/")
        answer = idle.getresponse()
        asked = time.monotonic()
        assert answer.status == 200 and version_of(answer.read().decode()) == "v1"
        assert answer.getheader("Connection", "").lower() == "close"  # the old worker lets it go
        idle.close()
        deploying.join(timeout=30)
        assert outcomes and outcomes[0].succeeded, events.text()
        retired = next(t for step, _, t in events.lines if step == "retire")
        assert retired > asked
    report(clients, "new environment + switch")
    for client in clients:
        assert client.failures == [], (client.kind, client.failures[:5])
        assert client.requests > 100, client.kind
        assert client.versions() == ["v1", "v2"], client.kind
    assert version_served(host.url()) == "v2"
    assert set(host.proxy.sites()) == {f"{host.app}.staging", f"{host.app}.production"}


def test_a_reload_haproxy_refuses_fails_the_deploy_and_keeps_everything_serving(
    host: Host, images: Images
) -> None:
    assert host.target.deploy(host.spec(images.v1), "staging#1", Events()).succeeded
    config = host.proxy.config_file.read_text()
    production = free_port()
    # Taken after preflight would have passed: HAProxy cannot bind it when it reloads.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", production))
        squatter.listen()
        outcome = host.target.deploy(host.spec(images.v2, env="production", port=production), "production#1",
                                     Events())
    assert not outcome.succeeded and outcome.previous_still_serving
    assert outcome.reason.startswith("proxy switch failed: haproxy could not load the new config: ")
    assert "Address already in use" in outcome.reason, outcome.reason
    assert version_served(host.url()) == "v1"
    assert host.proxy.config_file.read_text() == config
    assert set(host.proxy.sites()) == {f"{host.app}.staging"}
    assert [c["ImageName"] for c in host.containers()] == [images.v1.image]
    # And the next changes go through: a runtime switch, and a reload once the port is free.
    assert host.target.deploy(host.spec(images.v2), "staging#2", Events()).succeeded
    assert version_served(host.url()) == "v2"
    assert host.target.deploy(host.spec(images.v1, env="production", port=production), "production#2",
                              Events()).succeeded
    assert version_served(host.url(port=production)) == "v1" and version_served(host.url()) == "v2"


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


def test_preflight_refuses_a_port_served_for_another_app_by_the_same_haproxy(host: Host, images: Images) -> None:
    assert host.target.deploy(host.spec(images.v1), "staging#1", Events()).succeeded
    other = Host(host.target, f"other-{host.app}", host.port, host.state_dir)
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


def test_live_reports_the_serving_image_and_survives_an_haproxy_restart(host: Host, images: Images) -> None:
    assert host.target.deploy(host.spec(images.v2), "staging#7", Events()).succeeded
    host.proxy.stop()
    assert not host.proxy.answering()
    live = host.target.live(host.app, "staging")
    assert live is not None and live.image == images.v2.image and "not running" in live.detail
    # HAProxy starts from proxy.json: the same container serves again on the stable port.
    host.proxy.ensure_running()
    assert version_served(host.url()) == "v2"
    live = host.target.live(host.app, "staging")
    assert live is not None and live.release_label == "staging#7" and "not running" not in live.detail


def test_a_killed_haproxy_comes_back_with_every_environments_current_upstream(host: Host, images: Images) -> None:
    production = free_port()
    assert host.target.deploy(host.spec(images.v1), "staging#1", Events()).succeeded
    assert host.target.deploy(host.spec(images.v1, env="production", port=production), "production#1",
                              Events()).succeeded
    # A runtime switch: haproxy.cfg (written by the last reload) still names staging's first container.
    assert host.target.deploy(host.spec(images.v2), "staging#2", Events()).succeeded
    upstream = host.proxy.upstream(host.app, "staging")
    assert upstream is not None and upstream not in host.proxy.config_file.read_text()
    found = host.proxy.processes()
    pids = [host.proxy.master_pid(), *found.workers, *found.old_workers]
    for pid in pids:
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # as the OOM killer would: no clean-up of any kind
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(gone(pid) for pid in pids if pid is not None):
        time.sleep(0.05)
    assert not host.proxy.answering()
    with pytest.raises(httpx.HTTPError):
        httpx.get(host.url(), timeout=2)
    host.proxy.ensure_running()
    assert version_served(host.url()) == "v2"
    assert version_served(host.url(port=production)) == "v1"
    assert host.proxy.upstream(host.app, "staging") == upstream
    live = host.target.live(host.app, "production")
    assert live is not None and live.release_label == "production#1"
    # And it switches as before.
    assert host.target.deploy(host.spec(images.v1), "staging#3", Events()).succeeded
    assert version_served(host.url()) == "v1"


def gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie waiting for its parent to collect it has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_two_apps_share_one_haproxy(host: Host, images: Images) -> None:
    other = Host(host.target, f"other-{host.app}", free_port(), host.state_dir)
    try:
        assert host.target.deploy(host.spec(images.v1), "staging#1", Events()).succeeded
        assert other.target.deploy(other.spec(images.v2), "staging#1", Events()).succeeded
        assert version_served(host.url()) == "v1" and version_served(other.url()) == "v2"
        assert set(host.proxy.sites()) == {f"{host.app}.staging", f"{other.app}.staging"}
        assert len(host.proxy.processes().workers) == 1
        for app in (host.app, other.app):
            slots = host.proxy.slots(f"{app}.staging")
            assert slots is not None and len([slot for slot in slots if slot.in_service]) == 1
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
    with pytest.raises(InfrastructureMissing) as missing:
        ContainerHost(host.state_dir).preflight(host.spec(images.v1))
    assert missing.value.message == "haproxy is not installed (apt-get install haproxy)"
    with pytest.raises(InfrastructureMissing, match="haproxy is not installed"):
        ContainerHost(host.state_dir).deploy(host.spec(images.v1), "staging#1", Events())
    assert host.containers() == []
