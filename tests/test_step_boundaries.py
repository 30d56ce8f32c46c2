"""Every kind of release, stopped on either side of the switch. Before it (held in its pre-deploy task), a
signal or a kill -9 leaves the release interrupted and the old one serving, and the same command again
converges. After it, a signal finishes the release (it serves), and a kill -9 leaves drift that status names
and `recover` + `up` settle back to the record. Deploys are covered the same way in test_records; here
promote and rollback, which share the release path but reach the switch with another source of their spec
(the pinned commit's config, a stored spec)."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from dataclasses import dataclass

import pytest

from tests.e2e import App
from tests.test_records import (
    held_task,
    in_env,
    read_until,
    status_json,
    wait_for_task,
    wait_until_lease_expired,
)


@dataclass
class Held:
    process: subprocess.Popen[str]
    env: str
    before: str  # the version serving before the operation
    after: str  # the version the operation ships
    number: int  # the release number the operation records


def hold_after_switch(app: App, kind: str) -> Held:
    """Start a `kind` release whose drain lasts two minutes, and return once it has switched."""
    if kind == "promote":
        app.ok("deploy", "production", "v1", "--hotfix", "--reason", "a previous container, so the promotion drains")
        # The promotion renders production from the pinned commit's own config: that commit drains long.
        app.ok("deploy", "staging", app.reconfigure(in_env("production", "drain_seconds: 120"), on="v2"))
        held = Held(app.start("promote", "staging", "production"), "production", "v1", "v2", 2)
    else:
        # Release #1 stores a long drain in its spec (its own first deploy had nothing to drain).
        app.ok("deploy", "staging", app.reconfigure(in_env("staging", "drain_seconds: 120"), on="v1"))
        app.ok("deploy", "staging", "v2")
        held = Held(app.start("rollback", "staging", "--to", "1"), "staging", "v2", "v1", 3)
    read_until(held.process, "switch:")
    return held


@pytest.mark.parametrize("kind", ["promote", "rollback"])
def test_a_signal_after_the_switch_finishes_the_release(app: App, kind: str) -> None:
    held = hold_after_switch(app, kind)
    held.process.send_signal(signal.SIGINT)
    assert held.process.wait(timeout=60) == 0
    assert app.serves(held.env) == held.after
    code, rows = status_json(app)
    assert code == 0 and rows[held.env]["drift"] is False and rows[held.env]["lease"] is None
    live = rows[held.env]["live"]
    assert (live["number"], live["kind"], live["status"]) == (held.number, kind, "succeeded")


@pytest.mark.parametrize("kind", ["promote", "rollback"])
def test_kill_9_after_the_switch_is_named_and_settles_back_to_the_record(ledger_app: App, kind: str) -> None:
    app = ledger_app
    held = hold_after_switch(app, kind)
    held.process.kill()
    held.process.wait(timeout=60)
    assert app.serves(held.env) == held.after
    _, rows = status_json(app)
    assert rows[held.env]["drift"] is True and rows[held.env]["live"]["number"] == held.number - 1
    wait_until_lease_expired(app, held.env)
    app.ok("recover", held.env, "--reason", f"{kind} killed mid-drain")
    app.ok("up", held.env)
    assert app.serves(held.env) == held.before
    code, rows = status_json(app)
    assert code == 0 and rows[held.env]["drift"] is False
    assert [r["status"] for r in app.history(held.env)][0] == "interrupted"
    assert app.ok("up", held.env).out.strip() == f"{held.env}: {held.env}#{held.number - 1} serves"


def let_one_task_through(listener: socket.socket) -> threading.Thread:
    """Let the next pre-deploy task that reaches the gate finish at once."""
    releaser = threading.Thread(target=lambda: listener.accept()[0].close())
    releaser.start()
    return releaser


@pytest.mark.parametrize("how", ["SIGINT", "kill -9"])
def test_a_promotion_stopped_before_its_switch_keeps_the_old_release_and_a_rerun_converges(
    ledger_app: App, how: str
) -> None:
    app = ledger_app
    app.ok("deploy", "production", "v1", "--hotfix", "--reason", "production serves v1")
    with held_task(app) as (listener, accepted):
        releaser = let_one_task_through(listener)
        app.ok("deploy", "staging", "HEAD")
        releaser.join()
        promotion = app.start("promote", "staging", "production")
        wait_for_task(listener, accepted)  # recorded, its pre-deploy task running: nothing switched yet
        if how == "SIGINT":
            promotion.send_signal(signal.SIGINT)
            promotion.wait(timeout=60)
        else:
            promotion.kill()
            promotion.wait(timeout=60)
            wait_until_lease_expired(app, "production")
            app.ok("recover", "production", "--reason", "promotion killed in its task")
        latest = app.history("production")[0]
        assert (latest["number"], latest["kind"], latest["status"]) == (2, "promote", "interrupted")
        assert app.serves("production") == "v1"
        code, rows = status_json(app)
        assert code == 0 and rows["production"]["drift"] is False and rows["production"]["lease"] is None
        assert rows["production"]["live"]["number"] == 1
        releaser = let_one_task_through(listener)
        app.ok("promote", "staging", "production")  # the same command again: it converges
        releaser.join()
    assert app.serves("production") == "v2"
    assert [r["status"] for r in app.history("production")] == ["succeeded", "interrupted", "succeeded"]
