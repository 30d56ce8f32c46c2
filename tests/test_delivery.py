"""Delivery metrics from the ledger: each key counted as pipeline/delivery.py says, on SQLite and PostgreSQL,
and a real deploy records the commit time they are measured from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conveyor.ledger.store import open_store
from conveyor.pipeline.delivery import delivery_metrics, last_stages
from tests.e2e import App

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _release(ledger, app, env, kind, status, *, committed, finished, previous=None):
    release = ledger.create_release(
        app=app, env=env, kind=kind, sha="a" * 40, digest="sha256:" + "0" * 64, image="r/x@sha256:" + "0" * 64,
        spec={}, config_digest="c", actor="t", origin="test", reason="", forced=False, previous_number=previous,
        source_release_id=None, committed_at=committed)
    ledger.update_release(release.id, status=status, finished=True, finished_at=finished)
    return release.number


def test_the_four_keys_count_changes_at_the_last_stage(database_url: str) -> None:
    ledger = open_store(database_url)
    hour = timedelta(hours=1)
    day = timedelta(days=1)
    # shop/production: two good deploys, one that failed, one rolled back, and the rollback that repaired it.
    _release(ledger, "shop", "production", "deploy", "succeeded", committed=NOW - 3 * day - 2 * hour,
             finished=NOW - 3 * day)                                                     # 1: lead 2 h
    _release(ledger, "shop", "production", "deploy", "failed", committed=NOW - 2 * day - hour,
             finished=NOW - 2 * day)                                                     # 2: failure
    _release(ledger, "shop", "production", "promote", "succeeded", committed=NOW - 2 * day - hour,
             finished=NOW - 2 * day + 30 * 60 * timedelta(seconds=1), previous=1)         # 3: restores 2 in 30 min
    _release(ledger, "shop", "production", "deploy", "succeeded", committed=NOW - day - 4 * hour,
             finished=NOW - day, previous=3)                                             # 4: rolled back below
    _release(ledger, "shop", "production", "rollback", "succeeded", committed=None,
             finished=NOW - day + 10 * 60 * timedelta(seconds=1), previous=4)             # 5: restores 4 in 10 min
    # Not counted: another stage, a release before the window, an app not asked about.
    _release(ledger, "shop", "staging", "deploy", "succeeded", committed=NOW - day, finished=NOW - day)
    _release(ledger, "blog", "production", "deploy", "succeeded", committed=NOW - 40 * day, finished=NOW - 40 * day)
    _release(ledger, "wiki", "production", "deploy", "failed", committed=NOW - day, finished=NOW - day)

    shop = delivery_metrics(ledger, {"shop": "production", "blog": "production"}, 7, now=NOW)
    assert shop.deployments == 2  # 1 and 3; 2 failed, 4 was rolled back, 5 is a rollback
    assert shop.deployment_frequency == round(2 / 7, 3)
    assert shop.change_failure_rate == 0.5  # 2 of the 4 changes
    assert shop.lead_time_seconds == (2 * 3600 + 1 * 3600 + 30 * 60) / 2  # median of 2 h and 1.5 h
    assert shop.time_to_restore_seconds == (30 * 60 + 10 * 60) / 2
    assert len(shop.daily) == 7 and shop.daily[-1].day == NOW.date()
    by_day = {point.day: (point.deployments, point.failures) for point in shop.daily}
    assert by_day[(NOW - 3 * day).date()] == (1, 0)
    assert by_day[(NOW - 2 * day).date()] == (1, 1)
    assert by_day[(NOW - day).date()] == (0, 1)
    assert sum(point.deployments for point in shop.daily) == 2

    wider = delivery_metrics(ledger, {"shop": "production", "blog": "production", "wiki": "production"}, 90, now=NOW)
    assert wider.deployments == 3 and wider.change_failure_rate == round(3 / 6, 4)
    assert wider.as_dict()["daily"][-1]["day"] == NOW.date().isoformat()

    empty = delivery_metrics(ledger, {}, 30, now=NOW)
    assert (empty.deployments, empty.change_failure_rate, empty.lead_time_seconds) == (0, None, None)
    ledger.close()


def test_last_stages_takes_each_apps_last_environment() -> None:
    stages = {"shop": ["staging", "production"], "new": [], "blog": ["prod"]}
    assert last_stages(stages) == {"shop": "production", "blog": "prod"}
    assert last_stages(stages, "shop") == {"shop": "production"}
    assert last_stages(stages, "new") == {}


def test_a_deploy_records_its_commits_time_and_delivery_reads_it(app: App) -> None:
    app.ok("deploy", "staging", "HEAD")
    stamp = app.git("show", "-s", "--format=%ct", "HEAD").strip()
    ledger = open_store(app.ledger_url)
    [release] = ledger.list_releases("hello", "staging")
    assert release.committed_at == datetime.fromtimestamp(int(stamp), UTC)
    ledger.close()
    assert app.ok("delivery", "--json").json()["deployments"] == 0  # nothing in production yet
    app.ok("promote", "staging", "production")
    shown = app.ok("delivery", "--days", "7", "--json").json()
    assert shown["deployments"] == 1 and shown["days"] == 7 and shown["lead_time_seconds"] >= 0
    text = app.ok("delivery").out
    assert "deployment frequency  0.03 a day (1 deployments)" in text and "change failure rate   0%" in text
