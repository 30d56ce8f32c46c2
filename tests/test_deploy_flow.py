"""The main job end to end through the real CLI: build, deploy, promote, roll back, status, history —
real git, registry, podman, HAProxy and SQLite."""

from __future__ import annotations

import json
import subprocess

from tests.e2e import CONVEYOR, App


def test_build_skips_an_image_the_registry_already_has(app: App) -> None:
    result = app.ok("build", "v1", "--json")
    data = result.json()
    assert data["built"] is False
    assert data["sha"] == app.git("rev-parse", "v1")
    assert data["digest"].startswith("sha256:")
    assert "already in the registry" in result.err


def test_build_uses_a_clean_export_of_the_commit_never_uncommitted_files(app: App) -> None:
    (app.repo / "www" / "index.html").write_text('<b id="version">uncommitted</b>')
    app.git("commit", "-q", "--allow-empty", "-m", "empty commit: a new SHA to build")
    (app.repo / "www" / "index.html").write_text('<b id="version">uncommitted</b>')
    built = app.ok("build", "--json").json()
    assert built["built"] is True
    app.ok("deploy", "staging", "HEAD")
    assert app.serves("staging") == "v2"  # HEAD's committed page (v2), not the working tree's


def test_deploy_promote_rollback_serve_and_record_each_release(app: App) -> None:
    v1, v2 = app.git("rev-parse", "v1"), app.git("rev-parse", "v2")
    app.ok("deploy", "staging", "v1", "--reason", "first")
    assert app.serves("staging") == "v1"
    app.ok("promote")
    assert app.serves("production") == "v1"
    app.ok("deploy", "staging", "v2")
    app.ok("promote", "staging", "production")
    assert app.serves("production") == "v2"
    rollback = app.ok("rollback", "production", "--json")
    assert app.serves("production") == "v1"
    assert app.serves("staging") == "v2"

    production = app.history("production")
    assert [(r["number"], r["kind"], r["status"], r["sha"]) for r in production] == [
        (3, "rollback", "succeeded", v1), (2, "promote", "succeeded", v2), (1, "promote", "succeeded", v1),
    ]
    staging = app.history("staging")
    assert [(r["number"], r["kind"], r["sha"]) for r in staging] == [(2, "deploy", v2), (1, "deploy", v1)]
    # promotion ships the very artifact staging ran; the rollback re-applies release #1's digest
    assert production[2]["digest"] == staging[1]["digest"]
    assert production[1]["digest"] == staging[0]["digest"]
    assert production[0]["digest"] == production[2]["digest"]
    assert rollback.json()["number"] == 3
    for record in production + staging:
        assert record["actor"] == "Sample Dev <dev@example.com>"
        assert "@" in record["origin"]
        assert record["finished_at"] is not None
    assert staging[1]["reason"] == "first"
    assert production[1]["previous_number"] == 1


def test_rollback_reapplies_the_stored_spec_not_todays_config(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    app.ok("deploy", "staging", "v2")
    app.reconfigure(lambda text: text.replace("APP_VERSION: staging", "APP_VERSION: changed-later"), build=False)
    app.ok("rollback", "staging")
    live = app.status()["staging"]["live"]
    assert live["kind"] == "rollback" and live["number"] == 3
    container = _serving_container(app, "staging")
    env = _container_env(container)
    assert "APP_VERSION=staging" in env
    assert "APP_VERSION=changed-later" not in env


def test_rollback_names_the_tasks_it_does_not_undo(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    app.ok("deploy", "staging", "v2")
    result = app.ok("rollback", "staging", "--json")
    data = result.json()
    assert len(data["not_undone"]) == 1
    assert "task 'migrate' ran in staging#2" in data["not_undone"][0]
    forward = app.ok("rollback", "staging", "--to", "2")  # back to the later release: nothing ran since
    assert "not undone" not in forward.err and app.serves("staging") == "v2"


def test_rollback_to_a_numbered_release(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    app.ok("deploy", "staging", "v2")
    app.ok("rollback", "staging")
    assert app.serves("staging") == "v1"
    app.ok("rollback", "staging", "--to", "2")
    assert app.serves("staging") == "v2"
    assert app.history("staging")[0]["kind"] == "rollback"


def test_production_accepts_only_promotions_unless_hotfix(app: App) -> None:
    refused = app.run("deploy", "production", "v1")
    assert refused.code == 3
    assert "only accepts promotions from staging" in refused.err
    assert app.history("production") == []
    no_reason = app.run("deploy", "production", "v1", "--hotfix")
    assert no_reason.code == 2
    app.ok("deploy", "production", "v1", "--hotfix", "--reason", "outage fix")
    record = app.history("production")[0]
    assert record["kind"] == "hotfix" and record["reason"] == "outage fix"
    assert "hotfix" in app.ok("history", "production").out


def test_dry_run_prints_every_step_and_changes_nothing(app: App) -> None:
    result = app.ok("deploy", "staging", "v1", "--dry-run")
    assert "dry run" in result.out
    for step in ("acquire the lease", "pre-deploy task 'migrate'", "health check", "record"):
        assert step in result.out
    assert app.history() == []
    assert _containers(app) == []
    app.ok("deploy", "staging", "v1")
    assert "dry run" in app.ok("promote", "--dry-run").out
    assert "dry run" in app.ok("rollback", "staging", "--to", "1", "--dry-run").out
    assert len(app.history()) == 1


def test_status_shows_live_releases_and_commits_behind(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    app.ok("promote")
    app.ok("deploy", "staging", "v2")
    status = app.status()
    assert status["staging"]["live"]["sha"] == app.git("rev-parse", "v2")
    assert status["production"]["live"]["kind"] == "promote"
    assert status["production"]["behind"] == {"stage": "staging", "commits": 1}
    assert status["staging"]["drift"] is False
    assert status["staging"]["lease"] is None
    human = app.ok("status").out
    assert "1 commit(s) behind staging" in human


def test_pre_deploy_task_runs_with_the_new_image_and_its_output_is_recorded(app: App) -> None:
    result = app.ok("deploy", "staging", "v1")
    assert "migrating schema for staging" in result.err


def test_failed_pre_deploy_task_fails_the_operation_and_switches_nothing(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    failing = app.reconfigure(lambda text: text.replace(
        '"echo migrating schema for $APP_VERSION"', '"echo migration 42 failed >&2; exit 7"'), on="v2")
    result = app.run("deploy", "staging", failing)
    assert result.code == 1
    assert "migrate" in result.err and "7" in result.err
    assert app.serves("staging") == "v1"
    latest = app.history("staging")[0]
    assert latest["status"] == "failed" and latest["number"] == 2
    assert app.status()["staging"]["live"]["number"] == 1
    assert app.status()["staging"]["lease"] is None


def test_ci_identity_is_recorded(app: App) -> None:
    app.ok("deploy", "staging", "v1", GITHUB_ACTIONS="true", GITHUB_ACTOR="octocat",
           GITHUB_SERVER_URL="https://github.com", GITHUB_REPOSITORY="acme/hello", GITHUB_RUN_ID="42")
    app.ok("deploy", "staging", "v2", CIRCLECI="true", CIRCLE_USERNAME="circle-dev",
           CIRCLE_BUILD_URL="https://circleci.com/gh/acme/hello/7")
    newest, oldest = app.history("staging")
    assert (oldest["actor"], oldest["origin"]) == ("octocat", "https://github.com/acme/hello/actions/runs/42")
    assert (newest["actor"], newest["origin"]) == ("circle-dev", "https://circleci.com/gh/acme/hello/7")


def test_secrets_reach_the_app_but_never_the_ledger_or_output(app: App) -> None:
    with_secret = app.reconfigure(lambda text: text.replace(
        "    env:\n      APP_VERSION: staging", "    secrets: [DB_PASSWORD]\n    env:\n      APP_VERSION: staging"),
        on="v1")
    secret = "hunter2-very-secret-value"
    missing = app.run("deploy", "staging", with_secret)
    assert missing.code == 2 and "DB_PASSWORD" in missing.err
    result = app.ok("deploy", "staging", with_secret, DB_PASSWORD=secret)
    assert secret not in result.out + result.err
    assert f"DB_PASSWORD={secret}" in _container_env(_serving_container(app, "staging"))
    ledger_files = list(app.home.glob("ledger.db*"))  # the database and its write-ahead log
    assert ledger_files
    assert all(secret.encode() not in f.read_bytes() for f in ledger_files)
    assert secret not in app.ok("history", "--json").out + app.ok("status", "--json").out


def _containers(app: App) -> list[str]:
    out = subprocess.run(["podman", "ps", "-aq", "--filter", "label=conveyor.app=hello"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def _serving_container(app: App, env: str) -> str:
    names = subprocess.run(
        ["podman", "ps", "-q", "--filter", "label=conveyor.app=hello", "--filter", f"label=conveyor.env={env}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert len(names) == 1, names
    return names[0]


def _container_env(container: str) -> list[str]:
    out = subprocess.run(["podman", "inspect", "--format", "{{json .Config.Env}}", container],
                         capture_output=True, text=True, check=True).stdout
    import json

    return list(json.loads(out))


def test_run_a_one_off_command_with_the_live_release(app: App) -> None:
    assert app.run("run", "staging", "--", "/bin/busybox", "true").code == 2  # nothing deployed yet
    app.ok("deploy", "staging", "v1")
    result = app.run("run", "staging", "--", "/bin/busybox", "sh", "-c",
                     "cat /www/index.html; echo env=$APP_VERSION; exit 4")
    assert result.code == 4  # the command's own exit code, passed through
    assert 'id="version">v1<' in result.out and "env=staging" in result.out
    assert _containers(app) == [_serving_container(app, "staging")]  # the one-off container is gone


def test_a_one_off_command_is_held_to_blocks_and_recorded(app: App) -> None:
    import sqlite3

    app.ok("deploy", "staging", "v1")
    app.ok("lock", "--app-wide", "--reason", "incident 9")
    refused = app.run("run", "staging", "--", "/bin/busybox", "true")
    assert refused.code == 3 and "incident 9" in refused.err
    assert app.run("run", "--force", "staging", "--", "/bin/busybox", "true").code == 2  # --force needs --reason
    forced = app.run("run", "--force", "--reason", "read the logs", "staging", "--", "/bin/busybox", "sh", "-c",
                     "exit 5")
    assert forced.code == 5
    with sqlite3.connect(app.home / "ledger.db") as db:
        rows = db.execute("SELECT status, message, data FROM events WHERE step = 'run' ORDER BY id").fetchall()
    assert [status for status, _, _ in rows] == ["started", "failed"]  # the refused run ran nothing
    finished = json.loads(rows[-1][2])
    assert finished["exit_code"] == 5 and finished["duration_s"] >= 0 and finished["forced"] is True
    assert finished["reason"] == "read the logs" and finished["actor"] == "Sample Dev <dev@example.com>"
    assert finished["command"] == ["/bin/busybox", "sh", "-c", "exit 5"] and "incident 9" in finished["overrode"][0]


def test_an_interactive_one_off_command_reads_the_callers_input(app: App) -> None:
    app.ok("deploy", "staging", "v1")
    proc = subprocess.run([CONVEYOR, "run", "-i", "staging", "--", "/bin/busybox", "tr", "a-z", "A-Z"],
                          cwd=app.repo, env=app.env(), input="hello from stdin\n", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HELLO FROM STDIN" in proc.stdout
    assert _containers(app) == [_serving_container(app, "staging")]


def test_the_main_job_on_a_postgresql_ledger(app: App, postgres_server: object) -> None:
    import psycopg

    from devstack import Postgres

    assert isinstance(postgres_server, Postgres)
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute('CREATE DATABASE "e2e_main_job"')
    app.extra_env["CONVEYOR_DATABASE_URL"] = postgres_server.url.rsplit("/", 1)[0] + "/e2e_main_job"
    app.ok("deploy", "staging", "v1")
    app.ok("promote")
    app.ok("deploy", "staging", "v2")
    app.ok("rollback", "staging")
    assert sorted((r["env"], r["number"], r["kind"]) for r in app.history()) == [
        ("production", 1, "promote"), ("staging", 1, "deploy"), ("staging", 2, "deploy"), ("staging", 3, "rollback"),
    ]
    assert not (app.home / "ledger.db").exists()  # everything went to PostgreSQL
    with psycopg.connect(app.extra_env["CONVEYOR_DATABASE_URL"]) as conn:
        count = conn.execute("SELECT count(*) FROM releases WHERE status = 'succeeded'").fetchone()
    assert count == (4,)
    assert app.serves("staging") == "v1" and app.serves("production") == "v1"
