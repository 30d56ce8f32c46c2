"""Bad input and failures: one clear message, the documented exit code, nothing recorded as succeeded
that did not, no lock left behind, and the environment still serving its last good release."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e import App
from tests.gate import Gate, await_queued, gate_fixture, gate_tasks, wait_out_lease  # noqa: F401  (a fixture)


def assert_unharmed(app: App, env: str = "staging", serving: str | None = "v1") -> None:
    """Nothing left locked; the last good release is live in the ledger and really serving."""
    status = app.status()[env]
    assert status["lease"] is None
    if serving is not None:
        assert app.serves(env) == serving
        assert status["live"]["status"] == "succeeded"
    assert all(r["status"] != "pending" and r["status"] != "running" for r in app.history(env))


def single_message(err: str) -> None:
    assert err.startswith("error: "), err
    assert "Traceback" not in err


def test_failed_health_check_keeps_the_old_version_serving(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    result = app.run("deploy", "staging", "broken")
    assert result.code == 1
    assert "health check failed" in result.err
    assert "previous version is still serving" in result.err
    failed = app.history("staging")[0]
    assert failed["status"] == "failed" and "health check" in failed["error"]
    assert_unharmed(app)


def test_container_that_exits_fails_fast_with_its_last_log_lines(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    started = time.monotonic()
    result = app.run("deploy", "staging", "crash")
    elapsed = time.monotonic() - started
    assert result.code == 1
    assert "exited" in result.err
    assert "fatal: cannot connect to the database" in result.err  # the container's own last log line
    assert elapsed < 25  # did not wait out the 30 s health timeout
    assert app.history("staging")[0]["status"] == "failed"
    assert_unharmed(app)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("deploy", "qa", "v1"), "unknown environment 'qa'"),
        (("deploy", "staging", "no-such-ref"), "unknown ref 'no-such-ref'"),
        (("rollback", "qa"), "unknown environment 'qa'"),
        (("history", "qa"), "unknown environment 'qa'"),
        (("promote", "staging", "qa"), "unknown environment 'qa'"),
        (("lock", "qa", "--reason", "x"), "unknown environment 'qa'"),
    ],
)
def test_bad_names_are_refused_with_exit_2(app: App, args: tuple[str, ...], message: str) -> None:
    app.ok("deploy", "staging", "v1")
    result = app.run(*args)
    assert result.code == 2, result.err
    single_message(result.err)
    assert message in result.err
    assert_unharmed(app)


def test_a_commit_never_built_is_refused(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    app.git("commit", "-q", "--allow-empty", "-m", "never built")
    result = app.run("deploy", "staging", "HEAD")
    assert result.code == 2
    single_message(result.err)
    assert "was never built" in result.err and "conveyor build" in result.err
    assert len(app.history("staging")) == 1
    assert_unharmed(app)


def test_broken_yaml_is_reported_with_file_and_line(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    broken = app.reconfigure(lambda _: "app: hello\nenvironments: [\n  - name: staging\n", on="v2", build=False)
    result = app.run("deploy", "staging", broken)
    assert result.code == 2
    single_message(result.err)
    assert "conveyor.yml:" in result.err and "invalid YAML" in result.err


def test_every_config_problem_is_reported_at_once_with_line_and_key_path(app: App) -> None:
    def spoil(text: str) -> str:
        text = text.replace("insecure: true", "insecure: true\n  colour: blue")
        return text.replace(f"port: {app.ports['staging']}", "port: eighty", 1)

    broken = app.reconfigure(spoil, on="v1", build=False)
    lines = (app.repo / "conveyor.yml").read_text().splitlines()
    result = app.run("deploy", "staging", broken)
    assert result.code == 2
    single_message(result.err)
    assert "2 problems" in result.err
    colour_line = next(i for i, line in enumerate(lines, 1) if "colour" in line)
    port_line = next(i for i, line in enumerate(lines, 1) if "eighty" in line)
    assert f"conveyor.yml:{colour_line}: registry.colour: unknown key" in result.err
    assert f"conveyor.yml:{port_line}: environments[0].target.port:" in result.err
    app.git("checkout", "-q", "main")
    assert app.history() == []


def test_unreachable_registry_is_a_clear_error(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    def elsewhere(text: str) -> str:
        image_line = next(line for line in text.splitlines() if line.startswith("image:"))
        return text.replace(image_line, f"image: 127.0.0.1:{dead}/hello")

    unreachable = app.reconfigure(elsewhere, on="v2", build=False)
    result = app.run("deploy", "staging", unreachable)
    assert result.code == 2
    single_message(result.err)
    assert f"registry 127.0.0.1:{dead} is unreachable" in result.err
    assert_unharmed(app)


def test_no_container_engine_is_a_clear_error(app: App, tmp_path: Path) -> None:
    app.ok("deploy", "staging", "v1")
    bare_path = tmp_path / "bin"
    bare_path.mkdir()
    for tool in ("git", "haproxy"):
        os.symlink(str(shutil.which(tool)), bare_path / tool)
    result = app.run("deploy", "staging", "v2", PATH=str(bare_path))
    assert result.code == 2
    single_message(result.err)
    assert "no container engine" in result.err
    assert_unharmed(app)


def test_port_in_use_by_another_process_is_refused(app: App) -> None:
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", app.ports["staging"]))
        squatter.listen()
        result = app.run("deploy", "staging", "v1")
    assert result.code == 2
    single_message(result.err)
    assert f"port {app.ports['staging']} is in use" in result.err
    assert app.history() == []
    assert app.status()["staging"]["lease"] is None


def test_a_block_refuses_names_who_why_since_and_force_overrides_on_record(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    app.ok("lock", "staging", "--reason", "investigating incident 7")
    result = app.run("deploy", "staging", "v2")
    assert result.code == 3
    single_message(result.err)
    assert "investigating incident 7" in result.err and "Sample Dev" in result.err and "since" in result.err
    assert app.status()["staging"]["blocks"][0]["reason"] == "investigating incident 7"
    assert app.run("rollback", "staging", "--to", "1").code == 3
    assert app.run("deploy", "staging", "v2", "--force").code == 2  # --force needs a reason
    app.ok("deploy", "staging", "v2", "--force", "--reason", "the fix for incident 7")
    record = app.history("staging")[0]
    assert record["forced"] is True and record["reason"] == "the fix for incident 7"
    assert "(forced)" in app.ok("history").out
    app.ok("unlock", "staging")
    app.ok("deploy", "staging", "v1")
    assert_unharmed(app)


def test_an_expired_block_no_longer_refuses(app: App) -> None:
    app.ok("lock", "staging", "--reason", "short", "--until", "2h")
    assert app.run("deploy", "staging", "v1").code == 3
    assert app.run("lock", "staging", "--reason", "x", "--until", "2001-01-01T00:00").code == 2
    app.ok("unlock", "staging")
    app.ok("lock", "--org", "--reason", "company freeze")
    frozen = app.run("deploy", "staging", "v1")
    assert frozen.code == 3 and "company freeze" in frozen.err
    app.ok("deploy", "staging", "v1", "--hotfix", "--reason", "allowed through the freeze")
    assert app.history("staging")[0]["kind"] == "hotfix"


def test_a_held_lease_refuses_a_second_operation_naming_the_holder(app: App, gate: Gate) -> None:
    app.ok("deploy", "staging", "v1")
    head = gate_tasks(app, gate)
    gate.hold()
    first = app.start("deploy", "staging", head)
    gate.wait_arrival()  # the first deploy holds the lease, in its pre-deploy task
    second = app.run("deploy", "staging", "v1")
    gate.release()
    assert second.code == 3
    single_message(second.err)
    assert "is running 'deploy staging" in second.err and "since" in second.err and "Sample Dev" in second.err
    assert first.wait(timeout=120) == 0
    assert app.history("staging")[0]["sha"] == head
    assert_unharmed(app, serving="v2")


def test_wait_queues_operations_first_come_first_served(app: App, gate: Gate) -> None:
    app.ok("deploy", "staging", "v1")
    head = gate_tasks(app, gate)
    gate.hold()
    first = app.start("deploy", "staging", head)
    gate.wait_arrival()
    second = app.start("rollback", "staging", "--to", "1", "--wait")
    await_queued(app, "staging", 1)
    third = app.start("deploy", "staging", head, "--wait", "--reason", "third")
    assert [op.split()[0] for op in await_queued(app, "staging", 2)] == ["rollback", "deploy"]
    gate.release()
    assert first.wait(timeout=120) == 0
    assert second.wait(timeout=120) == 0
    assert third.wait(timeout=120) == 0
    kinds = [(r["number"], r["kind"], r["reason"]) for r in app.history("staging")]
    assert [k[:2] for k in kinds] == [(4, "deploy"), (3, "rollback"), (2, "deploy"), (1, "deploy")]
    assert kinds[0][2] == "third"
    assert_unharmed(app, serving="v2")


def test_kill_9_leaves_a_lease_that_expires_and_a_release_marked_interrupted(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    victim = app.start("deploy", "staging", "broken")  # waits out its health check: a long step
    _wait_for_step(app, "staging", "deploy")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    refused = app.run("deploy", "staging", "v2")
    assert refused.code == 3  # the dead holder's lease has not expired yet
    wait_out_lease(app, "staging")
    taken = app.ok("deploy", "staging", "v2")
    assert "took over an expired lease" in taken.err
    records = {r["number"]: r for r in app.history("staging")}
    assert records[2]["status"] == "interrupted"
    assert "deploy" in records[2]["error"]
    assert records[3]["status"] == "succeeded"
    assert_unharmed(app, serving="v2")


def test_ctrl_c_marks_the_release_interrupted_and_frees_the_lease(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    proc = app.start("deploy", "staging", "broken")
    _wait_for_step(app, "staging", "deploy")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) != 0
    latest = app.history("staging")[0]
    assert latest["status"] == "interrupted"
    assert_unharmed(app)


def test_no_request_fails_during_deploy_failed_deploy_and_rollback(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    seen: set[str] = set()

    def client() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(app.url("staging"), timeout=5) as response:
                    page = response.read().decode()
                    counts["ok" if response.status == 200 else "failed"] += 1
                    seen.add("v2" if ">v2<" in page else "v1")
            except (urllib.error.URLError, OSError):
                counts["failed"] += 1

    thread = threading.Thread(target=client)
    thread.start()
    try:
        app.ok("deploy", "staging", "v2")
        assert app.run("deploy", "staging", "crash").code == 1
        app.ok("rollback", "staging")
    finally:
        stop.set()
        thread.join()
    assert counts["failed"] == 0, counts
    assert counts["ok"] > 50
    assert seen == {"v1", "v2"}


def _wait_for_step(app: App, env: str, step: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = app.history(env)
        if history and history[0]["step"] == step and history[0]["status"] == "running":
            return
        time.sleep(0.05)
    raise AssertionError(f"never reached step {step}")
