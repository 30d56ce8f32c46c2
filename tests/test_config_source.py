"""The commit is the source of truth: conveyor.yml is read from the commit being shipped, never from the working
tree; an explicit --config override is recorded on the release."""

from __future__ import annotations

import subprocess

from tests.e2e import App


def _serving_env(app: App, env: str) -> list[str]:
    names = subprocess.run(
        ["podman", "ps", "-q", "--filter", "label=conveyor.app=hello", "--filter", f"label=conveyor.env={env}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert len(names) == 1, names
    out = subprocess.run(["podman", "inspect", "--format", "{{json .Config.Env}}", names[0]],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.strip().strip("[]").replace('"', "").split(",")]


def test_an_uncommitted_config_change_is_not_deployed_and_is_named(app: App) -> None:
    config = app.repo / "conveyor.yml"
    config.write_text(config.read_text().replace("APP_VERSION: staging", "APP_VERSION: uncommitted"))
    result = app.ok("deploy", "staging", "v1")
    assert "conveyor.yml has uncommitted changes, which are not used" in result.err
    assert len([line for line in result.err.splitlines() if "uncommitted changes" in line]) == 1
    env = _serving_env(app, "staging")
    assert "APP_VERSION=staging" in env and "APP_VERSION=uncommitted" not in env
    assert app.history("staging")[0]["config_source"] == "commit"


def test_each_release_uses_the_config_committed_in_what_it_ships(app: App) -> None:
    renamed = app.reconfigure(lambda text: text.replace("APP_VERSION: staging", "APP_VERSION: from-commit"),
                              on="v2")
    app.ok("deploy", "staging", renamed)
    assert "APP_VERSION=from-commit" in _serving_env(app, "staging")
    app.ok("deploy", "staging", "v1")  # HEAD is still the reconfigured commit: v1 ships v1's own config
    assert "APP_VERSION=staging" in _serving_env(app, "staging")


def test_promote_renders_the_next_stage_from_the_promoted_commit(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    app.reconfigure(lambda text: text.replace("APP_VERSION: production", "APP_VERSION: head-only"), build=False)
    app.ok("promote", "staging", "production")
    env = _serving_env(app, "production")
    assert "APP_VERSION=production" in env and "APP_VERSION=head-only" not in env
    assert app.history("production")[0]["sha"] == app.git("rev-parse", "v1")


def test_an_explicit_config_override_is_used_and_recorded(app: App) -> None:
    override = app.repo.parent / "override.yml"
    override.write_text((app.repo / "conveyor.yml").read_text().replace("APP_VERSION: staging",
                                                                          "APP_VERSION: overridden"))
    result = app.ok("--config", str(override), "deploy", "staging", "v1", "--json")
    assert result.json()["config_source"] == f"--config {override}"
    assert "APP_VERSION=overridden" in _serving_env(app, "staging")
    app.ok("deploy", "staging", "v2")
    newest, oldest = app.history("staging")
    assert (newest["config_source"], oldest["config_source"]) == ("commit", f"--config {override}")
    table = app.ok("history", "staging").out
    assert f"[config: --config {override}]" in table


def test_a_commit_without_a_config_is_a_clear_error(app: App) -> None:
    app.git("rm", "-q", "conveyor.yml")
    app.git("commit", "-qm", "drop the config")
    result = app.run("deploy", "staging", "HEAD")
    assert result.code == 2
    assert "has no conveyor.yml at the repo's root" in result.err and "Traceback" not in result.err


def test_promote_refuses_to_go_backwards_down_the_pipeline_unless_forced(app: App) -> None:
    refused = app.run("promote", "production", "staging")
    assert refused.code == 3
    assert "goes backwards down the pipeline (staging -> production)" in refused.err
    forced = app.run("promote", "production", "staging", "--force", "--reason", "reseed staging")
    assert "backwards" not in forced.err and "production has no succeeded release" in forced.err


def test_progress_as_json_lines_is_every_event_of_the_release(app: App) -> None:
    import json

    text = app.ok("deploy", "staging", "v1")
    followed = app.ok("--events", "json", "deploy", "staging", "v2")
    events = [json.loads(line) for line in followed.err.splitlines()]
    assert all(set(e) == {"step", "status", "message", "data", "release", "shown"} for e in events)
    steps = [(e["step"], e["status"]) for e in events if e["release"] == "staging#2"]
    assert ("recorded", "ok") in steps and ("switch", "info") in steps and steps[-1] == ("finished", "ok")
    recorded = next(e for e in events if e["step"] == "recorded")
    assert recorded["data"]["sha"] == app.git("rev-parse", "v2") and recorded["shown"] is False
    # the text form shows the same run's shown steps, indented under it
    assert "  switch: " in text.err and "recorded" not in text.err
