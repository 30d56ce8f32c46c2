"""`POST /webhooks/github` on a real `conveyor server`: signatures (GitHub's documented test vector), the
app chosen by configuration, replays, pings, body bounds, and what pushes, CI events and merged pull
requests trigger, through the server's queue, with real git remotes, the registry, podman and HAProxy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conveyor.pipeline.triggers import ci_event_sha
from conveyor.pipeline.webhooks import repository_name, signature_valid
from tests.e2e import App
from tests.fakes.github import FakeGitHub
from tests.hooks import (
    REPO,
    check_suite_payload,
    configure_github,
    new_commit,
    operations,
    pull_request_payload,
    push_payload,
    queued_number,
    send,
    send_merges_from,
    sign,
    start_server,
)
from tests.server import ServerProcess

UNREACHABLE_API = "http://127.0.0.1:9"  # no test here asks the forge anything


def test_signatures_are_checked_with_githubs_documented_test_vector() -> None:
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
    secret, body = "It's a Secret to Everybody", b"Hello, World!"
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert sign(body, secret) == expected
    assert signature_valid(secret, body, expected)
    assert not signature_valid(secret, body + b" ", expected)
    assert not signature_valid("another secret", body, expected)
    assert not signature_valid(secret, body, expected.removeprefix("sha256="))  # the prefix is part of it
    assert not signature_valid(secret, body, "sha1=" + expected.removeprefix("sha256="))
    assert not signature_valid(secret, body, None)
    assert not signature_valid("", body, sign(body, ""))  # no secret configured verifies nothing
    assert repository_name(json.dumps({"repository": {"full_name": REPO}}).encode()) == REPO
    assert repository_name(b"not json") is None and repository_name(b"[1]") is None


@pytest.fixture
def hooked(app: App) -> Iterator[ServerProcess]:
    configure_github(app, UNREACHABLE_API)
    server = start_server(app)
    yield server
    server.stop()


def test_only_signed_deliveries_for_a_configured_repo_are_accepted(hooked: ServerProcess) -> None:
    server = hooked
    ping = {"zen": "Keep it logically awesome.", "hook_id": 1, "repository": {"full_name": REPO},
            "sender": {"login": "octocat"}}
    status, body = send(server, "ping", ping)
    assert status == 200 and body["pong"] is True and body["apps"] == ["hello"], body

    status, body = send(server, "ping", ping, secret=None)
    assert status == 401 and "missing X-Hub-Signature-256" in body["error"]["message"], body
    status, body = send(server, "ping", ping, secret="not the secret")
    assert status == 401 and "does not match" in body["error"]["message"], body
    tampered = json.dumps({**ping, "zen": "changed"}).encode()
    status, _ = send(server, "ping", tampered, signature=sign(json.dumps(ping).encode()))
    assert status == 401

    # The secret is the one the app's config names, read from the server's environment: a delivery that
    # claims another repository is not verified with this app's secret.
    other = {**ping, "repository": {"full_name": "someone/else"}}
    status, body = send(server, "ping", other)
    assert status == 404 and "someone/else" in body["error"]["message"], body
    status, body = send(server, "ping", b"{not json")
    assert status == 400, body

    big = json.dumps({**ping, "padding": "x" * (2 * 1024 * 1024)}).encode()
    status, _ = send(server, "push", big)
    assert status == 413
    assert operations(server) == []  # nothing of this queued anything


def _staged_merge(server: ServerProcess, staged: str) -> str:
    """Staging runs `staged`; the release branch gets a merge of it (as GitHub's merge button makes), pushed
    to the app's remote. Returns the merge commit."""
    app = server.app
    deployed = server.api("POST", "/api/apps/hello/deploy", {"env": "staging", "ref": staged})[1]
    assert server.wait_for_state(deployed["id"], "succeeded", "failed")["state"] == "succeeded"
    app.git("checkout", "-q", "-B", "release", f"{staged}~1")
    app.git("merge", "-q", "--no-ff", "-m", "Merge pull request #7 from acme/staging", staged)
    merge = app.git("rev-parse", "HEAD")
    app.git("push", "-q", "origin", "release")
    return merge


def test_a_merged_pr_promotes_its_merge_commit_once_and_a_closed_unmerged_one_never(hooked: ServerProcess) -> None:
    server, app = hooked, hooked.app
    staged = app.git("rev-parse", "main")
    merge = _staged_merge(server, staged)
    before = len(operations(server))

    # Closed without merging: GitHub still sends a merge_commit_sha (the test merge it computed).
    status, body = send(server, "pull_request", pull_request_payload(7, merged=False, merge_commit_sha=merge))
    assert status == 200 and "closed without being merged" in body["outcome"], body
    assert len(operations(server)) == before

    delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    status, body = send(server, "pull_request", pull_request_payload(7, merged=True, merge_commit_sha=merge),
                        delivery=delivery)
    assert status == 200, body
    number = queued_number(body["outcome"])
    done = server.wait_for_state(number, "succeeded", "failed")
    assert done["state"] == "succeeded", done
    assert (done["kind"], done["params"]["only"], done["params"]["target"]) == ("promote", merge, "production")
    assert (done["actor"], done["origin"]) == ("github:octocat", f"github delivery {delivery}")
    release = done["result"]
    staging = app.ok("history", "staging", "--json").json()[0]
    assert (release["env"], release["sha"], release["digest"]) == ("production", staged, staging["digest"])

    # A replay of the same delivery (GitHub's "Redeliver") queues nothing.
    status, body = send(server, "pull_request", pull_request_payload(7, merged=True, merge_commit_sha=merge),
                        delivery=delivery)
    assert status == 200 and body["duplicate"] is True, body
    assert len(operations(server)) == before + 1


def test_a_rollback_pauses_the_triggers_until_they_are_unlocked(hooked: ServerProcess) -> None:
    server, app = hooked, hooked.app
    v2 = app.git("rev-parse", "v2")
    first = server.api("POST", "/api/apps/hello/deploy", {"env": "staging", "ref": v2})[1]
    assert server.wait_for_state(first["id"], "succeeded", "failed")["state"] == "succeeded"
    promoted = server.api("POST", "/api/apps/hello/promote", {"source": "staging", "target": "production"})[1]
    assert server.wait_for_state(promoted["id"], "succeeded", "failed")["state"] == "succeeded"
    merge = _staged_merge(server, app.git("rev-parse", "main"))
    status, body = send(server, "pull_request", pull_request_payload(8, merged=True, merge_commit_sha=merge))
    assert server.wait_for_state(queued_number(body["outcome"]), "succeeded", "failed")["state"] == "succeeded"

    rolled = server.cli_ok("rollback", "production", "--reason", "bad release", "--json").json()
    assert (rolled["kind"], rolled["sha"]) == ("rollback", v2)
    before = len(operations(server))

    # The same merge delivered again (a new delivery, not a replay) must not redeploy what was rolled back.
    status, body = send(server, "pull_request", pull_request_payload(8, merged=True, merge_commit_sha=merge))
    assert status == 200 and "paused" in body["outcome"] and f"rollback production#{rolled['number']}" \
        in body["outcome"], body
    assert len(operations(server)) == before
    assert app.status()["production"]["live"]["sha"] == v2
    # A manual operation is not stopped by the pause (only the automatic triggers are).
    status, blocks = server.api("GET", "/api/apps/hello/blocks")
    assert status == 200 and [b["scope"] for b in blocks] == ["triggers"], blocks
    status, view = server.api("GET", "/api/apps/hello/triggers")
    assert [(p["env"], p["scope"]) for p in view["paused"]] == [("production", "triggers")], view

    lifted = server.cli_ok("unlock", "production", "--triggers", "--json").json()
    assert lifted["lifted"] == 1
    status, body = send(server, "pull_request", pull_request_payload(8, merged=True, merge_commit_sha=merge))
    assert status == 200 and "queued as operation" in body["outcome"], body
    done = server.wait_for_state(queued_number(body["outcome"]), "succeeded", "failed")
    assert done["state"] == "succeeded" and done["result"]["sha"] == app.git("rev-parse", "main")


def test_a_push_to_a_branch_without_a_trigger_is_ignored(hooked: ServerProcess) -> None:
    server = hooked
    sha = server.app.git("rev-parse", "main")
    status, body = send(server, "push", push_payload(sha, branch="feature"))
    assert status == 200 and "no trigger on a push to feature" in body["outcome"], body
    status, body = send(server, "push", {**push_payload(sha), "deleted": True, "after": "0" * 40})
    assert status == 200 and "not a push of a branch head" in body["outcome"], body
    assert operations(server) == []


@pytest.fixture
def github(app: App) -> Iterator[FakeGitHub]:
    fake = FakeGitHub(REPO, token="test-token", git_dir=app.repo.parent / "remote.git")
    yield fake
    fake.down()


def _state(server: ServerProcess, number: int) -> dict[str, Any]:
    done = server.wait_for_state(number, "succeeded", "failed")
    assert done["state"] == "succeeded", done
    return done


def test_a_push_deploys_staging_once_its_whole_ci_is_green(app: App, github: FakeGitHub) -> None:
    configure_github(app, github.api_url)
    server = start_server(app)
    try:
        pushed = new_commit(app, "first change")
        build = github.add_check_run(pushed, "build", status="completed", conclusion="success")
        tests = github.add_check_run(pushed, "tests", status="in_progress", conclusion=None)
        status, body = send(server, "push", push_payload(pushed, login="alice"))
        assert status == 200 and "waiting for CI" in body["outcome"] and "pending: tests" in body["outcome"], body
        # A suite completing while another check still runs is not the whole verdict.
        status, body = send(server, "check_suite", check_suite_payload(pushed))
        assert "waiting for CI" in body["outcome"], body
        assert operations(server) == []
        status, view = server.api("GET", "/api/apps/hello/triggers")
        assert status == 200 and [(w["sha"], w["env"]) for w in view["waiting"]] == [(pushed, "staging")], view
        assert "pending: tests" in view["waiting"][0]["note"], view

        github.update_check_run(tests, conclusion="success")
        github.set_status(pushed, "ci/circleci", "success")
        status, body = send(server, "check_suite", check_suite_payload(pushed))
        done = _state(server, queued_number(body["outcome"]))
        assert (done["kind"], done["env"], done["params"]["ref"], done["actor"]) == \
            ("deploy", "staging", pushed, "github:alice")
        assert app.status()["staging"]["live"]["sha"] == pushed and build

        # Red: nothing ships; a newer push supersedes the red one, and the poll deploys it without any event.
        red = new_commit(app, "second change")
        github.add_check_run(red, "tests", conclusion="failure")
        send(server, "push", push_payload(red))
        status, body = send(server, "check_suite", check_suite_payload(red, "failure"))
        assert "red: failing: tests" in body["outcome"], body
        fixed = new_commit(app, "third change")
        send(server, "push", push_payload(fixed))
        github.add_check_run(fixed, "tests", conclusion="success")
        status, polled = server.api("POST", "/api/triggers/poll")
        assert status == 200, polled
        [decided] = polled["pushes"]
        assert decided["sha"] == fixed, polled
        _state(server, queued_number(decided["outcome"]))
        assert app.status()["staging"]["live"]["sha"] == fixed
        assert [op["params"]["ref"] for op in operations(server)] == [fixed, pushed]  # red never queued
    finally:
        server.stop()


RELEASE_PR = "release_pr: {stage: staging, target: release}\n"


def test_each_staging_release_opens_then_updates_the_release_pr(app: App, github: FakeGitHub) -> None:
    configure_github(app, github.api_url, release_pr=RELEASE_PR)
    app.git("push", "-q", "origin", "v2:refs/heads/release")
    server = start_server(app)
    try:
        first = new_commit(app, "add the search page")
        github.add_commit(first, "add the search page", login="sampledev")
        deployed = server.api("POST", "/api/apps/hello/deploy", {"env": "staging", "ref": first})[1]
        staged = _state(server, deployed["id"])["result"]
        [pull] = github.pulls
        assert (pull["head"]["ref"], pull["base"]["ref"], pull["state"]) == ("staging", "release", "open")
        assert pull["head"]["sha"] == first  # the staging branch was moved before the PR was opened
        assert staged["digest"] in pull["body"] and "add the search page" in pull["body"]
        assert "ship through GitHub" in pull["body"] and "+# add the search page" in pull["body"]
        assert [a["login"] for a in pull["assignees"]] == ["sampledev"]
        view = server.api("GET", "/api/apps/hello/triggers")[1]
        assert view["release_pr"]["number"] == pull["number"] and view["release_pr"]["digest"] == staged["digest"]

        second = new_commit(app, "fix the search page")
        deployed = server.api("POST", "/api/apps/hello/deploy", {"env": "staging", "ref": second})[1]
        staged = _state(server, deployed["id"])["result"]
        assert len(github.pulls) == 1  # GitHub's 422 "already exists": the open PR is updated
        assert len(github.calls("POST", r"/pulls$")) == 2 and github.calls("PATCH", r"/pulls/1$")
        pull = github.pulls[0]
        assert staged["digest"] in pull["body"] and "fix the search page" in pull["body"]
        assert f"staging#{staged['number']}" in pull["title"]
    finally:
        server.stop()


def test_a_merge_bringing_commits_staging_never_ran_is_refused_and_the_pr_says_why(
        app: App, github: FakeGitHub) -> None:
    from conveyor.forge.github import GitHub, TokenAuth

    staged = configure_github(app, github.api_url)
    app.git("push", "-q", "origin", "v2:refs/heads/release")
    server = start_server(app)
    send_merges_from(github, server)
    try:
        deployed = server.api("POST", "/api/apps/hello/deploy", {"env": "staging", "ref": staged})[1]
        _state(server, deployed["id"])
        new_commit(app, "never staged", build=False)
        # A PR straight from main into release, merged on GitHub: it brings a commit staging never ran.
        pull = GitHub(REPO, TokenAuth("test-token"), api_url=github.api_url).open_pull(
            head="main", base="release", title="skip staging", body="")
        merge = github.merge(pull.number)
        github.wait_for(lambda fake: bool(fake.comments.get(pull.number)))
        [comment] = github.comments[pull.number]
        assert comment["body"].startswith("conveyor did not promote this merge to production: staging never "
                                          f"successfully ran {merge}"), comment
        assert [op["kind"] for op in operations(server)] == ["deploy"]  # no promotion queued
    finally:
        server.stop()


def _backdate_release_pr(app: App, hours: float) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(app.ledger_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE release_prs SET opened_at = :at"),
                     {"at": (datetime.now(UTC) - timedelta(hours=hours)).replace(tzinfo=None)})
    engine.dispose()


def test_a_release_pr_auto_merges_once_old_enough_and_never_while_a_block_holds(
        app: App, github: FakeGitHub) -> None:
    configure_github(app, github.api_url, release_pr="release_pr: {stage: staging, target: release, "
                                                     "auto_merge_after: 24h}\n")
    app.git("push", "-q", "origin", "v2:refs/heads/release")
    server = start_server(app)
    send_merges_from(github, server)
    try:
        staged = new_commit(app, "ready to ship")
        deployed = server.api("POST", "/api/apps/hello/deploy", {"env": "staging", "ref": staged})[1]
        digest = _state(server, deployed["id"])["result"]["digest"]
        polled = server.api("POST", "/api/triggers/poll")[1]
        assert polled["release_prs"][0]["outcome"].startswith("due at "), polled
        assert github.pulls[0]["state"] == "open"

        _backdate_release_pr(app, 25)
        server.cli_ok("lock", "production", "--reason", "release freeze")
        polled = server.api("POST", "/api/triggers/poll")[1]
        assert "not merged" in polled["release_prs"][0]["outcome"] and "release freeze" in \
            polled["release_prs"][0]["outcome"], polled
        assert github.pulls[0]["state"] == "open"

        server.cli_ok("unlock", "production")
        polled = server.api("POST", "/api/triggers/poll")[1]
        assert polled["release_prs"][0]["outcome"].startswith("merged as "), polled
        github.wait_for(lambda fake: fake.pulls[0]["merged"])
        promotion = _wait_for_operation(server, "promote")
        done = _state(server, promotion["id"])
        assert (done["result"]["env"], done["result"]["sha"], done["result"]["digest"]) == \
            ("production", staged, digest)
        assert done["params"]["only"] == github.pulls[0]["merge_commit_sha"]
    finally:
        server.stop()


def _wait_for_operation(server: ServerProcess, kind: str, timeout: float = 60) -> dict[str, Any]:
    """The first operation of `kind` (queued by a delivery the fake sends on its own thread)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [op for op in operations(server) if op["kind"] == kind]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no {kind} operation was queued: {operations(server)}")


def test_a_release_pr_owed_during_a_github_outage_is_delivered_after(app: App, github: FakeGitHub) -> None:
    configure_github(app, github.api_url, release_pr=RELEASE_PR)
    app.git("push", "-q", "origin", "v2:refs/heads/release")
    server = start_server(app)
    try:
        github.down()
        staged = new_commit(app, "during the outage")
        deployed = server.api("POST", "/api/apps/hello/deploy", {"env": "staging", "ref": staged})[1]
        assert _state(server, deployed["id"])["result"]["status"] == "succeeded"  # the outage changes no outcome
        waiting = server.api("GET", "/api/apps/hello/outbox")[1]
        assert "release-pr" in [item["kind"] for item in waiting], waiting  # beside the GitHub deployments
        github.up()
        flushed = server.api("POST", "/api/apps/hello/outbox/flush", {"reason": "GitHub is back"})[1]
        assert flushed["undelivered"] == [], flushed
        [pull] = github.pulls
        assert pull["head"]["sha"] == staged and staged[:12] in pull["title"]
    finally:
        server.stop()


def test_the_mirrors_head_is_read_from_its_files_as_git_reads_it(tmp_path: Path) -> None:
    import subprocess

    from conveyor.vcs.git import head_from_files

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout.strip()

    work, bare = tmp_path / "work", tmp_path / "bare.git"
    git("init", "-q", "-b", "main", str(work))
    git("-C", str(work), "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "x")
    git("clone", "-q", "--bare", str(work), str(bare))
    expected = git("--git-dir", str(bare), "rev-parse", "HEAD")
    assert head_from_files(bare) == expected  # a clone's refs are packed
    git("--git-dir", str(bare), "update-ref", "refs/heads/main", expected)  # now a loose ref as well
    assert head_from_files(bare) == expected
    assert head_from_files(tmp_path / "missing.git") is None
    git("--git-dir", str(bare), "symbolic-ref", "HEAD", "refs/heads/none")
    assert head_from_files(bare) is None


def test_ci_events_name_their_commit_once_they_can_change_the_verdict() -> None:
    sha = "a" * 40
    assert ci_event_sha("check_suite", check_suite_payload(sha)) == sha
    assert ci_event_sha("check_suite", {**check_suite_payload(sha), "action": "requested"}) is None
    assert ci_event_sha("check_run", {"action": "completed", "check_run": {"head_sha": sha}}) == sha
    assert ci_event_sha("check_run", {"action": "created", "check_run": {"head_sha": sha}}) is None
    assert ci_event_sha("status", {"sha": sha, "state": "pending"}) == sha
    assert ci_event_sha("status", {"sha": "not a sha"}) is None


def test_a_bad_poll_interval_is_one_line_and_exit_2(app: App) -> None:
    import subprocess

    from tests.e2e import CONVEYOR

    done = subprocess.run([CONVEYOR, "server", "--bind", "127.0.0.1:0"], cwd=app.repo, capture_output=True,
                          text=True, env=app.env(CONVEYOR_TRIGGER_POLL="soon"), timeout=60)
    assert done.returncode == 2, done.stderr
    assert "CONVEYOR_TRIGGER_POLL='soon'" in done.stderr and "Traceback" not in done.stderr
