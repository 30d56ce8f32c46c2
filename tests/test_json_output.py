"""`--json` prints ONE JSON object on stdout, also when the command fails: `ok: false`, the exit code, a
stable error kind and message, and the release when one was recorded before the failure."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from tests.e2e import App, Result


def failure(result: Result, exit_code: int, kind: str) -> dict[str, Any]:
    assert result.code == exit_code, result.err
    data = result.json()
    assert data["ok"] is False and data["exit_code"] == exit_code and data["error"]["kind"] == kind, data
    assert data["error"]["message"] and "Traceback" not in result.err
    return data


def test_a_failed_deploy_prints_the_failure_and_the_release_it_recorded(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    data = failure(app.run("deploy", "staging", "broken", "--json"), 1, "failed")
    assert "health check failed" in data["error"]["message"]
    assert data["release"]["number"] == 2 and data["release"]["status"] == "failed"
    assert data["release"]["error"]


def test_bad_input_refusals_and_usage_errors_are_json_objects_too(app: App) -> None:
    assert failure(app.run("deploy", "staging", "no-such-ref", "--json"), 2, "bad_input")["release"] is None
    failure(app.run("deploy", "production", "v1", "--json"), 3, "refused")  # promotions only
    failure(app.run("deploy", "nowhere", "v1", "--json"), 2, "bad_input")
    failure(app.run("--config", "missing.yml", "status", "--json"), 2, "bad_input")
    failure(app.run("deploy", "staging", "--json"), 2, "usage")  # REF missing: click's own error
    failure(app.run("history", "--limit", "0", "--json"), 2, "usage")
    app.ok("lock", "staging", "--reason", "incident 3")
    refused = failure(app.run("deploy", "staging", "v1", "--json"), 3, "refused")
    assert "incident 3" in refused["error"]["message"]
    assert app.run("deploy", "staging", "--bogus").out == ""  # without --json: nothing on stdout


def test_success_output_keeps_its_shape(app: App) -> None:
    release = app.ok("deploy", "staging", "v1", "--json").json()
    assert release["status"] == "succeeded" and release["number"] == 1 and "ok" not in release
    assert isinstance(app.ok("history", "--json").json(), list)


def test_a_missing_infrastructure_piece_has_its_own_kind(app: App) -> None:
    data = failure(app.run("deploy", "staging", "v1", "--json", PATH="/nonexistent"), 2, "infrastructure_missing")
    assert "not installed" in data["error"]["message"]  # git, here


def test_outbox_flush_that_leaves_items_is_a_failure_object_listing_them(app: App) -> None:
    app.git("remote", "remove", "origin")
    app.ok("deploy", "staging", "v1")
    data = failure(app.run("outbox", "flush", "--json"), 1, "failed")
    assert len(data["outbox"]) == 1 and data["outbox"][0]["env"] == "staging"


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 1)])
def test_an_interrupted_release_gives_an_interrupted_failure_with_the_release(
    app: App, signum: int, exit_code: int
) -> None:
    app.ok("deploy", "staging", "v1")
    proc = app.start("deploy", "staging", "broken", "--json")
    _wait_for_step(app, "staging", "deploy")
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    data = failure(Result(proc.returncode, out, err), exit_code, "interrupted")
    assert data["release"]["status"] == "interrupted" and data["release"]["number"] == 2


def _wait_for_step(app: App, env: str, step: str, timeout: float = 60) -> None:
    """Until the ledger says the release reached `step` (a state the test observes, not a fixed delay)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = app.history(env)
        if rows and rows[0]["step"] == step and rows[0]["status"] == "running":
            return
        time.sleep(0.2)
    raise AssertionError(f"{env} never reached step {step}")
