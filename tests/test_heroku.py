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


def _heroku_environments(fake: FakeHeroku, registry_host: str, staging_version: str = "staging") -> object:
    def target(app: str) -> str:
        return (f"    target: {{type: heroku, app: {app}, api_url: '{fake.url}', registry: '{registry_host}', "
                "registry_insecure: true, release_phase: true, poll_interval: 0.02, timeout: 30}\n"
                "    tasks: []\n")

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


def _ship(app: App, heroku: FakeHeroku, registry: AuthRegistry, version: str = "staging") -> tuple[str, str]:
    """Commit a Heroku config (with staging's APP_VERSION), build it; returns (sha, digest)."""
    sha = app.reconfigure(_heroku_environments(heroku, registry.host, version), on="main",  # type: ignore[arg-type]
                          message=f"heroku {version}")
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
