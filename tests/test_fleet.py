"""The ssh-hosts target end to end: three real hosts (network namespaces with their own sshd, podman
settings and HAProxy, see tests/fleet.py), the real `conveyor` command, the real registry and ledger."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conveyor.targets.ssh_hosts.machine import SSHMachine
from conveyor.targets.ssh_hosts.transport import HostAddress, SSHRunner
from tests.e2e import CONVEYOR, App
from tests.fakes.registries import AuthRegistry
from tests.fleet import Fleet, FleetHost, cleanup_leftovers
from tests.test_container_host import Traffic, version_of

PORT = 8080  # every host's own HAProxy serves here, each in its own namespace
ENV = "fleet"
START = ("if [ -e /hold/crash ]; then echo 'fatal: this host cannot start the app' >&2; exit 3; fi; "
         "exec /bin/busybox httpd -f -p ${PORT:-8080} -h /www")
DOCKERFILE = f"""FROM scratch
COPY busybox /bin/busybox
COPY www /www
CMD {json.dumps(["/bin/busybox", "sh", "-c", START])}
"""
# The health check: blocks while the host's /hold/gate is a fifo nobody writes to (a hold the test controls).
HEALTH = """#!/bin/busybox sh
if [ -p /hold/gate ]; then read line < /hold/gate; fi
printf 'Content-Type: text/plain\\r\\n\\r\\nok\\n'
"""


@pytest.fixture(scope="module")
def fleet(registry: Any, engine_env: dict[str, str]) -> Iterator[Fleet]:
    cleanup_leftovers()
    hosts = Fleet.create(3, registry.port)
    try:
        yield hosts
    finally:
        hosts.destroy()


def fleet_config(app: App, fleet: Fleet, *, parallel: str = "1", known_hosts: Path | None = None,
                 hosts: list[FleetHost] | None = None, engine: str = "auto", min_free_mb: int = 10,
                 extra: str = "", more: str = "") -> str:
    """The fleet environment's config; `extra` is added to its section, `more` after it (another env)."""
    image = next(line for line in (app.repo / "conveyor.yml").read_text().splitlines() if line.startswith("image:"))
    listed = ", ".join(host.ssh for host in (hosts or fleet.hosts))
    return f"""app: hello
{image}
registry:
  insecure: true
tasks:
  - name: migrate
    command: ["/bin/busybox", "sh", "-c", "echo migrating on $(cat /hold/name)"]
environments:
  - name: {ENV}
    target:
      type: ssh-hosts
      hosts: [{listed}]
      known_hosts: {known_hosts or fleet.known_hosts}
      identity_env: FLEET_SSH_KEY
      port: {PORT}
      parallel: "{parallel}"
      drain_seconds: 0
      stop_timeout: 2
      min_free_mb: {min_free_mb}
      engine: {engine}
    health:
      path: /cgi-bin/health
      timeout: 60
    env:
      APP_VERSION: fleet
{extra}{more}"""


def commit_version(app: App, config: str, version: str, *, build: bool = True) -> str:
    """A commit of the sample app at `version`, shipping `config`, built and pushed."""
    from devstack import set_sample_version

    (app.repo / "conveyor.yml").write_text(config)
    (app.repo / "Dockerfile").write_text(DOCKERFILE)
    health = app.repo / "www" / "cgi-bin" / "health"
    health.parent.mkdir(exist_ok=True)
    health.write_text(HEALTH)
    health.chmod(health.stat().st_mode | stat.S_IEXEC)
    set_sample_version(app.repo, version)
    app.git("add", "-A")
    app.git("commit", "-q", "-m", f"fleet {version}")
    sha = app.git("rev-parse", "HEAD")
    if build:
        app.ok("build", sha)
    return sha


@pytest.fixture
def fleet_app(app: App, fleet: Fleet) -> Iterator[App]:
    fleet.reset()
    for host in fleet.hosts:
        (host.hold / "name").write_text(f"h{host.index}\n")
    app.extra_env["FLEET_SSH_KEY"] = fleet.client_key.read_text()
    yield app
    fleet.reset()


def serves(host: FleetHost) -> str:
    with urllib.request.urlopen(f"http://{host.address}:{PORT}/", timeout=5) as response:
        return version_of(response.read().decode())


@contextmanager
def clients_on(fleet: Fleet) -> Iterator[list[Traffic]]:
    """A client per host requesting continuously through that host's proxy, counting every failure."""
    clients = [Traffic(f"http://{host.address}:{PORT}/", "persistent") for host in fleet.hosts]
    for client in clients:
        client.start()
    try:
        yield clients
    finally:
        for client in clients:
            client.halt.set()
        for client in clients:
            client.join(timeout=15)


def host_records(app: App, step: str) -> list[dict[str, Any]]:
    """The per-host records the ledger holds for the newest release (step: deploy:hosts, auto-rollback:hosts)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(app.ledger_url)
    with engine.connect() as connection:
        row = connection.execute(sqlalchemy.text(
            "SELECT data FROM events WHERE step = :step ORDER BY id DESC LIMIT 1"), {"step": step}).first()
    engine.dispose()
    assert row is not None, f"no {step} event recorded"
    data = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    return list(data["hosts"])


def outcomes(records: list[dict[str, Any]]) -> dict[str, str]:
    return {record["host"]: record["outcome"] for record in records}


def test_rolling_deploy_a_failure_on_the_second_host_and_a_rollback_fail_no_request(
        fleet_app: App, fleet: Fleet) -> None:
    app = fleet_app
    config = fleet_config(app, fleet)
    v1 = commit_version(app, config, "v1")
    v2 = commit_version(app, config, "v2")
    app.ok("deploy", ENV, v1)
    assert [serves(host) for host in fleet.hosts] == ["v1", "v1", "v1"]

    with clients_on(fleet) as clients:
        rolled = app.ok("deploy", ENV, v2)
        assert [serves(host) for host in fleet.hosts] == ["v2", "v2", "v2"]
        # Pre-deploy tasks ran once, on the first host only.
        assert "migrating on h1" in rolled.err and "migrating on h2" not in rolled.err

        (fleet.hosts[1].hold / "crash").write_text("")
        failed = app.run("deploy", ENV, v1)
        assert failed.code == 1, failed.err
        assert "fatal: this host cannot start the app" in failed.err  # the failing host's last log lines
        assert [serves(host) for host in fleet.hosts] == ["v2", "v2", "v2"]
        (fleet.hosts[1].hold / "crash").unlink()

        app.ok("rollback", ENV)
        assert [serves(host) for host in fleet.hosts] == ["v1", "v1", "v1"]

    for client in clients:
        assert client.failures == [], client.failures[:3]
        assert client.versions()[0] == "v1" and "v2" in client.versions() and client.versions()[-1] == "v1"

    first, second, third = (host.ssh for host in fleet.hosts)
    assert outcomes(host_records(app, "deploy:hosts")) == {first: "switched", second: "switched",
                                                             third: "switched"}  # the rollback's
    history = app.history(ENV)
    assert [(row["number"], row["kind"], row["status"], row["hosts"]) for row in history] == [
        (4, "rollback", "succeeded", 3), (3, "deploy", "failed", 3), (2, "deploy", "succeeded", 3),
        (1, "deploy", "succeeded", 3)]
    assert "(3 hosts)" in app.ok("history", ENV).out


def test_a_failing_second_host_stops_the_rollout_and_the_first_is_put_back(fleet_app: App, fleet: Fleet) -> None:
    app = fleet_app
    config = fleet_config(app, fleet)
    v1 = commit_version(app, config, "v1")
    v2 = commit_version(app, config, "v2")
    app.ok("deploy", ENV, v1)
    (fleet.hosts[1].hold / "crash").write_text("")
    failed = app.run("deploy", ENV, v2)
    assert failed.code == 1, failed.err
    first, second, third = (host.ssh for host in fleet.hosts)
    assert outcomes(host_records(app, "deploy:hosts")) == {first: "switched", second: "failed",
                                                             third: "not reached"}
    assert outcomes(host_records(app, "auto-rollback:hosts")) == {first: "switched", second: "unchanged",
                                                                    third: "unchanged"}
    assert [serves(host) for host in fleet.hosts] == ["v1", "v1", "v1"]
    # The failing host's new container is gone; each host runs exactly one container of the app.
    assert [len(host.containers()) for host in fleet.hosts] == [1, 1, 1]
    assert app.history(ENV)[0]["status"] == "failed"
    status = app.status()[ENV]
    assert status["drift"] is False and [h["drift"] for h in status["hosts"]] == [False, False, False]


def test_an_unknown_or_changed_host_key_is_refused_before_anything_changes(fleet_app: App, fleet: Fleet) -> None:
    app = fleet_app
    missing = fleet.write_known_hosts(app.home.parent / "known_hosts_missing", [fleet.hosts[0], fleet.hosts[2]])
    v1 = commit_version(app, fleet_config(app, fleet, known_hosts=missing), "v1")
    refused = app.run("deploy", ENV, v1)
    assert refused.code == 2, refused.err
    assert f"host {fleet.hosts[1].ssh}: its host key is not the one" in refused.err
    assert "Traceback" not in refused.err
    assert [host.containers("-a") for host in fleet.hosts] == [[], [], []]
    assert app.history(ENV) == []

    changed = app.home.parent / "known_hosts_changed"
    fleet.write_known_hosts(changed)
    other_key = app.home.parent / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    kind, key = other_key.with_suffix(".pub").read_text().split()[:2]
    lines = changed.read_text().splitlines()
    lines[2] = f"{fleet.hosts[2].address} {kind} {key}"
    changed.write_text("\n".join(lines) + "\n")
    v2 = commit_version(app, fleet_config(app, fleet, known_hosts=changed), "v2")
    check = app.run("hosts", "check", ENV)
    assert check.code == 2 and f"host {fleet.hosts[2].ssh}: its host key is not the one" in check.err
    assert app.run("deploy", ENV, v2).code == 2
    assert app.history(ENV) == []


def test_hosts_check_names_an_unreachable_host_and_a_deploy_refuses_at_preflight(
        fleet_app: App, fleet: Fleet) -> None:
    app = fleet_app
    v1 = commit_version(app, fleet_config(app, fleet), "v1")
    checked = app.ok("hosts", "check", ENV)
    for host in fleet.hosts:
        assert f"host {host.ssh}: " in checked.out and "registry 127.0.0.1:" in checked.out

    fleet.hosts[2].kill()
    check = app.run("hosts", "check", ENV)
    assert check.code == 2 and f"host {fleet.hosts[2].ssh} does not answer over ssh" in check.err
    assert app.run("deploy", ENV, v1, "--dry-run").code == 2
    refused = app.run("deploy", ENV, v1)
    assert refused.code == 2 and f"host {fleet.hosts[2].ssh} does not answer" in refused.err
    assert app.history(ENV) == []
    assert [host.containers("-a") for host in fleet.hosts[:2]] == [[], []]


def test_hosts_check_names_a_host_that_cannot_reach_the_registry(fleet_app: App, fleet: Fleet) -> None:
    app = fleet_app
    commit_version(app, fleet_config(app, fleet), "v1")
    host = fleet.hosts[1]
    for relay in host.processes[1:]:  # the host is up, but its way to the registry is gone
        relay.kill()
        relay.wait()
    check = app.run("hosts", "check", ENV)
    assert check.code == 1, check.err
    assert f"host {host.ssh}: cannot reach the registry 127.0.0.1:" in check.err
    assert fleet.hosts[0].ssh not in check.err


def test_a_host_killed_mid_rollout_is_recorded_and_up_brings_every_host_to_the_live_release(
        fleet_app: App, fleet: Fleet) -> None:
    app = fleet_app
    config = fleet_config(app, fleet)
    v1 = commit_version(app, config, "v1")
    v2 = commit_version(app, config, "v2")
    app.ok("deploy", ENV, v1)
    second = fleet.hosts[1]
    os.mkfifo(second.hold / "gate")  # host 2's new container stays in its health check until the test says
    deploy = app.start("deploy", ENV, v2)
    assert deploy.stderr is not None
    for line in deploy.stderr:
        if f"{second.ssh}: starting" in line:
            break
    second.kill()
    (second.hold / "gate").unlink()
    _, err = deploy.communicate(timeout=120)
    assert deploy.returncode == 1, err
    first, _, third = (host.ssh for host in fleet.hosts)
    assert outcomes(host_records(app, "deploy:hosts")) == {first: "switched", second.ssh: "lost",
                                                             third: "not reached"}
    status = app.run("status", "--json")  # exits 1: the lost host is an outage
    rows = {row["env"]: row for row in json.loads(status.out)["environments"]}
    states = {host["host"]: host["state"] for host in rows[ENV]["hosts"]}
    assert states == {first: "serving", second.ssh: "unreachable", third: "serving"}
    assert serves(fleet.hosts[0]) == "v1" and serves(fleet.hosts[2]) == "v1"

    second.start()
    app.ok("up", ENV)
    assert [serves(host) for host in fleet.hosts] == ["v1", "v1", "v1"]
    after = app.status()[ENV]
    assert after["drift"] is False and after["outage"] is None
    assert {host["state"] for host in after["hosts"]} == {"serving"}


def test_run_uses_the_first_host_or_the_one_named(fleet_app: App, fleet: Fleet) -> None:
    app = fleet_app
    app.ok("deploy", ENV, commit_version(app, fleet_config(app, fleet), "v1"))
    assert app.ok("run", ENV, "--", "/bin/busybox", "cat", "/hold/name").out == "h1\n"
    named = app.ok("run", ENV, "--host", fleet.hosts[2].ssh, "--", "/bin/busybox", "cat", "/hold/name")
    assert named.out == "h3\n"
    unknown = app.run("run", ENV, "--host", "root@198.18.99.2", "--", "true")
    assert unknown.code == 2 and "not one of this environment's hosts" in unknown.err


def test_one_connection_per_host_carries_every_command_and_the_argv_arrives_as_it_was(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    log = host.root / "sshd.log"
    before = log.read_text().count("Accepted publickey")
    runner = SSHRunner(HostAddress.parse(host.ssh), fleet.known_hosts, identity=fleet.client_key)
    try:
        argv = ["printf", "%s|", "a b", "it's", "$HOME", "; echo injected", "*", "\\n"]
        answers = [runner.run(argv, timeout=30) for _ in range(3)]
    finally:
        runner.close()
    assert [answer.stdout for answer in answers] == ["a b|it's|$HOME|; echo injected|*|\\n|"] * 3
    assert log.read_text().count("Accepted publickey") - before == 1  # three commands, one login


def test_hosts_check_names_every_host_without_room_or_without_the_engine(fleet_app: App, fleet: Fleet) -> None:
    app = fleet_app
    commit_version(app, fleet_config(app, fleet, min_free_mb=10**9), "v1", build=False)
    check = app.run("hosts", "check", ENV)
    assert check.code == 1, check.err
    for host in fleet.hosts:
        assert f"host {host.ssh}: only " in check.err and "MB free under" in check.err
    commit_version(app, fleet_config(app, fleet, engine="docker"), "v1", build=False)
    check = app.run("hosts", "check", ENV)
    assert check.code == 2, check.err
    for host in fleet.hosts:  # docker is not installed, or its daemon does not answer
        assert f"host {host.ssh}: docker is " in check.err


def test_parallel_hosts_deploy_at_once(fleet_app: App, fleet: Fleet) -> None:
    """parallel 3: hosts 2 and 3 switch while host 1 is still held in its health check."""
    app = fleet_app
    config = fleet_config(app, fleet, parallel="3")
    v1 = commit_version(app, config, "v1")
    v2 = commit_version(app, config, "v2")
    app.ok("deploy", ENV, v1)
    gate = fleet.hosts[0].hold / "gate"
    os.mkfifo(gate)
    deploy = app.start("deploy", ENV, v2)
    assert deploy.stderr is not None
    switched: set[str] = set()
    for line in deploy.stderr:
        switched |= {host.ssh for host in fleet.hosts if f"{host.ssh}: " in line and "now proxies to" in line}
        if switched == {fleet.hosts[1].ssh, fleet.hosts[2].ssh}:
            break
    assert fleet.hosts[0].ssh not in switched
    with open(gate, "w") as opened:  # let host 1's health check answer
        opened.write("go\n")
    gate.unlink()
    _, err = deploy.communicate(timeout=120)
    assert deploy.returncode == 0, err
    assert [serves(host) for host in fleet.hosts] == ["v2", "v2", "v2"]


SECRET = "fleet-secret-value-81f3"


def test_a_host_needs_no_conveyor_and_gets_the_environments_login_secrets_and_terminal(
        fleet_app: App, fleet: Fleet, tmp_path: Path) -> None:
    """Every host runs the container-host algorithm over SSH with nothing of conveyor installed: the
    environment's own registry login reaches it as a private auth file for the pull, a secret as a podman
    secret (on stdin), and `run -i` the caller's input."""
    app = fleet_app
    with machine_on(fleet, fleet.hosts[0]) as machine:
        assert machine.which("conveyor") is None and machine.which("python3") is not None
    login = AuthRegistry(tmp_path / "env-registry", "basic", {"deployer": "pull-pass-9c2"}).start()
    try:
        for host in fleet.hosts:
            host.relay(login.port)
        app.extra_env.update(ENV_USER="deployer", ENV_PASSWORD="pull-pass-9c2", FLEET_SECRET=SECRET)
        own = (f"    registry:\n      image: {login.host}/hello-fleet\n      insecure: true\n"
               "      username_env: ENV_USER\n      password_env: ENV_PASSWORD\n    secrets: [FLEET_SECRET]\n")
        deployed = app.ok("deploy", ENV, commit_version(app, fleet_config(app, fleet, extra=own), "v1"))
    finally:
        login.stop()
    assert [serves(host) for host in fleet.hosts] == ["v1", "v1", "v1"]
    assert deployed.err.count(f"pulled {login.host}/hello-fleet@") == 3  # each host, from the login registry
    for text in (deployed.err, deployed.out):
        assert "pull-pass-9c2" not in text and SECRET not in text
    check = ["/bin/busybox", "sh", "-c", f'test "$FLEET_SECRET" = {SECRET}']
    assert app.run("run", ENV, "--host", fleet.hosts[1].ssh, "--", *check).code == 0
    typed = subprocess.run([CONVEYOR, "run", "-i", ENV, "--", "/bin/busybox", "tr", "a-z", "A-Z"], cwd=app.repo,
                           env=app.env(), input="typed on the terminal\n", capture_output=True, text=True,
                           timeout=120)
    assert typed.returncode == 0, typed.stderr
    assert "TYPED ON THE TERMINAL" in typed.stdout


def test_retire_removes_the_environment_from_every_host(fleet_app: App, fleet: Fleet) -> None:
    app = fleet_app
    two = ", ".join(host.ssh for host in fleet.hosts[:2])
    gone = f"""  - name: gone
    target:
      type: ssh-hosts
      hosts: [{two}]
      known_hosts: {fleet.known_hosts}
      identity_env: FLEET_SSH_KEY
      port: 8081
      drain_seconds: 0
      stop_timeout: 2
      min_free_mb: 10
    health:
      path: /cgi-bin/health
"""
    v1 = commit_version(app, fleet_config(app, fleet, more=gone), "v1")
    app.ok("deploy", ENV, v1)
    app.ok("deploy", "gone", v1)
    assert [len(host.containers("--filter", "label=conveyor.env=gone")) for host in fleet.hosts] == [1, 1, 0]
    commit_version(app, fleet_config(app, fleet), "v1b", build=False)
    retired = app.ok("retire", "gone", "--reason", "folded into fleet")
    assert f"{fleet.hosts[0].ssh}: HAProxy no longer listens for hello/gone" in retired.err
    assert [host.containers("-a", "--filter", "label=conveyor.env=gone") for host in fleet.hosts] == [[], [], []]
    for host in fleet.hosts[:2]:
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{host.address}:8081/", timeout=5)
        assert serves(host) == "v1"  # the other environment on the same hosts is untouched
        assert not (host.home / ".conveyor" / "proxy" / "deployed" / "hello-gone.json").exists()


def test_a_host_lock_is_exclusive_and_goes_with_a_killed_holder(fleet: Fleet) -> None:
    """HAProxy's lock on a host (proxy.lock, flock there): a second holder waits, and a holder killed with
    SIGKILL (its ssh process) leaves no stale lock."""
    from conveyor.errors import TargetError

    host = fleet.hosts[0]
    lock = host.root / "locks" / "proxy.lock"
    with machine_on(fleet, host) as first, machine_on(fleet, host) as second:
        with first.locked(lock, timeout=30):
            refused = pytest.raises(TargetError, match="another conveyor process held")
            with refused, second.locked(lock, timeout=1):
                pass
        with second.locked(lock, timeout=30):  # released at the end of the first block
            pass
        holder = first.runner.open(["flock", "--", str(lock), "sh", "-c", "echo held; exec cat >/dev/null"])
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        holder.kill()
        holder.wait()
        with second.locked(lock, timeout=60):  # the killed holder's lock went with its connection
            pass


def test_files_on_a_host_are_written_whole_private_when_asked_and_read_back(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    path = host.root / "files" / "deep" / "state.json"
    with machine_on(fleet, host) as machine:
        assert machine.read_text(path) is None
        machine.write_text(path, "it's $HOME; `x`\n", private=True)
        assert machine.read_text(path) == "it's $HOME; `x`\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        machine.write_text(path, "public\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.read_text() == "public\n"
        assert list(path.parent.glob("state.json.*")) == []  # no temporary file left behind
        machine.remove(path.parent)
        assert not path.parent.exists()


@contextmanager
def machine_on(fleet: Fleet, host: FleetHost) -> Iterator[SSHMachine]:
    machine = SSHMachine(SSHRunner(HostAddress.parse(host.ssh), fleet.known_hosts, identity=fleet.client_key))
    try:
        yield machine
    finally:
        machine.close()


def test_a_forwarded_socket_is_made_again_when_its_connection_ended(fleet: Fleet) -> None:
    """The server's live checks keep a host for minutes: when its connection ends (a host restart, an idle
    timeout) the next command opens another, and sockets forwarded by the old one are forwarded anew."""
    import socket
    import threading

    host = fleet.hosts[0]
    path = host.root / "pong.sock"  # unix sockets live in the file system, which the namespaces share
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)

    def answer() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # closed: the test is over
            with client:
                client.sendall(b"pong")

    threading.Thread(target=answer, daemon=True).start()

    def ask(local: str) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(local)
            return sock.recv(16)

    try:
        with machine_on(fleet, host) as machine:
            first = machine.unix_socket(path)
            assert ask(first) == b"pong" and machine.unix_socket(path) == first  # one forward, reused
            runner = machine.runner
            ended = subprocess.run(["ssh", *runner.options(), "-O", "exit", "--", runner.address.host],
                                   capture_output=True, text=True, timeout=30)
            assert ended.returncode == 0, ended.stderr
            assert machine.read_text(path.with_name("missing")) is None  # a command: a new connection
            again = machine.unix_socket(path)
            assert again != first and ask(again) == b"pong"
    finally:
        server.close()
        path.unlink(missing_ok=True)
