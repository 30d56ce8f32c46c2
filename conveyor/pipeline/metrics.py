"""Prometheus metrics of the pipeline, computed from the ledger at scrape time (the ledger is the truth, and
every replica of a server shares it), for `/metrics` and `conveyor metrics` alike.

`LedgerMetrics` keeps running tallies of finished releases: its first scrape aggregates every release once
(one grouped pass in SQL), each later one only the ids recorded since, plus the few that were unfinished
last time (a finished release never changes again). Releases of the last `SETTLE_SECONDS` are read afresh
each scrape, so an id a PostgreSQL transaction had not yet committed is never skipped. Queue, leases and the
outbox are small and read whole. Delivery (DORA) figures are the expensive part: computed at most every
`DELIVERY_MAX_AGE` seconds, in a background thread on a server so no scrape waits for them.

Step durations are observed in the process that runs the steps (`observe_step`, a no-op until a server
registers an observer), so they appear on `/metrics` only. Nothing here imports prometheus_client before a
collector is built: `conveyor --help` and the pipeline never load it.

Labels stay bounded: app, env, kind, outcome, step, queue lane; a SHA only on the live-release info series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.ledger.metrics_store import ReleaseRow, Tally
    from conveyor.ledger.store import Ledger

DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
STEP_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SETTLE_SECONDS = 60.0
DELIVERY_DAYS = 30
DELIVERY_MAX_AGE = 60.0

_step_observers: list[Callable[[str, str, float], None]] = []


def observe_step(step: str, outcome: str, seconds: float) -> None:
    """A release step ended (pipeline/release.py); a server's metrics count it, elsewhere nothing happens."""
    for observer in _step_observers:
        observer(step_label(step), outcome, seconds)


def add_step_observer(observer: Callable[[str, str, float], None]) -> None:
    _step_observers.append(observer)


def step_label(step: str) -> str:
    """`task:migrate` is the step `task`: task names are the config's, and labels stay few."""
    return step.split(":", 1)[0]


# ------------------------------------------------------------------------------------------ tallies


@dataclass
class _Tally:
    count: int = 0
    seconds: float = 0.0
    within: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))

    def add(self, count: int, seconds: float, within: tuple[int, ...] | list[int]) -> None:
        self.count += count
        self.seconds += seconds
        self.within = [mine + theirs for mine, theirs in zip(self.within, within, strict=True)]


@dataclass(frozen=True)
class Live:
    number: int
    kind: str
    sha: str
    finished_at: datetime | None


@dataclass
class Snapshot:
    """What one scrape shows, independent of how it is rendered."""

    outcomes: dict[tuple[str, str, str, str], _Tally]  # (app, env, kind, outcome)
    live: dict[tuple[str, str], Live]  # (app, env)
    queued: list[tuple[str, str, int, float]]  # (app, env, depth, oldest wait in seconds)
    leases_held: int
    leases_expired: int
    outbox: list[tuple[str, int, int, float]]  # (kind, backlog, stopped, oldest age in seconds)
    delivery: dict[str, dict[str, Any]]  # app ("" = every app) -> DeliveryMetrics.as_dict()


class LedgerTallies:
    """Running totals of the ledger's finished releases, and each app+env's live release."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._lock = threading.Lock()
        self._through = 0  # every release with an id up to here is folded in, or in _unfinished
        self._unfinished: set[int] = set()
        self._outcomes: dict[tuple[str, str, str, str], _Tally] = {}
        self._live: dict[tuple[str, str], Live] = {}

    def read(self, now: datetime) -> tuple[dict[tuple[str, str, str, str], _Tally], dict[tuple[str, str], Live]]:
        from conveyor.ledger import metrics_store as q

        with self._lock:
            settled = max(q.settled_id(self.ledger, now - timedelta(seconds=SETTLE_SECONDS)), self._through)
            if settled > self._through:
                for tally in q.tallies(self.ledger, self._through, settled, DURATION_BUCKETS):
                    self._fold_tally(tally)
                for row in q.latest_succeeded(self.ledger, self._through, settled):
                    self._fold_live(self._live, row)
                self._unfinished.update(q.unfinished_ids(self.ledger, self._through, settled))
                self._through = settled
            for row in q.rows_by_id(self.ledger, sorted(self._unfinished)):
                if row.status not in q.UNFINISHED:
                    self._unfinished.discard(row.id)
                    self._fold_row(self._outcomes, self._live, row)
            outcomes = {key: _Tally(t.count, t.seconds, list(t.within)) for key, t in self._outcomes.items()}
            live = dict(self._live)
        for row in q.rows_after(self.ledger, settled):  # the newest: counted for this scrape only
            if row.status not in q.UNFINISHED:
                self._fold_row(outcomes, live, row)
        return outcomes, live

    def _fold_tally(self, tally: Tally) -> None:
        key = (tally.app, tally.env, tally.kind, tally.status)
        self._outcomes.setdefault(key, _Tally()).add(tally.count, tally.seconds, tally.within)

    @staticmethod
    def _fold_row(outcomes: dict[tuple[str, str, str, str], _Tally], live: dict[tuple[str, str], Live],
                  row: ReleaseRow) -> None:
        seconds = (row.finished_at - row.created_at).total_seconds() if row.finished_at else 0.0
        within = [1 if seconds <= bound else 0 for bound in DURATION_BUCKETS]
        outcomes.setdefault((row.app, row.env, row.kind, row.status), _Tally()).add(1, seconds, within)
        if row.status == "succeeded":
            LedgerTallies._fold_live(live, row)

    @staticmethod
    def _fold_live(live: dict[tuple[str, str], Live], row: ReleaseRow) -> None:
        current = live.get((row.app, row.env))
        if current is None or row.number > current.number:
            live[(row.app, row.env)] = Live(row.number, row.kind, row.sha, row.finished_at)


# ------------------------------------------------------------------------------------------ delivery


class _Delivery:
    """Delivery (DORA) figures per app and for every app, at most DELIVERY_MAX_AGE seconds old. With
    `background`, a stale value is served while a thread computes the next (a scrape never waits)."""

    def __init__(self, ledger: Ledger, *, background: bool) -> None:
        self.ledger = ledger
        self.background = background
        self._value: dict[str, dict[str, Any]] | None = None
        self._at = 0.0
        self._computing = False
        self._lock = threading.Lock()

    def get(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            fresh = self._value is not None and time.monotonic() - self._at < DELIVERY_MAX_AGE
            if fresh or self._computing:
                return self._value or {}
            self._computing = True
            if self._value is not None and self.background:
                threading.Thread(target=self._refresh, name="delivery-metrics", daemon=True).start()
                return self._value
        self._refresh()
        return self._value or {}

    def _refresh(self) -> None:
        try:
            value = delivery_by_app(self.ledger)
        except Exception:  # a scrape still shows everything else; the next one tries again
            import logging

            logging.getLogger("conveyor.server").exception("cannot compute delivery metrics")
            value = self._value or {}
        with self._lock:
            self._value, self._at, self._computing = value, time.monotonic(), False


def delivery_by_app(ledger: Ledger) -> dict[str, dict[str, Any]]:
    """Each app's delivery figures over its last stage, and the organisation's ("")."""
    from conveyor.pipeline.apps import stages_by_app
    from conveyor.pipeline.delivery import delivery_metrics

    last_stages = {app: stages[-1] for app, stages in stages_by_app(ledger).items() if stages}
    if not last_stages:
        return {}
    figures = {"": delivery_metrics(ledger, last_stages, DELIVERY_DAYS).as_dict()}
    for app, stage in last_stages.items():
        figures[app] = delivery_metrics(ledger, {app: stage}, DELIVERY_DAYS).as_dict()
    return figures


# ------------------------------------------------------------------------------------------ snapshot


class LedgerMetrics:
    """Everything a scrape shows that the ledger knows; one per process, reused by every scrape."""

    def __init__(self, ledger: Ledger, *, background: bool = False) -> None:
        self.ledger = ledger
        self.tallies = LedgerTallies(ledger)
        self.delivery = _Delivery(ledger, background=background)

    def snapshot(self, now: datetime | None = None) -> Snapshot:
        from conveyor.ledger import metrics_store as q

        now = now or datetime.now(UTC)
        outcomes, live = self.tallies.read(now)
        expiries = q.lease_expiries(self.ledger)
        return Snapshot(
            outcomes=outcomes, live=live,
            queued=[(app, lane, depth, max((now - oldest).total_seconds(), 0.0))
                    for app, lane, depth, oldest in q.queued(self.ledger)],
            leases_held=sum(1 for when in expiries if when >= now),
            leases_expired=sum(1 for when in expiries if when < now),
            outbox=[(kind, backlog, stopped, max((now - oldest).total_seconds(), 0.0))
                    for kind, backlog, stopped, oldest in q.undelivered(self.ledger)],
            delivery=self.delivery.get(),
        )


class Collector:
    """A prometheus_client custom collector over LedgerMetrics: the families are built at each scrape."""

    def __init__(self, metrics: LedgerMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []  # registered without a trial collect (that would scrape the ledger at start-up)

    def collect(self) -> Iterator[Any]:
        yield from families(self.metrics.snapshot())


def families(snap: Snapshot) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    operations = CounterMetricFamily("conveyor_operations", "Finished releases (deploy, promote, rollback, "
                                     "hotfix) by outcome: succeeded, failed, interrupted.",
                                     labels=["app", "env", "kind", "outcome"])
    by_env_kind: dict[tuple[str, str], Any] = {}
    for (app, env, kind, outcome), tally in sorted(snap.outcomes.items()):
        operations.add_metric([app, env, kind, outcome], tally.count)
        by_env_kind.setdefault((env, kind), _Tally()).add(tally.count, tally.seconds, tally.within)
    yield operations
    durations = HistogramMetricFamily("conveyor_operation_duration_seconds", "Seconds from a release's record "
                                      "to its outcome (tasks, deploy and verification).", labels=["env", "kind"])
    for (env, kind), tally in sorted(by_env_kind.items()):
        buckets = [(_bound(bound), count) for bound, count in zip(DURATION_BUCKETS, tally.within, strict=True)]
        durations.add_metric([env, kind], [*buckets, ("+Inf", tally.count)], tally.seconds)
    yield durations
    yield from _live_families(snap)
    yield from _queue_families(snap)
    yield from _delivery_families(snap)


def _bound(bound: float) -> str:
    return f"{bound:g}" if bound != int(bound) else f"{bound:.1f}"


def _live_families(snap: Snapshot) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    info = GaugeMetricFamily("conveyor_live_release_info", "1 for the release each app+env serves now.",
                             labels=["app", "env", "number", "kind", "sha"])
    stamp = GaugeMetricFamily("conveyor_live_release_timestamp_seconds", "When the live release of each "
                              "app+env finished (Unix time): a dashboard's release marker.", labels=["app", "env"])
    for (app, env), live in sorted(snap.live.items()):
        info.add_metric([app, env, str(live.number), live.kind, live.sha], 1)
        if live.finished_at is not None:
            stamp.add_metric([app, env], live.finished_at.timestamp())
    yield info
    yield stamp


def _queue_families(snap: Snapshot) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    depth = GaugeMetricFamily("conveyor_queue_depth", "Operations waiting in the server's queue, per lane "
                              "(env \"\" is an app's build lane).", labels=["app", "env"])
    wait = GaugeMetricFamily("conveyor_queue_oldest_wait_seconds", "How long the oldest waiting operation of "
                             "each lane has waited.", labels=["app", "env"])
    for app, env, count, seconds in sorted(snap.queued):
        depth.add_metric([app, env], count)
        wait.add_metric([app, env], seconds)
    yield depth
    yield wait
    leases = GaugeMetricFamily("conveyor_leases", "Environment leases in the ledger: held (heartbeating) or "
                               "expired (its holder stopped; the next operation takes it over).", labels=["state"])
    leases.add_metric(["held"], snap.leases_held)
    leases.add_metric(["expired"], snap.leases_expired)
    yield leases
    backlog = GaugeMetricFamily("conveyor_outbox_backlog", "Undelivered outbox items (git refs, announcements) "
                                "by kind; `stopped` ones wait for a person.", labels=["kind", "state"])
    age = GaugeMetricFamily("conveyor_outbox_oldest_age_seconds", "Age of the oldest undelivered item, by kind.",
                            labels=["kind"])
    for kind, count, stopped, seconds in sorted(snap.outbox):
        backlog.add_metric([kind, "retrying"], count - stopped)
        backlog.add_metric([kind, "stopped"], stopped)
        age.add_metric([kind], seconds)
    yield backlog
    yield age


DELIVERY_GAUGES = (
    ("deployment_frequency", "conveyor_delivery_deployment_frequency_per_day",
     "Deployments per day to the last stage over the window."),
    ("lead_time_seconds", "conveyor_delivery_lead_time_seconds",
     "Median commit time to success in the last stage over the window."),
    ("change_failure_rate", "conveyor_delivery_change_failure_rate",
     "Share of last-stage deployments that failed or were rolled back (0..1)."),
    ("time_to_restore_seconds", "conveyor_delivery_time_to_restore_seconds",
     "Median time from a failure to the next good release over the window."),
)


def _delivery_families(snap: Snapshot) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    for key, name, text in DELIVERY_GAUGES:
        gauge = GaugeMetricFamily(name, f"{text} Window {DELIVERY_DAYS} days; app=\"\" is every app.",
                                  labels=["app"])
        for app, figures in sorted(snap.delivery.items()):
            if figures.get(key) is not None:
                gauge.add_metric([app], float(figures[key]))
        yield gauge


def exposition(ledger: Ledger) -> bytes:
    """The text exposition of the ledger's metrics, once (`conveyor metrics`, for a textfile collector)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(LedgerMetrics(ledger)))
    return generate_latest(registry)
