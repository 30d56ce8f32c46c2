"""The seed's recommended flow end to end, on a real `conveyor server`, the in-repo GitHub server, a real git
remote, the registry, podman and HAProxy: push to main → CI green (a check_suite webhook) → staging deploy
→ the `staging` branch moved → the release PR opened with the commits it carries and the staged digest →
merged on GitHub (the fake merges in the remote and sends pull_request closed+merged) → production gets
exactly the artifact staging ran, and GitHub shows both as deployments with their statuses."""

from __future__ import annotations

import subprocess

from tests.e2e import App
from tests.fakes.github import FakeGitHub
from tests.hooks import (
    REPO,
    check_suite_payload,
    configure_github,
    new_commit,
    operations,
    push_payload,
    queued_number,
    send,
    send_merges_from,
    start_server,
)
from tests.server import ServerProcess

SETTINGS = "release_pr: {stage: staging, target: release}\nci: {timeout: 5m}\n"


def _succeeded(server: ServerProcess, number: int) -> dict:
    done = server.wait_for_state(number, "succeeded", "failed")
    assert done["state"] == "succeeded", done
    return done


def _remote_ref(app: App, ref: str) -> str:
    return subprocess.run(["git", "--git-dir", str(app.repo.parent / "remote.git"), "rev-parse", ref],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_push_ci_staging_release_pr_merge_promotes_exactly_what_staging_ran(app: App) -> None:
    github = FakeGitHub(REPO, token="test-token", git_dir=app.repo.parent / "remote.git")
    configured = configure_github(app, github.api_url, release_pr=SETTINGS)
    app.git("push", "-q", "origin", "v2:refs/heads/release")
    server = start_server(app)
    send_merges_from(github, server, login="release-manager")
    try:
        # Production runs v2 already (shipped before GitHub was set up): the PR carries what is newer.
        v2 = app.git("rev-parse", "v2")
        _succeeded(server, server.api("POST", "/api/apps/hello/deploy", {"env": "staging", "ref": v2})[1]["id"])
        _succeeded(server, server.api("POST", "/api/apps/hello/promote", {})[1]["id"])

        pushed = new_commit(app, "add the search page")
        github.add_commit(pushed, "add the search page", login="sampledev")
        status, body = send(server, "push", push_payload(pushed, login="sampledev"))
        assert status == 200 and "waiting for CI" in body["outcome"], body
        github.add_check_run(pushed, "tests", conclusion="success")
        status, body = send(server, "check_suite", check_suite_payload(pushed))
        deployed = _succeeded(server, queued_number(body["outcome"]))
        staged = deployed["result"]
        assert (staged["env"], staged["sha"], deployed["actor"]) == ("staging", pushed, "github:sampledev")
        assert _remote_ref(app, "refs/heads/staging") == pushed

        [pull] = github.pulls
        assert (pull["head"]["ref"], pull["base"]["ref"], pull["head"]["sha"]) == ("staging", "release", pushed)
        assert staged["digest"] in pull["body"]
        carried = [line for line in pull["body"].splitlines() if line.startswith(f"- {pushed[:12]}")
                   or line.startswith(f"- {configured[:12]}")]
        assert len(carried) == 2 and "hello v2" not in pull["body"], pull["body"]  # production has v2
        assert [a["login"] for a in pull["assignees"]] == ["sampledev"]

        merge = github.merge(pull["number"])  # a person presses the merge button
        assert _remote_ref(app, "refs/heads/release") == merge
        promotion = _wait_for_promotion(server)
        promoted = _succeeded(server, promotion["id"])
        assert promoted["params"]["only"] == merge and promoted["actor"] == "github:release-manager"
        release = promoted["result"]
        assert (release["env"], release["sha"], release["digest"]) == ("production", pushed, staged["digest"])
        assert app.serves("production") == app.serves("staging")

        # GitHub shows both releases as deployments of that commit, each with its statuses in order.
        github.wait_for(lambda fake: ("production", ["in_progress", "success"]) in fake.deployment_states())
        shown = {(d["environment"], d["sha"], d["payload"]["digest"]) for d in github.deployments}
        assert shown == {("staging", pushed, staged["digest"]), ("production", pushed, staged["digest"])}
        assert github.deployment_states("staging")[0][1][:2] == ["in_progress", "success"]
    finally:
        server.stop()
        github.down()


def _wait_for_promotion(server: ServerProcess) -> dict:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [op for op in operations(server) if op["kind"] == "promote" and op["params"].get("only")]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"the merge queued no promotion: {operations(server)}")
