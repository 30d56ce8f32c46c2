"""Metrics (issue 16, point 1): a real Prometheus scrapes a real `conveyor server` through a deploy, a
failure and a rollback, and PromQL sees the counters, the histogram and the live-release series change;
`/metrics` needs a read token (or CONVEYOR_METRICS_PUBLIC=1); `conveyor metrics` prints the same ledger
series without a server; and the ledger's running tallies (an aggregate per id range, then the rows since)
agree with counting each row, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e import App
from tests.prometheus import Prometheus, Sample
from tests.server import ServerProcess


@pytest.fixture
def scraped(app: App, tmp_path: Path) -> Iterator[tuple[ServerProcess, Prometheus]]:
    server = ServerProcess.start(app)
    prometheus = None
    try:
        server.add_app()
        prometheus = Prometheus.start(tmp_path / "prometheus", [server.url.removeprefix("http://")],
                                      server.token("prometheus", "read"))
        yield server, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        server.stop()


def value(samples: list[Sample]) -> float | None:
    return samples[0][1] if len(samples) == 1 else None


def equals(expected: float) -> object:
    return lambda samples: value(samples) == expected


def test_prometheus_sees_a_deploy_a_failure_and_a_rollback(scraped: tuple[ServerProcess, Prometheus]) -> None:
    server, prometheus = scraped
    app = server.app
    prometheus.wait_for('up{job="conveyor"}', equals(1))  # scraped with the read token
    deploys = 'conveyor_operations_total{app="hello",env="staging",kind="deploy",outcome="%s"}'

    server.cli_ok("deploy", "staging", "v1")
    prometheus.wait_for(deploys % "succeeded", equals(1))
    (live, _), = prometheus.wait_for('conveyor_live_release_info{app="hello",env="staging"}')
    assert (live["number"], live["kind"], live["sha"]) == ("1", "deploy", app.git("rev-parse", "v1"))

    server.cli_ok("deploy", "staging", "v2")
    assert server.cli("deploy", "staging", "broken").code == 1
    prometheus.wait_for(deploys % "failed", equals(1))
    assert value(prometheus.query(deploys % "succeeded")) == 2
    (live, _), = prometheus.query('conveyor_live_release_info{app="hello",env="staging"}')
    assert live["number"] == "2"  # a failure replaces nothing

    server.cli_ok("rollback", "staging", "--reason", "back to v1")
    rolled = prometheus.wait_for('conveyor_live_release_info{app="hello",env="staging",kind="rollback"}')
    assert (rolled[0][0]["number"], rolled[0][0]["sha"]) == ("4", app.git("rev-parse", "v1"))
    assert value(prometheus.query('conveyor_operations_total{kind="rollback",outcome="succeeded"}')) == 1
    stamp = value(prometheus.query('conveyor_live_release_timestamp_seconds{app="hello",env="staging"}'))
    finished = datetime.fromisoformat(app.history("staging")[0]["finished_at"]).timestamp()
    assert stamp == pytest.approx(finished, abs=0.01)

    # The histogram: three deploys (the failed one too), cumulative buckets ending at +Inf = _count.
    histogram = 'conveyor_operation_duration_seconds_bucket{env="staging",kind="deploy"}'
    buckets = sorted((float(labels["le"]), count) for labels, count in prometheus.query(histogram))
    assert buckets[-1] == (float("inf"), 3)
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)
    assert value(prometheus.query('conveyor_operation_duration_seconds_count{env="staging",kind="deploy"}')) == 3
    median = prometheus.query('histogram_quantile(0.5, conveyor_operation_duration_seconds_bucket'
                              '{env="staging",kind="deploy"})')
    assert 0 < value(median) <= 1800  # type: ignore[operator]
    # What this replica observed itself: its workers' steps and its requests.
    assert value(prometheus.query('conveyor_step_duration_seconds_count{step="deploy",outcome="failed"}')) == 1
    assert value(prometheus.query('sum(conveyor_step_duration_seconds_count{step="deploy"})')) == 4
    requests = prometheus.query('conveyor_http_request_duration_seconds_count{route="/api/apps/{app}/deploy"}')
    assert sum(count for _, count in requests) == 3
    assert prometheus.query('conveyor_leases{state="held"}') and prometheus.query("conveyor_outbox_backlog") == []


def scrape(server: ServerProcess, token: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(server.url + "/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_need_a_read_token_unless_public_and_the_cli_prints_the_same_series(app: App) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    server = ServerProcess.start(app)
    try:
        server.add_app()
        server.cli_ok("deploy", "staging", "v1")
        assert scrape(server, None)[0] == 401
        assert scrape(server, "cvy_not-a-token")[0] == 401
        status, served = scrape(server, server.token("prometheus", "read"))
        assert status == 200
    finally:
        server.stop()
    assert server.tokens["prometheus"] not in server.log.read_text()  # nor in the request log

    printed = app.ok("metrics").out
    families = {family.name: family for family in text_string_to_metric_families(printed)}
    (deploy,) = [s for s in families["conveyor_operations"].samples if s.labels["env"] == "staging"]
    assert (deploy.labels["outcome"], deploy.value) == ("succeeded", 1)
    assert "conveyor_http_request_duration_seconds" not in families  # a server's own: not in the ledger
    ledger_lines = [line for line in printed.splitlines()
                    if line.startswith(("conveyor_operations_total", "conveyor_live_release", "conveyor_operation_d"))]
    assert ledger_lines and set(ledger_lines) <= set(served.splitlines())

    target = app.home / "textfile" / "conveyor.prom"
    target.parent.mkdir()
    app.ok("metrics", "--output", str(target))
    assert target.read_text() == printed
    bad = app.run("metrics", "--output", str(app.home / "missing-dir" / "x.prom"))
    assert bad.code == 2 and "Traceback" not in bad.err and len(bad.err.strip().splitlines()) == 1

    public = ServerProcess.start(app, "public", CONVEYOR_METRICS_PUBLIC="1")
    try:
        assert scrape(public, None)[0] == 200
    finally:
        public.stop()


def record(ledger: object, env: str, kind: str, status: str) -> None:
    release = ledger.create_release(  # type: ignore[attr-defined]
        app="bench", env=env, kind=kind, sha="a" * 40, digest="sha256:" + "b" * 64, image="r@sha256:" + "b" * 64,
        spec={}, config_digest="c", actor="t", origin="t", reason="", forced=False, previous_number=None,
        source_release_id=None)
    if status != "pending":
        ledger.update_release(release.id, status=status, finished=True)  # type: ignore[attr-defined]


@pytest.mark.postgres
def test_the_running_tallies_agree_with_counting_every_row(database_url: str) -> None:
    from conveyor.ledger import open_ledger
    from conveyor.pipeline.metrics import LedgerMetrics

    ledger = open_ledger(database_url)
    try:
        for env, kind, status in [("staging", "deploy", "succeeded"), ("staging", "deploy", "failed"),
                                  ("production", "promote", "succeeded"), ("staging", "deploy", "pending"),
                                  ("staging", "rollback", "succeeded"), ("production", "hotfix", "interrupted")]:
            record(ledger, env, kind, status)
        fresh = LedgerMetrics(ledger).snapshot()  # every row within the settling window: read row by row
        later = datetime.now(UTC) + timedelta(minutes=5)
        settled_metrics = LedgerMetrics(ledger)
        settled = settled_metrics.snapshot(now=later)  # every row settled: one aggregate per range, in SQL
        for path in ("outcomes", "durations"):
            mine, theirs = getattr(settled.tallies, path), getattr(fresh.tallies, path)
            assert {k: (t.count, t.within) for k, t in mine.items()} == \
                {k: (t.count, t.within) for k, t in theirs.items()}
            for key, tally in mine.items():  # SQLite's julianday() is precise to a millisecond or so
                assert tally.seconds == pytest.approx(theirs[key].seconds, abs=0.005)
        assert settled.tallies.live == fresh.tallies.live
        counts = {key: tally.count for key, tally in settled.tallies.outcomes.items()}
        assert counts == {("bench", "staging", "deploy", "succeeded"): 1, ("bench", "staging", "deploy", "failed"): 1,
                          ("bench", "production", "promote", "succeeded"): 1,
                          ("bench", "staging", "rollback", "succeeded"): 1,
                          ("bench", "production", "hotfix", "interrupted"): 1}
        assert settled.tallies.live[("bench", "staging")].number == 4  # the rollback, the highest succeeded
        # The pending one finishes later: the next scrape folds it in (it was remembered as unfinished).
        pending = ledger.list_releases("bench", "staging", limit=10)[1]
        assert pending.status == "pending"
        ledger.update_release(pending.id, status="succeeded", finished=True)
        again = settled_metrics.snapshot(now=later)
        assert again.tallies.outcomes[("bench", "staging", "deploy", "succeeded")].count == 2
        assert again.tallies.live[("bench", "staging")].number == 4
    finally:
        ledger.close()
