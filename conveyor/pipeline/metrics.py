"""Prometheus metrics of the pipeline, computed from the ledger at scrape time (the ledger is the truth, and
every replica of a server shares it), for `/metrics` and `conveyor metrics` alike.

`LedgerMetrics` keeps running tallies of finished releases: its first scrape aggregates every release once
(one grouped pass in SQL), each later one only the ids recorded since, plus the few that were unfinished
last time (a finished release never changes again). Releases of the last `SETTLE_SECONDS` are read afresh
each scrape, so an id a PostgreSQL transaction had not yet committed is never skipped. Queue, leases and the
outbox are small and read whole. Delivery (DORA) figures are the expensive part: computed at most every
`DELIVERY_MAX_AGE` seconds, in a background thread on a server so no scrape waits for them.

Step durations are observed in the process that runs the steps (`observe_step`, a no-op until a server
registers an observer), so they appear on `/metrics` only. Nothing here imports prometheus_client.

Labels stay bounded: app, env, kind, outcome, step, queue lane; a SHA only on the live-release info series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.ledger.metrics_store import Reader, ReleaseRow
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


@dataclass(frozen=True)
class _Tally:
    """Never changed once made (a snapshot being rendered shares them): adding makes a new one."""

    count: int = 0
    seconds: float = 0.0
    within: tuple[int, ...] = (0,) * len(DURATION_BUCKETS)

    def plus(self, count: int, seconds: float, within: tuple[int, ...]) -> _Tally:
        return _Tally(self.count + count, self.seconds + seconds,
                      tuple(mine + theirs for mine, theirs in zip(self.within, within, strict=True)))


EMPTY = _Tally()
Outcomes = dict[tuple[str, str, str, str], _Tally]  # (app, env, kind, outcome)
Durations = dict[tuple[str, str], _Tally]  # (env, kind): every app's, the histogram's labels


@dataclass(frozen=True)
class Live:
    number: int
    kind: str
    sha: str
    finished_at: datetime | None


@dataclass
class Tallies:
    outcomes: Outcomes
    durations: Durations
    live: dict[tuple[str, str], Live]  # (app, env)
    version: tuple[Any, ...] = ()  # equal versions hold equal figures (a render of one serves the other)

    def copy(self) -> Tallies:
        return Tallies(dict(self.outcomes), dict(self.durations), dict(self.live), self.version)

    def add(self, app: str, env: str, kind: str, status: str, count: int, seconds: float,
            within: tuple[int, ...]) -> None:
        key = (app, env, kind, status)
        self.outcomes[key] = self.outcomes.get(key, EMPTY).plus(count, seconds, within)
        self.durations[(env, kind)] = self.durations.get((env, kind), EMPTY).plus(count, seconds, within)

    def add_row(self, row: ReleaseRow) -> None:
        seconds = (row.finished_at - row.created_at).total_seconds() if row.finished_at else 0.0
        self.add(row.app, row.env, row.kind, row.status, 1, seconds,
                 tuple(1 if seconds <= bound else 0 for bound in DURATION_BUCKETS))
        if row.status == "succeeded":
            self.add_live(row)

    def add_live(self, row: ReleaseRow) -> None:
        current = self.live.get((row.app, row.env))
        if current is None or row.number > current.number:
            self.live[(row.app, row.env)] = Live(row.number, row.kind, row.sha, row.finished_at)


@dataclass
class Snapshot:
    """What one scrape shows, independent of how it is rendered."""

    tallies: Tallies
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
        self._kept = Tallies({}, {}, {})
        self._changes = 0  # counts every fold into _kept

    def read(self, q: Reader, now: datetime) -> Tallies:
        from conveyor.ledger.metrics_store import UNFINISHED

        with self._lock:
            settled = max(q.settled_id(now - timedelta(seconds=SETTLE_SECONDS)), self._through)
            if settled > self._through:
                for t in q.tallies(self._through, settled, DURATION_BUCKETS):
                    self._kept.add(t.app, t.env, t.kind, t.status, t.count, t.seconds, t.within)
                for row in q.latest_succeeded(self._through, settled):
                    self._kept.add_live(row)
                self._unfinished.update(q.unfinished_ids(self._through, settled))
                self._through = settled
                self._changes += 1
            for row in q.rows_by_id(sorted(self._unfinished)):
                if row.status not in UNFINISHED:
                    self._unfinished.discard(row.id)
                    self._kept.add_row(row)
                    self._changes += 1
            shown = self._kept.copy()
            changes = self._changes
        fresh = [row for row in q.rows_after(settled) if row.status not in UNFINISHED]
        for row in fresh:  # the newest: counted for this scrape only
            shown.add_row(row)
        shown.version = (id(self), changes, tuple((row.id, row.status) for row in fresh))
        return shown


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
            if self.background:  # until the first figures are in, a scrape shows none
                threading.Thread(target=self._refresh, name="delivery-metrics", daemon=True).start()
                return self._value or {}
        self._refresh()
        return self._value or {}

    def _refresh(self) -> None:
        try:
            value = delivery_by_app(self.ledger)
        except Exception as exc:  # a scrape still shows everything else; the next one tries again
            import logging

            logging.getLogger("conveyor.metrics").warning("cannot compute delivery metrics: %s: %s",
                                                          type(exc).__name__, exc)
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
        from conveyor.ledger.metrics_store import reading

        now = now or datetime.now(UTC)
        with reading(self.ledger) as q:
            tallies = self.tallies.read(q, now)
            expiries = q.lease_expiries()
            queued, undelivered = q.queued(), q.undelivered()
        return Snapshot(
            tallies=tallies,
            queued=[(app, lane, depth, max((now - oldest).total_seconds(), 0.0))
                    for app, lane, depth, oldest in queued],
            leases_held=sum(1 for when in expiries if when >= now),
            leases_expired=sum(1 for when in expiries if when < now),
            outbox=[(kind, backlog, stopped, max((now - oldest).total_seconds(), 0.0))
                    for kind, backlog, stopped, oldest in undelivered],
            delivery=self.delivery.get(),
        )


# ------------------------------------------------------------------------------------------ exposition
#
# The Prometheus text format (version 0.0.4), written here rather than through prometheus_client's generic
# renderer: that one validates and escapes every label name of every sample again (~40 µs a line on this
# machine), and a ledger of 500 apps × 3 environments has thousands of series. Label names are fixed here;
# values are escaped per the format (backslash, double quote, newline). The in-process metrics of a server
# are prometheus_client's own (server/metrics.py), and tests parse this output with prometheus_client's
# parser and query it through a real Prometheus.

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True))


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Lines:
    """Sample lines remembered from the last scrapes: a series whose value did not change is not formatted
    again (most of a big ledger's thousands of series change rarely). Bounded: forgotten when it outgrows
    the series in use several times over."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, tuple[str, ...]], tuple[float, str]] = {}
        self._used = 0

    def line(self, name: str, names: tuple[str, ...], values: tuple[str, ...], value: float) -> str:
        self._used += 1
        key = (name, values)
        known = self._known.get(key)
        if known is not None and known[0] == value:
            return known[1]
        text = f"{name}{{{_labels(names, values)}}} {_number(value)}\n"
        self._known[key] = (value, text)
        return text

    chunk: tuple[tuple[Any, ...], str] = ((), "")  # the releases' families as last rendered, by version

    def done(self) -> None:
        """One scrape rendered: forget everything if most of what is remembered is no longer shown."""
        if len(self._known) > 4 * self._used + 1000:
            self._known.clear()
        self._used = 0


def _header(out: list[str], name: str, kind: str, text: str) -> None:
    out.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")


def render(snap: Snapshot, lines: Lines | None = None) -> str:
    """The text exposition of a snapshot: one family after another, series sorted by their labels."""
    lines = lines or Lines()
    version = snap.tallies.version
    if not version or lines.chunk[0] != version:
        releases: list[str] = []
        _render_outcomes(releases, snap, lines)
        _render_live(releases, snap, lines)
        lines.chunk = (version, "".join(releases))
    out = [lines.chunk[1]]
    _render_queue(out, snap)
    _render_delivery(out, snap)
    lines.done()
    return "".join(out)


def _render_outcomes(out: list[str], snap: Snapshot, lines: Lines) -> None:
    name = "conveyor_operations_total"
    _header(out, name, "counter", "Finished releases (deploy, promote, rollback, hotfix) by outcome: "
            "succeeded, failed, interrupted.")
    names = ("app", "env", "kind", "outcome")
    for key, tally in sorted(snap.tallies.outcomes.items()):
        out.append(lines.line(name, names, key, tally.count))
    name = "conveyor_operation_duration_seconds"
    _header(out, name, "histogram", "Seconds from a release's record to its outcome (tasks, deploy and "
            "verification), every app's.")
    bounds = [*(f"{bound:g}" if bound != int(bound) else f"{bound:.1f}" for bound in DURATION_BUCKETS), "+Inf"]
    for (env, kind), tally in sorted(snap.tallies.durations.items()):
        labels = _labels(("env", "kind"), (env, kind))
        for bound, count in zip(bounds, [*tally.within, tally.count], strict=True):
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {count}\n')
        out.append(f"{name}_count{{{labels}}} {tally.count}\n{name}_sum{{{labels}}} {_number(tally.seconds)}\n")


def _render_live(out: list[str], snap: Snapshot, lines: Lines) -> None:
    live = sorted(snap.tallies.live.items())
    _header(out, "conveyor_live_release_info", "gauge", "1 for the release each app+env serves now.")
    names = ("app", "env", "number", "kind", "sha")
    for (app, env), release in live:
        values = (app, env, str(release.number), release.kind, release.sha)
        out.append(lines.line("conveyor_live_release_info", names, values, 1))
    name = "conveyor_live_release_timestamp_seconds"
    _header(out, name, "gauge", "When the live release of each app+env finished (Unix time): a dashboard's "
            "release marker.")
    for (app, env), release in live:
        if release.finished_at is not None:
            out.append(lines.line(name, ("app", "env"), (app, env), release.finished_at.timestamp()))


def _render_queue(out: list[str], snap: Snapshot) -> None:
    queued = sorted(snap.queued)
    _header(out, "conveyor_queue_depth", "gauge", 'Operations waiting in the server\'s queue, per lane (env "" '
            "is an app's build lane).")
    for app, env, depth, _ in queued:
        out.append(f"conveyor_queue_depth{{{_labels(('app', 'env'), (app, env))}}} {depth}\n")
    _header(out, "conveyor_queue_oldest_wait_seconds", "gauge", "How long the oldest waiting operation of each "
            "lane has waited.")
    for app, env, _, seconds in queued:
        out.append(f"conveyor_queue_oldest_wait_seconds{{{_labels(('app', 'env'), (app, env))}}} "
                   f"{_number(seconds)}\n")
    _header(out, "conveyor_leases", "gauge", "Environment leases in the ledger: held (heartbeating) or expired "
            "(its holder stopped; the next operation takes it over).")
    out.append(f'conveyor_leases{{state="held"}} {snap.leases_held}\n'
               f'conveyor_leases{{state="expired"}} {snap.leases_expired}\n')
    backlog = sorted(snap.outbox)
    _header(out, "conveyor_outbox_backlog", "gauge", "Undelivered outbox items (git refs, announcements) by "
            "kind; stopped ones wait for a person.")
    for kind, count, stopped, _ in backlog:
        out.append(f'conveyor_outbox_backlog{{kind="{_escape(kind)}",state="retrying"}} {count - stopped}\n'
                   f'conveyor_outbox_backlog{{kind="{_escape(kind)}",state="stopped"}} {stopped}\n')
    _header(out, "conveyor_outbox_oldest_age_seconds", "gauge", "Age of the oldest undelivered item, by kind.")
    for kind, _, _, seconds in backlog:
        out.append(f'conveyor_outbox_oldest_age_seconds{{kind="{_escape(kind)}"}} {_number(seconds)}\n')


DELIVERY_GAUGES = (
    ("deployment_frequency", "conveyor_delivery_deployment_frequency_per_day",
     "Deployments per day to the last stage."),
    ("lead_time_seconds", "conveyor_delivery_lead_time_seconds",
     "Median commit time to success in the last stage."),
    ("change_failure_rate", "conveyor_delivery_change_failure_rate",
     "Share of last-stage deployments that failed or were rolled back (0..1)."),
    ("time_to_restore_seconds", "conveyor_delivery_time_to_restore_seconds",
     "Median time from a failure to the next good release."),
)


def _render_delivery(out: list[str], snap: Snapshot) -> None:
    figures = sorted(snap.delivery.items())
    for key, name, text in DELIVERY_GAUGES:
        _header(out, name, "gauge", f'{text} Over the last {DELIVERY_DAYS} days; app="" is every app.')
        for app, values in figures:
            if values.get(key) is not None:
                out.append(f'{name}{{app="{_escape(app)}"}} {_number(float(values[key]))}\n')


def exposition(ledger: Ledger) -> bytes:
    """The text exposition of the ledger's metrics, once (`conveyor metrics`, for a textfile collector)."""
    return render(LedgerMetrics(ledger).snapshot()).encode()
