"""Delivery metrics (the four DORA keys) from the ledger alone, for one app or the organisation.

Each app is judged at its last stage, the one its users run:
- deployment frequency: releases that changed what runs there (deploy, promote, hotfix) and succeeded, per day;
- lead time for changes: the median from the shipped commit's committer time to that release's success;
- change failure rate: of those changes finished in the window, the share that failed or were later rolled back;
- time to restore: the median from a failure (a failed change, or one later rolled back) to the next release
  that succeeded and was not itself rolled back.

A rollback is not a change (it re-applies an artifact that already ran), so it counts only as the repair.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from statistics import median
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.ledger.store import Ledger

WINDOWS = (7, 30, 90)
CHANGE_KINDS = ("deploy", "promote", "hotfix")
FINISHED = ("succeeded", "failed")


@dataclass(frozen=True)
class DeliveryDay:
    day: date
    deployments: int
    failures: int


@dataclass(frozen=True)
class DeliveryMetrics:
    days: int
    deployments: int
    deployment_frequency: float  # per day over the window
    lead_time_seconds: float | None
    change_failure_rate: float | None  # 0..1; None with no change finished
    time_to_restore_seconds: float | None
    daily: list[DeliveryDay]  # oldest first, one per day of the window (today included)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["daily"] = [{**day, "day": day["day"].isoformat()} for day in data["daily"]]
        return data


@dataclass(frozen=True)
class _Finished:
    app: str
    number: int
    kind: str
    status: str
    previous_number: int | None
    committed_at: datetime | None
    finished_at: datetime


def delivery_metrics(ledger: Ledger, last_stages: Mapping[str, str], days: int, *,
                     now: datetime | None = None) -> DeliveryMetrics:
    """The metrics over the `days` up to `now`, for the apps in `last_stages` ({app: its last stage})."""
    now = now or datetime.now(UTC)
    since = now - timedelta(days=days)
    rows = ledger.finished_releases(last_stages.items(), since=since, until=now)
    by_app: dict[str, list[_Finished]] = {}
    for row in rows:
        by_app.setdefault(row["app"], []).append(_Finished(**row))
    changes: list[_Finished] = []
    failed: list[_Finished] = []
    lead_times: list[float] = []
    restores: list[float] = []
    for releases in by_app.values():
        app_failed = _failures(releases)
        for release in releases:
            if release.kind not in CHANGE_KINDS:
                continue
            changes.append(release)
            if release.number in app_failed:
                failed.append(release)
            elif release.committed_at is not None:
                lead_times.append(max(0.0, (release.finished_at - release.committed_at).total_seconds()))
        restores += _restore_times(releases, app_failed)
    failed_keys = {(release.app, release.number) for release in failed}
    good = [release for release in changes if (release.app, release.number) not in failed_keys]
    return DeliveryMetrics(
        days=days,
        deployments=len(good),
        deployment_frequency=round(len(good) / days, 3),
        lead_time_seconds=median(lead_times) if lead_times else None,
        change_failure_rate=round(len(failed) / len(changes), 4) if changes else None,
        time_to_restore_seconds=median(restores) if restores else None,
        daily=_daily(good, failed, now, days),
    )


def _failures(releases: list[_Finished]) -> set[int]:
    """The numbers of one app's changes that failed or that a later rollback replaced."""
    rolled_back = {r.previous_number for r in releases if r.kind == "rollback" and r.status == "succeeded"}
    return {r.number for r in releases if r.kind in CHANGE_KINDS and (r.status == "failed" or r.number in rolled_back)}


def _restore_times(releases: list[_Finished], failed: set[int]) -> list[float]:
    """For each failure, the seconds until the next release (by number) that succeeded and stayed good."""
    ordered = sorted(releases, key=lambda r: r.number)
    times = []
    for index, release in enumerate(ordered):
        if release.number not in failed:
            continue
        repair = next((later for later in ordered[index + 1:]
                       if later.status == "succeeded" and later.number not in failed), None)
        if repair is not None:
            times.append((repair.finished_at - release.finished_at).total_seconds())
    return times


def _daily(good: Iterable[_Finished], failed: Iterable[_Finished], now: datetime, days: int) -> list[DeliveryDay]:
    first = (now - timedelta(days=days - 1)).date()
    counts = {first + timedelta(days=offset): [0, 0] for offset in range(days)}
    for index, releases in enumerate((good, failed)):
        for release in releases:
            day = release.finished_at.astimezone(UTC).date()
            if day in counts:
                counts[day][index] += 1
    return [DeliveryDay(day, deployments, failures) for day, (deployments, failures) in counts.items()]


def last_stages(stages: Mapping[str, list[str]], app: str | None = None) -> dict[str, str]:
    """{app: its last stage} from stages_by_app's answer (apps with no known stages left out); one app's
    entry only when `app` is given."""
    chosen = {app: stages.get(app, [])} if app is not None else stages
    return {name: envs[-1] for name, envs in chosen.items() if envs}
