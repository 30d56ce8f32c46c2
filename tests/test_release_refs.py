"""Promotion exactly as tested, and every release visible in git: --only, tags and branches through the
outbox, refusing and offline remotes, commits between stages. Real git remotes throughout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devstack import wait_for_port
from tests.e2e import App
from tests.gate import wait_out_lease


def remote_refs(app: App) -> dict[str, str]:
    """ref name -> commit SHA on the app's origin (tags peeled)."""
    out = app.git("ls-remote", "origin")
    refs = {}
    for line in out.splitlines():
        sha, name = line.split("\t")
        refs[name.removesuffix("^{}")] = sha
    return refs


def timestamp_tags(refs: dict[str, str], env: str) -> dict[str, str]:
    return {k: v for k, v in refs.items() if k.startswith(f"refs/tags/{env}--")}


def set_origin_hook(app: App, script: str | None) -> None:
    hook = Path(app.git("remote", "get-url", "origin")) / "hooks" / "pre-receive"
    if script is None:
        hook.unlink(missing_ok=True)
        return
    hook.write_text(script)
    hook.chmod(0o755)


def test_a_succeeded_release_moves_env_tag_and_branch_and_adds_a_timestamp_tag(app: App) -> None:
    v1, v2 = app.git("rev-parse", "v1"), app.git("rev-parse", "v2")
    app.ok("deploy", "staging", "v1")
    refs = remote_refs(app)
    assert refs["refs/tags/staging"] == v1
    assert refs["refs/heads/staging"] == v1
    (stamp, sha), = timestamp_tags(refs, "staging").items()
    assert sha == v1
    finished = app.history("staging")[0]["finished_at"]
    expected = datetime.fromisoformat(finished).astimezone(UTC).strftime("staging--%Y-%m-%d--%H-%M-%S")
    assert stamp == f"refs/tags/{expected}"
    app.ok("deploy", "staging", "v2")
    app.ok("promote")
    refs = remote_refs(app)
    assert refs["refs/tags/staging"] == v2 and refs["refs/heads/staging"] == v2
    assert len(timestamp_tags(refs, "staging")) == 2
    assert refs["refs/tags/production"] == v2 and refs["refs/heads/production"] == v2
    assert app.ok("outbox", "--json").json() == []


def test_a_failed_release_pushes_nothing(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    before = remote_refs(app)
    assert app.run("deploy", "staging", "crash").code == 1
    assert remote_refs(app) == before


def test_pushes_never_run_the_users_git_hooks(app: App) -> None:
    marker = app.repo / "hook-ran"
    hook = app.repo / ".git" / "hooks" / "pre-push"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    hook.chmod(0o755)
    app.ok("deploy", "staging", "v1")
    assert not marker.exists()
    assert remote_refs(app)["refs/tags/staging"] == app.git("rev-parse", "v1")


def test_configured_prefix_remote_and_which_refs(app: App) -> None:
    prefixed = app.reconfigure(lambda text: text + "release_refs:\n  prefix: deploy/\n  env_branch: false\n",
                               on="v1")
    app.ok("deploy", "staging", prefixed)
    refs = remote_refs(app)
    assert "refs/tags/deploy/staging" in refs
    assert timestamp_tags({k.replace("deploy/", ""): v for k, v in refs.items()}, "staging")
    assert "refs/heads/deploy/staging" not in refs and "refs/heads/staging" not in refs


def test_a_refusing_remote_leaves_the_release_succeeded_and_flush_recovers_in_order(app: App) -> None:
    v1, v2 = app.git("rev-parse", "v1"), app.git("rev-parse", "v2")
    set_origin_hook(app, "#!/bin/sh\necho 'pushes are frozen by the platform team' >&2\nexit 1\n")
    first = app.run("deploy", "staging", "v1")
    assert first.code == 0  # delivery never changes the release's outcome
    assert "pushes are frozen by the platform team" in first.err
    assert app.run("deploy", "staging", "v2").code == 0
    assert app.history("staging")[0]["status"] == "succeeded"
    status = app.ok("status", "--json").json()
    assert len(status["outbox"]) == 2
    assert "pushes are frozen" in status["outbox"][0]["last_error"]
    assert "2 undelivered" in app.ok("status").out
    assert "refs/tags/staging" not in remote_refs(app)
    assert app.run("outbox", "flush").code == 1  # still refused: reported, exit 1
    set_origin_hook(app, None)
    app.ok("outbox", "flush")
    refs = remote_refs(app)
    assert refs["refs/tags/staging"] == v2  # delivered in order: the later release wins
    assert refs["refs/heads/staging"] == v2
    assert sorted(timestamp_tags(refs, "staging").values()) == sorted([v1, v2])
    assert app.ok("outbox", "--json").json() == []


def test_a_delivery_killed_midway_holds_the_outbox_up_for_a_ttl_and_says_why(app: App, tmp_path: Path) -> None:
    """Issue 8: a kill during ref delivery stalled the outbox for 120 s, and `outbox` said nothing."""
    from conveyor.pipeline.outbox import DELIVERY_LOCK

    arrived, hold = tmp_path / "arrived", tmp_path / "hold"
    os.mkfifo(arrived)
    os.mkfifo(hold)
    set_origin_hook(app, f"#!/bin/sh\necho here > '{arrived}'\ncat '{hold}' > /dev/null\nexit 1\n")
    deploy = app.start("deploy", "staging", "v1")
    with open(arrived) as fifo:
        fifo.read()  # the push is inside the remote's hook: the deploy is delivering its refs
    shown = app.ok("outbox", "--json").json()
    assert shown[0]["waiting"].startswith("being delivered by Sample Dev <dev@example.com> since "), shown
    os.kill(deploy.pid, signal.SIGKILL)
    deploy.wait()
    with open(hold, "w"):
        pass  # the orphaned push is refused and ends; the dead run's delivery lease stays behind
    set_origin_hook(app, None)
    wait_out_lease(app, DELIVERY_LOCK, grace=False)
    gone = app.ok("outbox").out
    assert "delivery holder Sample Dev <dev@example.com> gone since" in gone, gone
    wait_out_lease(app, DELIVERY_LOCK)
    flushed = app.ok("outbox", "flush")
    assert "took over delivery from Sample Dev" in flushed.err
    assert remote_refs(app)["refs/tags/staging"] == app.git("rev-parse", "v1")
    assert app.ok("outbox", "--json").json() == []


def test_an_offline_remote_is_retried_by_a_later_run(app: App, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    served = tmp_path / "served"
    served.mkdir()
    bare = served / "hello.git"
    subprocess.run(["git", "clone", "-q", "--bare", app.git("remote", "get-url", "origin"), str(bare)], check=True)
    app.git("remote", "set-url", "origin", f"git://127.0.0.1:{port}/hello.git")
    result = app.run("deploy", "staging", "v1")
    assert result.code == 0
    assert "not delivered" in result.err
    owed = app.ok("outbox", "--json").json()[0]
    assert owed["attempts"] == 1
    daemon = subprocess.Popen(
        ["git", "daemon", "--listen=127.0.0.1", f"--port={port}", f"--base-path={served}", "--export-all",
         "--enable=receive-pack", "--reuseaddr", str(served)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        retry_at = datetime.fromisoformat(owed["next_attempt_at"])
        time.sleep(max((retry_at - datetime.now(UTC)).total_seconds(), 0) + 0.1)  # the recorded backoff passes
        app.ok("deploy", "staging", "v2")
        refs = subprocess.run(["git", "-C", str(bare), "show-ref"], capture_output=True, text=True).stdout
        assert f"{app.git('rev-parse', 'v2')} refs/tags/staging" in refs
        assert f"{app.git('rev-parse', 'v2')} refs/heads/staging" in refs
        assert app.ok("outbox", "--json").json() == []
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=10)


def test_promote_only_the_staged_commit_even_after_staging_moved_on(app: App) -> None:
    v1 = app.git("rev-parse", "v1")
    app.ok("deploy", "staging", "v1")
    app.ok("deploy", "staging", "v2")
    result = app.ok("promote", "--only", "v1", "--json").json()
    assert result["sha"] == v1 and result["kind"] == "promote"
    staging = {r["number"]: r for r in app.history("staging")}
    assert result["digest"] == staging[1]["digest"]
    assert app.serves("production") == "v1"
    assert remote_refs(app)["refs/tags/production"] == v1
    assert result["source_release_id"] is not None


def test_promote_only_a_release_branch_merge_resolves_to_the_staged_parent(app: App) -> None:
    v2 = app.git("rev-parse", "v2")
    app.ok("deploy", "staging", "v2")
    app.git("checkout", "-q", "-b", "release", "v1")
    app.git("merge", "-q", "--no-ff", "-m", "Merge staging into release", "v2")
    merge = app.git("rev-parse", "HEAD")
    result = app.ok("promote", "--only", merge, "--json").json()
    assert result["sha"] == v2
    assert app.serves("production") == "v2"


def test_promote_only_a_squash_with_the_same_tree_is_accepted_and_recorded(app: App) -> None:
    v2 = app.git("rev-parse", "v2")
    app.ok("deploy", "staging", "v2")
    app.git("checkout", "-q", "-b", "release", "v1")
    app.git("merge", "-q", "--squash", "v2")
    app.git("commit", "-q", "-m", "Squash of staging")
    squash = app.git("rev-parse", "HEAD")
    result = app.run("promote", "--only", squash)
    assert result.code == 0, result.err
    assert f"same tree as {v2[:12]}" in result.err
    assert app.history("production")[0]["sha"] == v2


def test_promote_only_refuses_what_the_source_never_ran(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    app.git("checkout", "-q", "-b", "release", "v1")
    (app.repo / "www" / "extra.html").write_text("not staged")
    app.git("add", "-A")
    app.git("commit", "-q", "-m", "a change staging never ran")
    result = app.run("promote", "--only", "HEAD")
    assert result.code == 3
    assert "staging never successfully ran" in result.err
    assert f"staging last ran {app.git('rev-parse', 'v1')[:12]} as staging#1" in result.err
    assert app.history("production") == []
    failed = app.run("promote", "--only", "crash")  # staging tried it, but it failed there
    assert failed.code == 3


def test_promote_only_refuses_when_the_source_ran_nothing(app: App) -> None:
    result = app.run("promote", "--only", "v1")
    assert result.code == 3 and "no succeeded release at all" in result.err


def test_a_promotion_racing_a_staging_deploy_names_only_the_promoted_commit(app: App) -> None:
    """hokusai's race: staging gets C3 while production is being promoted to C2. Production, its record,
    its tags and its branch must all say C2."""
    def slow_production_drain(text: str) -> str:
        production_at = text.index("  - name: production")
        return text[:production_at] + text[production_at:].replace(
            "      type: container-host\n", "      type: container-host\n      drain_seconds: 6\n", 1)

    v1 = app.reconfigure(slow_production_drain, on="v1")
    v2 = app.git("rev-parse", "v2")
    app.ok("deploy", "staging", v1)
    app.ok("deploy", "production", v1, "--hotfix", "--reason", "a previous container, so the promotion drains")
    promotion = app.start("promote")
    _wait_for_event(app, "production", "drain")  # applied, not yet recorded or tagged
    app.ok("deploy", "staging", "v2")  # completes while the promotion is still in flight
    assert promotion.wait(timeout=60) == 0, promotion.stderr.read() if promotion.stderr else ""
    record = app.history("production")[0]
    assert record["sha"] == v1
    refs = remote_refs(app)
    assert refs["refs/tags/production"] == v1 and refs["refs/heads/production"] == v1
    assert set(timestamp_tags(refs, "production").values()) == {v1}
    assert refs["refs/tags/staging"] == v2
    assert app.serves("production") == "v1"


def test_hotfix_is_shown_as_such_in_history_and_status(app: App) -> None:
    app.ok("deploy", "production", "v1", "--hotfix", "--reason", "sev1")
    assert app.status()["production"]["live"]["kind"] == "hotfix"
    assert " hotfix " in app.ok("status").out
    assert "hotfix" in app.ok("history", "production").out


def test_diff_lists_the_commits_the_later_stage_lacks(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    app.ok("promote")
    app.reconfigure(lambda text: text + "migrations: [db/]\n", on="v2", build=False, message="Flag migrations")
    app.git("checkout", "-q", "-b", "next")
    (app.repo / "db").mkdir()
    (app.repo / "db" / "001_add_users.sql").write_text("create table users (id int);\n")
    app.git("add", "-A")
    app.git("commit", "-q", "-m", "Add users table")
    app.ok("build")
    app.ok("deploy", "staging", "HEAD")
    data = app.ok("diff", "--json").json()
    subjects = [(c["subject"], c["migration"]) for c in data["commits"]]
    assert subjects == [("Add users table", True), ("Flag migrations", False), ("hello v2", False)]
    assert data["from_sha"] == app.git("rev-parse", "HEAD") and data["to_sha"] == app.git("rev-parse", "v1")
    assert data["commits"][0]["author"] == "Sample Dev" and data["commits"][0]["date"]
    assert data["compare_url"] is None  # a local remote has no web compare view
    human = app.ok("diff", "staging", "production").out
    assert "3 commit(s)" in human and "[migration]" in human
    assert app.status()["production"]["behind"] == {"stage": "staging", "commits": 3}
    # the diff comes from the ledger's releases, never from the mutable tags
    app.git("push", "-q", "-f", "origin", f"{app.git('rev-parse', 'HEAD')}:refs/tags/production")
    assert len(app.ok("diff", "--json").json()["commits"]) == 3


def test_diff_gives_a_compare_url_for_github_and_gitlab_remotes(app: App) -> None:
    app.reconfigure(lambda text: text + "release_refs:\n  remote: github\n  env_tag: false\n"
                    "  timestamp_tag: false\n  env_branch: false\n", build=False)
    app.git("remote", "add", "github", "git@github.com:acme/hello.git")
    app.ok("deploy", "staging", "v2")
    app.ok("deploy", "production", "v1", "--hotfix", "--reason", "seed production")
    data = app.ok("diff", "--json").json()
    v1, v2 = app.git("rev-parse", "v1"), app.git("rev-parse", "v2")
    assert data["compare_url"] == f"https://github.com/acme/hello/compare/{v1}...{v2}"


def test_diff_answers_each_way_of_naming_the_stages(app: App) -> None:
    app.ok("deploy", "staging", "v2")
    app.ok("deploy", "production", "v1", "--hotfix", "--reason", "seed production")
    v1, v2 = app.git("rev-parse", "v1"), app.git("rev-parse", "v2")
    default, named = app.ok("diff").out, app.ok("diff", "staging", "production").out
    assert default == named and default.startswith(f"1 commit(s) in staging ({v2[:12]}) that production ({v1[:12]})")
    assert default.splitlines()[1].startswith(v2) and default.splitlines()[1].endswith(": hello v2")
    assert app.ok("--config", "conveyor.yml", "diff").out == default
    data = app.ok("diff", "staging", "production", "--json").json()
    assert data == app.ok("diff", "--json").json() and [c["sha"] for c in data["commits"]] == [v2]
    reverse = app.ok("diff", "production", "staging").out  # production runs nothing staging lacks
    assert reverse.startswith(f"0 commit(s) in production ({v1[:12]})")
    assert app.ok("diff", "production", "staging", "--json").json()["commits"] == []


def _wait_for_event(app: App, env: str, step: str, timeout: float = 60) -> None:
    from conveyor.ledger import open_ledger

    ledger = open_ledger(f"sqlite:///{app.home / 'ledger.db'}")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ledger.events(app="hello", env=env, step=step):
                return
            time.sleep(0.05)
    finally:
        ledger.close()
    raise AssertionError(f"{env} never reached step {step}")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("git@github.com:acme/hello.git", "https://github.com/acme/hello/compare/a...b"),
        ("https://github.com/acme/hello", "https://github.com/acme/hello/compare/a...b"),
        ("ssh://git@gitlab.com/group/sub/hello.git", "https://gitlab.com/group/sub/hello/-/compare/a...b"),
        ("https://gitlab.example.org/team/hello.git", "https://gitlab.example.org/team/hello/-/compare/a...b"),
        ("/srv/git/hello.git", None),
        ("git://127.0.0.1:9418/hello.git", None),
    ],
)
def test_compare_url(url: str, expected: str | None) -> None:
    from conveyor.pipeline.diff import compare_url

    assert compare_url(url, "a", "b") == expected


def test_only_env_tag_and_branch_are_force_pushed() -> None:
    from conveyor.pipeline.outbox import refspecs

    specs = refspecs({"sha": "abc", "env_tag": "staging", "timestamp_tag": "staging--2026-01-01--00-00-00",
                      "env_branch": "staging"})
    assert specs == ["+abc:refs/tags/staging", "abc:refs/tags/staging--2026-01-01--00-00-00",
                     "+abc:refs/heads/staging"]


def test_two_releases_in_the_same_second_get_distinct_timestamp_tags(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    app.ok("deploy", "staging", "v2")
    os.environ["CONVEYOR_HOME"] = str(app.home)
    try:
        from conveyor.pipeline.outbox import git_refs_payload
        from conveyor.pipeline.workspace import Workspace

        ws = Workspace(app.repo, say=lambda _: None)
        first, second = ws.ledger.list_releases("hello", "staging", 2)
        moment = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
        payload = git_refs_payload(ws, ws.config, first, moment)
        ws.ledger.update_release(first.id, outbox_items=[("git-refs", payload)])
        again = git_refs_payload(ws, ws.config, second, moment.replace(microsecond=500_000))
        ws.close()
    finally:
        os.environ.pop("CONVEYOR_HOME", None)
    assert payload["timestamp_tag"] == "staging--2026-05-01--12-00-00"
    assert again["timestamp_tag"] == "staging--2026-05-01--12-00-00-2"


class _Announcements:
    """A second outbox kind, as announcements will be: owed for every outcome, delivered to a list."""

    retry_delays = ()

    def __init__(self) -> None:
        self.sent: list[str] = []

    def lane(self, item: Any) -> str:
        return "announce"

    def owed(self, ws: object, release: Any, finished_at: datetime) -> list[dict[str, Any]]:
        return [{"text": f"{release.env}#{release.number} {release.status}"}]

    def deliver(self, ws: object, item: Any) -> None:
        self.sent.append(item.payload["text"])

    def describe(self, item: Any) -> str:
        return f"announce '{item.payload['text']}'"


def test_outbox_dispatches_by_kind_and_a_failed_release_can_owe_items(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.pipeline import outbox
    from conveyor.pipeline.release import _Recorder
    from conveyor.pipeline.views import outbox_view
    from conveyor.pipeline.workspace import Workspace

    announcements = _Announcements()
    monkeypatch.setitem(outbox.HANDLERS, "announce", announcements)
    monkeypatch.setenv("CONVEYOR_HOME", str(app.home))
    ws = Workspace(app.repo, say=lambda line: None)
    try:
        sha = app.git("rev-parse", "v1")
        release = ws.ledger.create_release(
            app="hello", env="staging", kind="deploy", sha=sha, digest="sha256:feed", image="reg/hello@sha256:feed",
            spec={}, config_digest="sha256:conf", actor="Sample Dev", origin="cli", reason="", forced=False,
            previous_number=None, source_release_id=None,
        )
        _Recorder(ws, release).finish("failed", "health check failed")
        owed = ws.ledger.undelivered("hello")
        assert [(item.kind, item.payload) for item in owed] == [("announce", {"text": "staging#1 failed"})]
        assert [row["what"] for row in outbox_view(ws)] == ["announce 'staging#1 failed'"]
        assert outbox.deliver(ws) == []
        assert announcements.sent == ["staging#1 failed"]
        assert ws.ledger.undelivered("hello") == []
        assert "refs/tags/staging" not in remote_refs(app)  # git refs are owed by succeeded releases only
    finally:
        ws.close()
