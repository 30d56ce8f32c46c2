"""The heroku target end to end through the real CLI, against the in-repo Platform API server
(tests/fakes/heroku.py) whose registry side is a real docker-registry behind basic auth (Heroku's:
user `_`, the API token as password). The artifact is built into the session's registry and copied
into each app's repositories by digest."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from conveyor.errors import OperationFailed
from tests.e2e import App
from tests.fakes.heroku import FakeHeroku
from tests.fakes.registries import AuthRegistry

TOKEN = "heroku-test-token-1d0e"


@pytest.fixture(scope="module")
def heroku_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    reg = AuthRegistry(tmp_path_factory.mktemp("heroku-registry"), "basic", {"_": TOKEN}).start()
    yield reg
    reg.stop()


@pytest.fixture
def heroku(heroku_registry: AuthRegistry) -> Iterator[FakeHeroku]:
    fake = FakeHeroku(TOKEN, heroku_registry.host, ("_", TOKEN)).start()
    fake.create_app("hello-staging")
    fake.create_app("hello-prod")
    yield fake
    fake.stop()


def _heroku_environments(fake: FakeHeroku, registry_host: str, staging_version: str = "staging",
                         tasks_as: str = "release-phase") -> object:
    """Both environments on Heroku apps. With `release-phase` they run no tasks of conveyor's (the image's
    release process is the release phase); with `one-off-dynos` the sample app's `migrate` task runs."""
    def target(app: str) -> str:
        return (f"    target: {{type: heroku, app: {app}, api_url: '{fake.url}', registry: '{registry_host}', "
                f"registry_insecure: true, tasks_as: {tasks_as}, poll_interval: 0.02, timeout: 30}}\n"
                + ("    tasks: []\n" if tasks_as == "release-phase" else ""))

    def change(text: str) -> str:
        head = text[: text.index("environments:")]
        return head + ("environments:\n  - name: staging\n" + target("hello-staging")
                       + f"    env: {{APP_VERSION: {staging_version}}}\n"
                       "  - name: production\n" + target("hello-prod") + "    env: {APP_VERSION: production}\n"
                       "    policy: {require_promotion_from: staging}\n")
    return change


@pytest.fixture
def heroku_app(app: App, heroku: FakeHeroku, heroku_registry: AuthRegistry) -> App:
    app.extra_env["HEROKU_API_KEY"] = TOKEN
    return app


def _ship(app: App, heroku: FakeHeroku, registry: AuthRegistry, version: str = "staging",
          tasks_as: str = "release-phase") -> tuple[str, str]:
    """Commit a Heroku config (with staging's APP_VERSION), build it; returns (sha, digest)."""
    change = _heroku_environments(heroku, registry.host, version, tasks_as)
    sha = app.reconfigure(change, on="main", message=f"heroku {version}")  # type: ignore[arg-type]
    return sha, app.ok("build", sha, "--json").json()["digest"]


def test_deploy_promote_rollback_carry_one_digest(heroku_app: App, heroku: FakeHeroku, heroku_registry) -> None:
    first, first_digest = _ship(heroku_app, heroku, heroku_registry)
    deployed = heroku_app.ok("deploy", "staging", first)
    staging = heroku.apps["hello-staging"]
    assert staging.formation == {"web": first_digest, "release": first_digest}
    assert staging.config_vars == {"APP_VERSION": "staging", "CONVEYOR_MANAGED_VARS": "APP_VERSION"}
    assert "release-phase: running release phase" in deployed.err  # the output stream, as it came
    assert "copied " + first_digest in deployed.err
    promoted = heroku_app.ok("promote")
    prod = heroku.apps["hello-prod"]
    assert prod.formation["web"] == first_digest and prod.config_vars["APP_VERSION"] == "production"
    assert "copied " + first_digest in promoted.err
    second, second_digest = _ship(heroku_app, heroku, heroku_registry, "staging-2")
    heroku_app.ok("deploy", "staging", second)
    heroku_app.ok("promote")
    assert prod.formation["web"] == second_digest
    back = heroku_app.ok("rollback", "production")
    assert "nothing to copy" in back.err  # the stored spec's copy: already in the app's registry
    assert prod.formation["web"] == first_digest and prod.config_vars["APP_VERSION"] == "production"
    status = heroku_app.status()
    assert status["production"]["drift"] is False and status["production"]["live"]["digest"] == first_digest
    history = heroku_app.history("production")
    assert [(r["number"], r["kind"], r["status"]) for r in history][:3] == [
        (3, "rollback", "succeeded"), (2, "promote", "succeeded"), (1, "promote", "succeeded")]


def test_a_failing_release_phase_changes_nothing_that_serves(heroku_app: App, heroku: FakeHeroku,
                                                            heroku_registry) -> None:
    first, first_digest = _ship(heroku_app, heroku, heroku_registry)
    heroku_app.ok("deploy", "staging", first)
    second, second_digest = _ship(heroku_app, heroku, heroku_registry, "staging")  # same config, new image
    heroku.behave(second_digest, release_output=["migrating", "ERROR: relation users already exists"],
                  release_succeeds=False)
    failed = heroku_app.run("deploy", "staging", second)
    assert failed.code == 1
    assert "failed in its release phase; the previous version is still serving" in failed.err
    assert "ERROR: relation users already exists" in failed.err
    assert heroku.apps["hello-staging"].formation["web"] == first_digest
    record = heroku_app.history("staging")[0]
    assert record["status"] == "failed" and record["digest"] == second_digest
    assert heroku_app.status()["staging"]["live"]["digest"] == first_digest


def test_a_crashed_dyno_rolls_back_to_the_stored_spec(heroku_app: App, heroku: FakeHeroku, heroku_registry) -> None:
    first, first_digest = _ship(heroku_app, heroku, heroku_registry)
    heroku_app.ok("deploy", "staging", first)
    second, second_digest = _ship(heroku_app, heroku, heroku_registry, "staging-crashing")
    heroku.behave(second_digest, dyno_state="crashed", dyno_log=["starting", "Error R10: failed to bind to $PORT"])
    failed = heroku_app.run("deploy", "staging", second)
    assert failed.code == 1
    assert "dyno web.1 of hello-staging crashed; automatically rolled back to staging#1" in failed.err
    assert "Error R10: failed to bind to $PORT" in failed.err
    staging = heroku.apps["hello-staging"]
    assert staging.formation["web"] == first_digest
    assert staging.config_vars["APP_VERSION"] == "staging"  # the stored spec's config vars, not the new ones
    assert [(r["number"], r["status"]) for r in heroku_app.history("staging")][:2] == [(2, "failed"), (1, "succeeded")]
    assert heroku_app.status()["staging"]["drift"] is False


def test_status_names_drift_in_formation_and_managed_config_vars(heroku_app: App, heroku: FakeHeroku,
                                                                heroku_registry) -> None:
    first, _ = _ship(heroku_app, heroku, heroku_registry)
    heroku_app.ok("deploy", "staging", first)
    assert heroku_app.status()["staging"]["drift"] is False
    staging = heroku.apps["hello-staging"]
    staging.config_vars["APP_VERSION"] = "edited-by-hand"
    staging.config_vars["UNMANAGED"] = "anything"  # not conveyor's: no drift
    row = heroku_app.status()["staging"]
    assert row["drift"] is True and "config var APP_VERSION differs" in row["serving"]
    staging.config_vars["APP_VERSION"] = "staging"
    staging.formation["web"] = "sha256:" + "0" * 64
    row = heroku_app.status()["staging"]
    assert row["drift"] is True and re.search("web runs sha256:0{64}", row["serving"])


def test_heroku_errors_are_one_readable_line(heroku_app: App, heroku: FakeHeroku, heroku_registry) -> None:
    first, _ = _ship(heroku_app, heroku, heroku_registry)
    wrong = heroku_app.run("deploy", "staging", first, HEROKU_API_KEY="not-the-token")
    assert wrong.code == 2 and "Heroku rejected the API token in $HEROKU_API_KEY" in wrong.err
    assert "Traceback" not in wrong.err and TOKEN not in wrong.err
    del heroku.apps["hello-staging"]
    missing = heroku_app.run("deploy", "staging", first)
    assert missing.code == 2 and "Couldn't find that app." in missing.err
    heroku.create_app("hello-staging")
    heroku.throttle(2, "/formation")
    throttled = heroku_app.ok("deploy", "staging", first)
    assert throttled.err.count("Heroku rate-limited PATCH /apps/hello-staging/formation; retrying after 0s") == 2
    assert heroku.apps["hello-staging"].formation["web"]


def test_a_formation_naming_an_image_the_registry_lacks_is_refused(heroku: FakeHeroku) -> None:
    from conveyor.targets.heroku.api import HerokuAPI

    api = HerokuAPI(heroku.url, TOKEN, "HEROKU_API_KEY", lambda _: None)
    with pytest.raises(OperationFailed, match="HTTP 422.*Couldn't find image sha256:0+ for process type web"):
        api.call("PATCH", "/apps/hello-staging/formation", docker=True,
                 body={"updates": [{"type": "web", "docker_image": "sha256:" + "0" * 64}]})
    with pytest.raises(OperationFailed, match="HTTP 422.*version=3.docker-releases"):
        api.call("PATCH", "/apps/hello-staging/formation",
                 body={"updates": [{"type": "web", "docker_image": "sha256:" + "0" * 64}]})
    api.close()


def test_promote_only_ships_the_chosen_digest_to_the_next_app(heroku_app: App, heroku: FakeHeroku,
                                                              heroku_registry) -> None:
    first, first_digest = _ship(heroku_app, heroku, heroku_registry)
    heroku_app.ok("deploy", "staging", first)
    second, second_digest = _ship(heroku_app, heroku, heroku_registry, "staging-2")
    heroku_app.ok("deploy", "staging", second)
    promoted = heroku_app.ok("promote", "--only", first)
    assert "--only" in promoted.err
    assert heroku.apps["hello-prod"].formation["web"] == first_digest != second_digest
    assert heroku.apps["hello-staging"].formation["web"] == second_digest
    record = heroku_app.history("production")[0]
    assert record["kind"] == "promote" and record["digest"] == first_digest


# ------------------------------------------------------------------ pre-deploy tasks as one-off dynos, run, retire

MIGRATE = ["/bin/busybox", "sh", "-c", "echo migrating schema for $$APP_VERSION"]  # as conveyor.yml.in has it


def _task_events(app: App, env: str, number: int) -> list[tuple[str, str]]:
    from conveyor.ledger import open_ledger

    ledger = open_ledger(app.ledger_url)
    try:
        release = ledger.get_release("hello", env, number)
        assert release is not None
        return [(e.step, e.message) for e in ledger.events(release_id=release.id) if e.step in ("task", "dyno")]
    finally:
        ledger.close()


def test_pre_deploy_tasks_run_as_one_off_dynos_of_the_new_image(heroku_app: App, heroku: FakeHeroku,
                                                                heroku_registry) -> None:
    first, first_digest = _ship(heroku_app, heroku, heroku_registry, tasks_as="one-off-dynos")
    heroku.behave(first_digest, one_off_output=["migrating schema for staging", "3 migrations applied"])
    deployed = heroku_app.ok("deploy", "staging", first)
    staging = heroku.apps["hello-staging"]
    [sent] = staging.dyno_requests
    command = "/bin/busybox sh -c 'echo migrating schema for $APP_VERSION'"
    assert sent == {"command": command, "type": "conveyor-task", "attach": False, "time_to_live": 300,
                    "env": {"APP_VERSION": "staging"}}  # the new release's config vars, on the dyno only
    assert staging.formation == {"conveyor-task": first_digest, "web": first_digest}
    assert staging.quantities["conveyor-task"] == 0 and staging.quantities["web"] == 1
    assert "task: 3 migrations applied" in deployed.err
    events = _task_events(heroku_app, "staging", 1)
    assert ("task", "migrating schema for staging") in events and ("task", "3 migrations applied") in events
    assert any(step == "dyno" and "one-off dyno run.1001 runs" in message for step, message in events)
    assert not staging.one_offs  # the dyno ended; its log was read to its exit line, not to the stream's end


def test_a_failing_task_fails_the_release_before_the_formation_changes(heroku_app: App, heroku: FakeHeroku,
                                                                       heroku_registry) -> None:
    first, first_digest = _ship(heroku_app, heroku, heroku_registry, tasks_as="one-off-dynos")
    heroku_app.ok("deploy", "staging", first)
    second, second_digest = _ship(heroku_app, heroku, heroku_registry, "staging-2", tasks_as="one-off-dynos")
    heroku.behave(second_digest, one_off_output=["migrating", "ERROR: column email already exists"],
                  one_off_status=3)
    staging = heroku.apps["hello-staging"]
    releases_before = len(staging.releases)
    failed = heroku_app.run("deploy", "staging", second)
    assert failed.code == 1 and "Traceback" not in failed.err
    assert "task migrate exited with 3 (one-off dyno on hello-staging)" in failed.err
    assert "ERROR: column email already exists" in failed.err
    assert staging.formation["web"] == first_digest  # the serving type was never touched
    assert staging.formation["conveyor-task"] == second_digest  # the task's image, scaled to 0
    assert staging.config_vars["APP_VERSION"] == "staging"  # not staging-2: the config vars were not set either
    assert len(staging.releases) == releases_before + 1  # only the task image's release
    record = heroku_app.history("staging")[0]
    assert record["number"] == 2 and record["status"] == "failed" and record["digest"] == second_digest
    status = heroku_app.status()["staging"]
    assert status["live"]["digest"] == first_digest and status["drift"] is False
    assert ("task", "ERROR: column email already exists") in _task_events(heroku_app, "staging", 2)


def test_release_phase_mode_refuses_tasks_of_conveyors(heroku_app: App, heroku: FakeHeroku, heroku_registry) -> None:
    def with_tasks(text: str) -> str:
        return _heroku_environments(heroku, heroku_registry.host)(text).replace("    tasks: []\n", "")  # type: ignore[operator]

    sha = heroku_app.reconfigure(with_tasks, on="main")
    refused = heroku_app.run("deploy", "staging", sha)
    assert refused.code == 2 and "Traceback" not in refused.err
    assert "with `tasks_as: release-phase` Heroku runs the image's own command" in refused.err
    assert not heroku.apps["hello-staging"].releases


def test_run_is_a_one_off_dyno_of_the_live_release(heroku_app: App, heroku: FakeHeroku, heroku_registry) -> None:
    first, first_digest = _ship(heroku_app, heroku, heroku_registry)
    heroku_app.ok("deploy", "staging", first)
    heroku.behave(first_digest, one_off_output=["42 users"], one_off_status=0)
    ran = heroku_app.run("run", "staging", "--", "/bin/busybox", "sh", "-c", "echo $((6*7)) users")
    assert ran.code == 0, ran.err
    assert ran.out.strip().splitlines() == ["42 users"]
    staging = heroku.apps["hello-staging"]
    assert staging.dyno_requests[-1] == {"command": "/bin/busybox sh -c 'echo $((6*7)) users'", "type": "web",
                                         "attach": False, "time_to_live": 3600}
    heroku.behave(first_digest, one_off_output=["no such table"], one_off_status=4)
    failed = heroku_app.run("run", "staging", "--", "false")
    assert failed.code == 4 and "no such table" in failed.out
    staging.formation["web"] = "sha256:" + "0" * 64  # drift: the web type no longer runs the live release
    drifted = heroku_app.run("run", "staging", "--", "true")
    assert drifted.code == 1 and "not the live release's " + first_digest in drifted.err
    assert len(staging.dyno_requests) == 2


def test_retire_scales_the_formation_to_zero_and_removes_the_managed_config_vars(
        heroku_app: App, heroku: FakeHeroku, heroku_registry) -> None:
    first, _ = _ship(heroku_app, heroku, heroku_registry)
    heroku_app.ok("deploy", "staging", first)
    staging = heroku.apps["hello-staging"]
    staging.config_vars["DATABASE_URL"] = "postgres://added-by-heroku"  # not conveyor's
    assert staging.dynos

    def without_staging(text: str) -> str:
        changed = _heroku_environments(heroku, heroku_registry.host)(text)  # type: ignore[operator]
        start = changed.index("  - name: staging\n")
        return changed[:start] + changed[changed.index("  - name: production\n"):].replace(
            "    policy: {require_promotion_from: staging}\n", "")

    heroku_app.reconfigure(without_staging, on="main", build=False)
    assert [row["env"] for row in heroku_app.ok("status", "--json").json()["retired_from_config"]] == ["staging"]
    retired = heroku_app.ok("retire", "staging", "--reason", "staging moves to a review app")
    assert "web scaled to 0" in retired.err
    assert staging.quantities["web"] == 0 and not staging.dynos
    assert staging.config_vars == {"DATABASE_URL": "postgres://added-by-heroku"}
    assert heroku_app.ok("status", "--json").json()["retired_from_config"] == []  # recorded as retired
