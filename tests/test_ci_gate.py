"""Only CI-green commits ship (issue 11, point 2): the CI gate against the in-repo GitHub server, through
the real `conveyor` command, git, registry, podman, HAProxy and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.config.forge import CIGate
from conveyor.forge.base import Check, CIState
from conveyor.pipeline.ci_gate import judge
from tests.e2e import App
from tests.forge_setup import GITHUB_TOKEN, Forged, forged

BUILD_URL = "https://ci.example.com/acme/hello/builds/41"


@pytest.fixture
def gated(app: App, tmp_path: Path) -> Iterator[Forged]:
    setup = forged(app, tmp_path, ci="{allow_failures: [lint]}")
    yield setup
    setup.github.close()


def test_a_red_commit_is_refused_naming_the_failing_checks_and_their_links(gated: Forged) -> None:
    sha = gated.sha("v1")
    gated.github.set_status(sha, "ci/build", "failure", target_url=BUILD_URL, description="2 tests failed")
    gated.github.add_check_run(sha, "test", conclusion="success")
    gated.github.add_check_run(sha, "lint", conclusion="failure")  # allowed to fail
    refused = gated.run("deploy", "staging", "v1")
    assert refused.code == 3, refused.err
    assert refused.err.strip() == (
        f"error: CI is red for {sha[:12]}: failing: ci/build (2 tests failed) {BUILD_URL}; allowed to fail: "
        "lint (failure); pass --force --reason TEXT to ship it anyway (recorded as overriding the CI gate)")
    assert gated.app.history() == []  # nothing recorded, nothing changed
    assert GITHUB_TOKEN not in refused.err + refused.out


def test_a_pending_commit_is_refused_naming_what_is_pending(gated: Forged) -> None:
    sha = gated.sha("v1")
    gated.github.add_check_run(sha, "build", status="in_progress")
    refused = gated.run("deploy", "staging", "v1")
    assert refused.code == 3
    assert f"CI has not finished for {sha[:12]}: pending: build (in_progress) https://github.com/" in refused.err
    assert "--wait-for-ci" in refused.err
    nothing = gated.run("deploy", "staging", "v2")  # a commit nothing reported for yet is not green either
    assert nothing.code == 3 and "no status or check run reported yet" in nothing.err


def test_wait_for_ci_waits_with_progress_then_deploys_once_green(gated: Forged) -> None:
    sha = gated.sha("v1")
    run_id = gated.github.add_check_run(sha, "build", status="in_progress")
    process = gated.app.start("--config", str(gated.config), "deploy", "staging", "v1", "--wait-for-ci")
    try:
        gated.github.wait_for(lambda fake: len(fake.calls("GET", f"/commits/{sha}/check-runs$")) >= 2)
        assert process.poll() is None  # still waiting
        gated.github.update_check_run(run_id, conclusion="success")
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert f"waiting for CI on {sha[:12]} (" in err and "pending: build (in_progress)" in err
    assert gated.app.serves("staging") == "v1"


def test_wait_for_ci_gives_up_after_ci_timeout_with_exit_3(app: App, tmp_path: Path) -> None:
    setup = forged(app, tmp_path, ci="{timeout: 1s}")
    try:
        setup.github.add_check_run(setup.sha("v1"), "build", status="queued")
        refused = setup.run("deploy", "staging", "v1", "--wait-for-ci")
        assert refused.code == 3
        assert "CI still pending for" in refused.err and "after 1s (ci.timeout): pending: build (queued)" in refused.err
    finally:
        setup.github.close()


def test_wait_for_ci_stops_at_once_when_ci_turns_red(gated: Forged) -> None:
    sha = gated.sha("v1")
    run_id = gated.github.add_check_run(sha, "build", status="in_progress")
    process = gated.app.start("--config", str(gated.config), "deploy", "staging", "v1", "--wait-for-ci")
    try:
        gated.github.wait_for(lambda fake: len(fake.calls("GET", f"/commits/{sha}/check-runs$")) >= 2)
        gated.github.update_check_run(run_id, conclusion="timed_out")
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 3 and "CI is red for" in err and "build (timed_out)" in err


def test_a_repo_with_only_check_runs_deploys_when_they_pass(gated: Forged) -> None:
    """shipit#808: with GitHub Actions the combined status stays `pending`; the check runs decide."""
    sha = gated.sha("v1")
    gated.github.add_check_run(sha, "build")
    gated.github.add_check_run(sha, "test")
    result = gated.ok("deploy", "staging", "v1")
    assert gated.app.serves("staging") == "v1"
    plan = gated.ok("deploy", "staging", "v1", "--dry-run").out
    assert f"CI green for {sha[:12]}: 2 check(s) green: build, test" in plan
    assert GITHUB_TOKEN not in result.err + result.out


def test_force_ships_past_a_red_gate_and_is_recorded_as_ignoring_safeties(gated: Forged) -> None:
    sha = gated.sha("v1")
    gated.github.set_status(sha, "ci/build", "error", target_url=BUILD_URL)
    gated.ok("deploy", "staging", "v1", "--force", "--reason", "CI is broken, not the code")
    (release,) = gated.app.history("staging")
    assert release["forced"] is True
    messages = [event["message"] for event in gated.events("safeties")]
    assert f"override of the CI gate: CI of {sha[:12]}: failing: ci/build (error) {BUILD_URL}" in messages


def test_a_promotion_is_gated_on_the_promoted_commit(gated: Forged) -> None:
    sha = gated.sha("v1")
    gated.github.add_check_run(sha, "build")
    gated.ok("deploy", "staging", "v1")
    gated.github.add_check_run(sha, "build", conclusion="failure")  # a re-run of the same commit failed
    refused = gated.run("promote", "staging", "production")
    assert refused.code == 3 and f"CI is red for {sha[:12]}: failing: build (failure)" in refused.err
    assert gated.app.history("production") == []


def test_without_a_ci_section_nothing_is_gated_and_github_is_not_asked(app: App, tmp_path: Path) -> None:
    setup = forged(app, tmp_path, ci=None)
    try:
        setup.ok("deploy", "staging", "v1")
        assert not setup.github.calls("GET", "/commits/")
    finally:
        setup.github.close()


def test_an_unreachable_github_fails_the_gate_in_one_line(gated: Forged) -> None:
    gated.github.down()
    failed = gated.run("deploy", "staging", "v1")
    assert failed.code == 1
    assert failed.err.strip().splitlines()[-1].startswith("error: GitHub GET /repos/acme/hello/commits/")
    assert "unreachable (ConnectError)" in failed.err and "Traceback" not in failed.err


def test_a_missing_token_is_one_readable_line(gated: Forged) -> None:
    gated.app.extra_env.pop("GITHUB_TOKEN")
    failed = gated.run("deploy", "staging", "v1", GITHUB_TOKEN="")
    assert failed.code == 1
    assert failed.err.strip() == ("error: env var GITHUB_TOKEN is not set in conveyor's environment "
                                  "(forge.github.token_env names it)")


# ---------------------------------------------------------------------------------------------- the verdict


def test_require_names_the_checks_that_count_and_one_not_reported_is_pending() -> None:
    state = CIState("c0ffee" * 6 + "abcd", (Check("build", "success"), Check("flaky", "failure")))
    verdict = judge(state, CIGate(require=["build", "deploy-check"]))
    assert not verdict.green and [c.name for c in verdict.pending] == ["deploy-check"]
    assert verdict.failing == []  # `flaky` is not required
    assert judge(state, CIGate(allow_failures=["flaky"])).green
    assert not judge(state, CIGate()).green


def test_the_server_queue_takes_wait_for_ci() -> None:
    from conveyor.pipeline.queue import normalise

    assert normalise("deploy", {"env": "staging", "ref": "v1", "wait_for_ci": True})["wait_for_ci"] is True
    assert normalise("promote", {})["wait_for_ci"] is False



def test_a_deploy_queued_on_the_server_waits_for_ci(app: App) -> None:
    from tests.fakes.github import FakeGitHub
    from tests.forge_setup import REPO, forge_yaml
    from tests.server import ServerProcess

    github = FakeGitHub(REPO, GITHUB_TOKEN)
    sha = app.reconfigure(lambda text: text + forge_yaml(github, "{}"), message="gate on CI")
    server = ServerProcess.start(app, GITHUB_TOKEN=GITHUB_TOKEN, CONVEYOR_CI_POLL="0.1")
    try:
        server.add_app()
        server.push(sha)
        run_id = github.add_check_run(sha, "build", status="in_progress")
        refused = server.cli("deploy", "staging", sha)
        assert refused.code == 3 and "CI has not finished" in refused.err
        process = app.start("deploy", "staging", sha, "--wait-for-ci", **server.client_env())
        try:
            github.wait_for(lambda fake: len(fake.calls("GET", f"/commits/{sha}/check-runs$")) >= 3)
            assert process.poll() is None
            github.update_check_run(run_id, conclusion="success")
            _, err = process.communicate(timeout=120)
        finally:
            process.kill()
        assert process.returncode == 0, err
        assert "waiting for CI on" in err  # the worker's progress, followed by the CLI
        assert app.serves("staging") == "v2"
    finally:
        server.stop()
        github.close()
