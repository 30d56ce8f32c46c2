"""The record is the truth: after a signal, kill -9, a dead proxy or a removed environment, the ledger's live
release is what serves, or conveyor says loudly that it is not and how to restore it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from conveyor.errors import Refused
from conveyor.ledger import open_ledger
from conveyor.ledger.store import Ledger
from tests.e2e import App

# ---------------------------------------------------------------------------------------------- helpers


def commit_config(app: App, edit: Callable[[str], str], message: str) -> None:
    """Change conveyor.yml, commit it in the app repo and build that commit, so it can be deployed."""
    app.reconfigure(edit, message=message)


def in_env(name: str, setting: str) -> Callable[[str], str]:
    """An edit adding `setting` (one line) to environment `name`'s target section."""

    def edit(text: str) -> str:
        at = text.index(f"  - name: {name}")
        return text[:at] + text[at:].replace(
            "      type: container-host\n", f"      type: container-host\n      {setting}\n", 1)

    return edit


def task_command(words: list[str]) -> Callable[[str], str]:
    def edit(text: str) -> str:
        start = text.index("    command: ")
        end = text.index("\n", start)
        quoted = ", ".join(f'"{word}"' for word in words)
        return text[:start] + f"    command: [{quoted}]" + text[end:]

    return edit


@contextmanager
def held_task(app: App) -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """The sample's pre-deploy task made to connect to a socket this test listens on and to wait for it:
    a task container shares the host's network, not its files, so a socket plays the part of a fifo.
    `accepted` collects the task's connection once the deploy has reached the task."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(120)
        port = listener.getsockname()[1]
        commit_config(app, task_command(["/bin/busybox", "nc", "127.0.0.1", str(port)]), "hold the task")
        accepted: list[socket.socket] = []
        try:
            yield listener, accepted
        finally:
            for connection in accepted:
                connection.close()


def wait_for_task(listener: socket.socket, accepted: list[socket.socket]) -> None:
    connection, _ = listener.accept()  # the task runs and waits on us
    accepted.append(connection)


def read_until(proc: subprocess.Popen[str], needle: str) -> str:
    """The child's stderr, line by line, up to and including the first line holding `needle`."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"'{needle}' never printed; stderr was:\n{''.join(seen)}")


def status_json(app: App) -> tuple[int, dict[str, Any]]:
    result = app.run("status", "--json")
    return result.code, {row["env"]: row for row in result.json()["environments"]}


# ---------------------------------------------------------------------------------------------- 1. signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_drain_finishes_the_release_it_switched_to(app: App, signum: int) -> None:
    app.ok("deploy", "staging", "v1")
    commit_config(app, in_env("staging", "drain_seconds: 120"), "a long drain")
    proc = app.start("deploy", "staging", "HEAD")
    read_until(proc, "drain:")
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 0
    err = proc.stderr.read() if proc.stderr else ""
    assert "after the switch" in err and "recorded as succeeded" in err
    assert app.serves("staging") == "v2"
    code, rows = status_json(app)
    assert code == 0
    staging = rows["staging"]
    assert staging["live"]["number"] == 2 and staging["live"]["sha"] == app.git("rev-parse", "HEAD")
    assert staging["drift"] is False and staging["lease"] is None
    latest = app.history("staging")[0]
    assert (latest["number"], latest["status"]) == (2, "succeeded")
    refs = app.git("ls-remote", "origin", "refs/tags/staging")
    assert refs.startswith(app.git("rev-parse", "HEAD"))  # its outbox items were queued and delivered
    # The previous container was retired, not left running unseen.
    containers = subprocess.run(
        ["podman", "ps", "-aq", "--filter", "label=conveyor.app=hello", "--filter", "label=conveyor.env=staging",
         "--filter", "label=conveyor.role=service"], capture_output=True, text=True, check=True,
    ).stdout.split()
    assert len(containers) == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_before_the_switch_records_interrupted_and_keeps_the_old_release(app: App, signum: int) -> None:
    app.ok("deploy", "staging", "v1")
    with held_task(app) as (listener, accepted):
        proc = app.start("deploy", "staging", "HEAD")
        wait_for_task(listener, accepted)
        proc.send_signal(signum)
        assert proc.wait(timeout=60) != 0
    latest = app.history("staging")[0]
    assert (latest["number"], latest["status"]) == (2, "interrupted")
    assert app.serves("staging") == "v1"
    code, rows = status_json(app)
    assert code == 0
    assert rows["staging"]["lease"] is None and rows["staging"]["live"]["number"] == 1
    assert rows["staging"]["drift"] is False


# ---------------------------------------------------------------------------------------------- 2. ledger


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    opened = open_ledger(database_url)
    yield opened
    opened.close()


def _record(ledger: Ledger, holder: str) -> Any:
    return ledger.create_release(
        app="web", env="prod", kind="deploy", sha="0123abc", digest="sha256:feed", image="reg/web@sha256:feed",
        spec={}, config_digest="sha256:conf", actor="alice", origin="cli", reason="", forced=False,
        previous_number=None, source_release_id=None, holder=holder,
    )


def test_a_release_is_attached_to_its_lease_in_the_same_transaction(ledger: Ledger) -> None:
    assert ledger.try_acquire_lease(app="web", env="prod", holder="h1", actor="a", operation="deploy",
                                    ttl=60).acquired
    release = _record(ledger, "h1")
    lease = ledger.get_lease("web", "prod")
    assert lease is not None and lease.release_id == release.id


def test_no_release_is_recorded_for_a_holder_without_the_lease(ledger: Ledger) -> None:
    with pytest.raises(Refused):
        _record(ledger, "nobody")  # no lease at all
    ledger.try_acquire_lease(app="web", env="prod", holder="h1", actor="a", operation="deploy", ttl=60)
    with pytest.raises(Refused):
        _record(ledger, "h2")  # someone else's lease
    assert ledger.list_releases("web") == []
    lease = ledger.get_lease("web", "prod")
    assert lease is not None and lease.release_id is None
    assert _record(ledger, "h1").number == 1  # the refused attempts took no number


# ---------------------------------------------------------------------------------------------- 3. dead holders


def wait_until_lease_expired(app: App, env: str) -> None:
    """Poll the ledger itself (not a fixed sleep) until the dead holder's lease has expired."""
    ledger = open_ledger(app.ledger_url)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lease = ledger.get_lease("hello", env)
            assert lease is not None, "the lease vanished"
            if lease.expires_at < datetime.now(UTC):
                return
            time.sleep(0.1)
    finally:
        ledger.close()
    raise AssertionError("the lease never expired")


def test_a_dead_holder_shows_as_gone_and_recover_takes_over_at_once(ledger_app: App) -> None:
    app = ledger_app
    app.ok("deploy", "staging", "v1")
    with held_task(app) as (listener, accepted):
        victim = app.start("deploy", "staging", "HEAD", CONVEYOR_LEASE_TTL="2")
        wait_for_task(listener, accepted)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        wait_until_lease_expired(app, "staging")

        code, rows = status_json(app)
        assert code == 0  # v1 still serves: no outage
        assert rows["staging"]["lease"]["holder_gone_since"] is not None
        assert "HOLDER GONE since" in app.ok("status").out
        running = app.history("staging")[0]
        assert running["status"] in ("pending", "running") and running["holder_gone_since"] is not None
        assert "(holder gone since" in app.ok("history", "staging").out

        assert app.run("recover", "staging").code == 2  # --reason is required
        recovered = app.ok("recover", "staging", "--reason", "deploy box rebooted")
        assert "staging#2 marked interrupted" in recovered.out
        latest = app.history("staging")[0]
        assert (latest["number"], latest["status"], latest["holder_gone_since"]) == (2, "interrupted", None)
        assert app.status()["staging"]["lease"] is None
        events = ledger_events(app, "staging", "recover")
        assert "deploy box rebooted" in events[-1].message and "Sample Dev" in events[-1].message

        # The next deploy works: let its task connect and finish at once.
        releaser = threading.Thread(target=lambda: listener.accept()[0].close())
        releaser.start()
        app.ok("deploy", "staging", "HEAD")
        releaser.join()
    assert app.serves("staging") == "v2"
    assert app.history("staging")[0]["status"] == "succeeded"


def test_recover_refuses_a_live_holder_unless_forced(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    with held_task(app) as (listener, accepted):
        holder = app.start("deploy", "staging", "HEAD")
        wait_for_task(listener, accepted)
        refused = app.run("recover", "staging", "--reason", "x")
        assert refused.code == 3 and "still heartbeats" in refused.err and "--force" in refused.err
        app.ok("recover", "staging", "--force", "--reason", "stuck for an hour")
        assert app.history("staging")[0]["status"] == "interrupted"
        accepted[0].close()  # the task ends; its deploy finds it lost the lease and changes nothing more
        assert holder.wait(timeout=60) != 0
    assert app.serves("staging") == "v1"
    assert app.history("staging")[0]["status"] == "interrupted"


def ledger_events(app: App, env: str, step: str) -> list[Any]:
    ledger = open_ledger(app.ledger_url)
    try:
        return ledger.events(app="hello", env=env, step=step)
    finally:
        ledger.close()


# ---------------------------------------------------------------------------------------------- 4. outages


def test_a_killed_proxy_is_an_outage_that_up_restores(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    before = app.history()
    pid = int((app.home / "proxy" / "haproxy.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_until_refused(app.ports["staging"])
    result = app.run("status")
    assert result.code == 1
    assert "OUTAGE" in result.out and "HAProxy" in result.out and "conveyor up staging" in result.out
    code, rows = status_json(app)
    assert code == 1 and "not running" in rows["staging"]["outage"]
    assert rows["production"]["outage"] is None  # nothing deployed there
    app.ok("up")
    assert app.serves("staging") == "v1"
    code, rows = status_json(app)
    assert code == 0 and rows["staging"]["outage"] is None
    assert app.history() == before  # no new release


def test_a_removed_live_container_is_an_outage_that_up_restores(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    before = app.history()
    subprocess.run(["podman", "rm", "-f", "-t", "0", *service_containers("staging")], check=True,
                   capture_output=True)
    code, rows = status_json(app)
    assert code == 1 and "gone" in rows["staging"]["outage"]
    app.ok("up", "staging")
    assert app.serves("staging") == "v1"
    assert status_json(app)[0] == 0
    assert app.history() == before
    assert ledger_events(app, "staging", "up")[-1].status == "ok"


def service_containers(env: str) -> list[str]:
    return subprocess.run(
        ["podman", "ps", "-aq", "--filter", "label=conveyor.app=hello", "--filter", f"label=conveyor.env={env}",
         "--filter", "label=conveyor.role=service"], capture_output=True, text=True, check=True,
    ).stdout.split()


def wait_until_refused(port: int) -> None:
    """The killed master's workers exit on their own; wait for the port to stop accepting."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"port {port} still accepts connections")


# ---------------------------------------------------------------------------------------------- 5. retired envs


def test_an_environment_removed_from_the_config_is_shown_and_can_be_retired(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    app.ok("deploy", "production", "v1", "--hotfix", "--reason", "first")

    def without_production(text: str) -> str:
        return text[:text.index("  - name: production")]

    commit_config(app, without_production, "no production any more")
    status = app.ok("status", "--json").json()
    assert [row["env"] for row in status["environments"]] == ["staging"]
    assert [row["env"] for row in status["retired_from_config"]] == ["production"]
    assert status["retired_from_config"][0]["serving"]
    assert "RETIRED FROM CONFIG BUT STILL SERVING" in app.ok("status").out

    assert app.run("retire", "staging", "--reason", "x").code == 2  # still configured
    app.ok("retire", "production", "--reason", "merged into staging")
    wait_until_refused(app.ports["production"])
    status = app.ok("status", "--json").json()
    assert status["retired_from_config"] == []
    assert "RETIRED" not in app.ok("status").out
    assert service_containers("production") == []
    assert app.serves("staging") == "v1"
    event = ledger_events(app, "production", "retired")[-1]
    assert "merged into staging" in event.message and "Sample Dev" in event.message


def test_kill_9_after_the_switch_shows_drift_and_up_brings_back_the_recorded_release(ledger_app: App) -> None:
    """A holder killed with no chance to record its switch leaves the new version serving under the old
    record: status says so loudly, and recover + up make what serves the recorded live release again."""
    app = ledger_app
    app.ok("deploy", "staging", "v1")  # its own short drain is what `up` re-applies
    second = app.reconfigure(in_env("staging", "drain_seconds: 120"), on="v2")
    proc = app.start("deploy", "staging", second)
    read_until(proc, "switch:")  # the new container took the traffic; the drain has begun
    proc.kill()
    proc.wait(timeout=60)
    assert app.serves("staging") == "v2"
    code, rows = status_json(app)
    assert rows["staging"]["live"]["number"] == 1 and rows["staging"]["drift"] is True
    assert "`conveyor up staging` re-applies the live release" in app.run("status").out
    wait_until_lease_expired(app, "staging")
    app.ok("recover", "staging", "--reason", "deploy killed mid-drain")
    app.ok("up", "staging")
    assert app.serves("staging") == "v1"
    code, rows = status_json(app)
    assert code == 0 and rows["staging"]["drift"] is False and rows["staging"]["live"]["number"] == 1
    assert [(r["number"], r["status"]) for r in app.history("staging")] == [(2, "interrupted"), (1, "succeeded")]
    assert app.ok("up", "staging").out.strip() == "staging: staging#1 serves"  # converged: nothing left to do
