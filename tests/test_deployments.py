"""GitHub Deployments (issue 11, point 5): every release is a deployment with statuses, through the outbox,
against the in-repo GitHub server; real git, registry, podman, HAProxy and SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import App
from tests.forge_setup import GITHUB_TOKEN, Forged, forged

PAGE = "https://conveyor.example.com/apps/{app}/releases/{env}/{number}"
STAGING_URL = "https://staging.hello.example.com"


@pytest.fixture
def deployed(app: App, tmp_path: Path) -> Iterator[Forged]:
    setup = forged(app, tmp_path, ci=None,
                   extra=f'    deployments: {{environment_urls: {{staging: "{STAGING_URL}"}}}}',
                   yaml_more=f'notify:\n  release_page: "{PAGE}"\n')
    yield setup
    setup.github.close()


def outbox(setup: Forged) -> list[dict[str, object]]:
    return json.loads(setup.ok("outbox", "--json").out)


def test_each_release_is_a_deployment_with_in_progress_then_its_outcome(deployed: Forged) -> None:
    github = deployed.github
    deployed.ok("deploy", "staging", "v1")
    deployed.ok("promote", "staging", "production")
    assert deployed.run("deploy", "staging", "crash").code == 1
    assert github.deployment_states() == [
        ("staging", ["in_progress", "success"]),  # still the live one: the next staging release failed
        ("production", ["in_progress", "success"]),
        ("staging", ["in_progress", "failure"]),
    ]
    first, production, crashed = github.deployments
    v1 = deployed.sha("v1")
    assert (first["sha"], first["ref"], first["production_environment"]) == (v1, v1, False)
    assert production["production_environment"] is True and production["sha"] == v1
    history = {(r["env"], r["number"]): r for r in deployed.app.history()}
    assert first["payload"] == {"conveyor_release": "hello/staging#1", "release": 1, "kind": "deploy",
                                "digest": history[("staging", 1)]["digest"]}
    created = github.calls("POST", "/deployments$")[0].body
    assert created["required_contexts"] == [] and created["auto_merge"] is False
    (_, succeeded) = github.deployment_statuses[first["id"]]
    assert succeeded["log_url"] == "https://conveyor.example.com/apps/hello/releases/staging/1"
    assert succeeded["environment_url"] == STAGING_URL
    assert "deploy staging#1 by Sample Dev" in succeeded["description"]
    assert outbox(deployed) == []


def test_an_outage_changes_no_outcome_and_the_outbox_delivers_afterwards(deployed: Forged) -> None:
    github = deployed.github
    github.down()
    result = deployed.ok("deploy", "staging", "v1")
    assert "not delivered" in result.err and GITHUB_TOKEN not in result.err
    assert [r["status"] for r in deployed.app.history("staging")] == ["succeeded"]
    waiting = [item for item in outbox(deployed) if item["kind"] == "github-deployment"]
    assert len(waiting) == 2 and "unreachable" in str(waiting[0]["waiting"])
    assert str(waiting[1]["waiting"]).startswith(f"waits behind #{waiting[0]['id']}")
    github.up()
    deployed.ok("outbox", "flush")
    assert github.deployment_states() == [("staging", ["in_progress", "success"])]
    assert outbox(deployed) == []


def test_later_statuses_attach_to_the_same_deployment_across_processes(deployed: Forged) -> None:
    """The create took effect but its answer was lost: the next process finds that deployment on GitHub
    by its payload instead of making a second one; the final status joins it."""
    github = deployed.github
    github.drop_answer("POST", "/deployments$")
    deployed.ok("deploy", "staging", "v1")
    assert len(github.deployments) == 1 and github.deployment_states() == [("staging", [])]
    deployed.ok("outbox", "flush")
    assert github.deployment_states() == [("staging", ["in_progress", "success"])]
    assert len(github.calls("POST", "/deployments$")) == 1


def test_a_refused_token_stops_the_lane_and_the_release_still_succeeds(deployed: Forged) -> None:
    result = deployed.run("deploy", "staging", "v1", GITHUB_TOKEN="ghp_revoked0123456789")
    assert result.code == 0, result.err
    assert "401 Bad credentials" in result.err and "ghp_revoked" not in result.err
    waiting = [item for item in outbox(deployed) if item["kind"] == "github-deployment"]
    assert str(waiting[0]["waiting"]).startswith("STOPPED: GitHub POST /repos/acme/hello/deployments: 401")
    deployed.ok("outbox", "flush")  # the token is right again
    assert deployed.github.deployment_states() == [("staging", ["in_progress", "success"])]


def test_deployments_can_be_turned_off(app: App, tmp_path: Path) -> None:
    setup = forged(app, tmp_path, ci=None, extra="    deployments: {enabled: false}")
    try:
        setup.ok("deploy", "staging", "v1")
        assert setup.github.deployments == [] and not setup.github.requests
    finally:
        setup.github.close()
