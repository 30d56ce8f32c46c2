"""Rollout verification, watch-based: every change the API server streams is judged at once by the pure
verdict functions (verdict.py), so a doomed rollout is reported as soon as the API shows it.

Only the caller's thread reports (the ledger is written from it); the watch threads only fill a queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from conveyor.targets.kubernetes import verdict as v
from conveyor.targets.kubernetes.apply import Applied, Prepared
from conveyor.targets.kubernetes.manifests import L_APP, L_ENV
from conveyor.targets.kubernetes.watch import Watchers

Report = Callable[[str, str], None]

SUCCEEDED, FAILED, TIMED_OUT, PROGRESSING, APPLIED, STOPPED = (
    "succeeded", "failed", "timed out", "progressing", "applied", "not finished",
)
VERIFIED_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "Pod")
SYNC_TIMEOUT = 30.0


@dataclass
class Resource:
    """One applied object and where its rollout stands."""

    kind: str
    name: str
    timeout: float
    uid: str = ""
    generation: int | None = None
    state: str = PROGRESSING
    reason: str = ""
    progress: str = ""
    doom_reasons: dict[str, str] = field(default_factory=dict)
    pods: list[str] = field(default_factory=list)  # names of the pods that belong to its new revision
    related: set[str] = field(default_factory=set)  # names whose events matter (itself, its RS and pods)
    finished_at: float | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def done(self) -> bool:
        return self.state != PROGRESSING


@dataclass
class Result:
    state: str  # SUCCEEDED | FAILED | TIMED_OUT
    resources: list[Resource]
    since: datetime  # when the apply began (events older than this are not this operation's)
    failed_at: float | None = None  # monotonic time the failure was reported
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # the last state of every pod watched

    @property
    def failing(self) -> list[Resource]:
        return [r for r in self.resources if r.state in (FAILED, TIMED_OUT)]

    @property
    def reason(self) -> str:
        failing = self.failing
        if not failing:
            return ""
        first = failing[0]
        more = f" (and {len(failing) - 1} more)" if len(failing) > 1 else ""
        return f"{first.reason}{more}"


def _owned(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    uid = (owner.get("metadata") or {}).get("uid")
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def _name(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("name", "")


def _current(resource: Resource, obj: dict[str, Any] | None) -> bool:
    """Is the cached object the one we applied, at least as new as our apply? A cache entry from before
    the apply would describe the previous rollout and must never be judged as this one."""
    if obj is None:
        return False
    meta = obj.get("metadata") or {}
    if resource.uid and meta.get("uid") != resource.uid:
        return False
    if resource.generation is not None:
        return int(meta.get("generation") or 0) >= int(resource.generation)
    return True


def judge(resource: Resource, watchers: Watchers, since: datetime) -> v.Verdict | None:
    cache = watchers.cache
    obj = cache.get(resource.kind, resource.name)
    if not _current(resource, obj):
        return None
    assert obj is not None
    pods = cache.all("Pod")
    if resource.kind == "Deployment":
        replica_sets = [rs for rs in cache.all("ReplicaSet") if _owned(rs, obj)]
        verdict = v.deployment_verdict(obj, replica_sets, pods, since=since)
        new_rs = v.find_new_replica_set(obj, replica_sets)
        mine = [p for p in pods if new_rs is not None and _owned(p, new_rs)]
        resource.related |= {_name(rs) for rs in replica_sets}
    elif resource.kind == "Pod":
        verdict = v.pod_verdict(obj)
        mine = [obj]
    else:
        mine = [p for p in pods if _owned(p, obj)]
        judge_fn = {"StatefulSet": v.statefulset_verdict, "DaemonSet": v.daemonset_verdict,
                    "Job": v.job_verdict}[resource.kind]
        verdict = judge_fn(obj, mine)
    resource.pods = [_name(p) for p in mine]
    resource.related |= {resource.name, *resource.pods}
    return verdict


def timeout_reason(resource: Resource, watchers: Watchers) -> str:
    obj = watchers.cache.get(resource.kind, resource.name)
    if obj is None:
        return f"{resource.key} timed out after {resource.timeout:g}s: it never appeared in the watch"
    pods = [p for p in watchers.cache.all("Pod") if _name(p) in resource.pods]
    return f"{v.timeout_reason(resource.kind, obj, pods)} (after {resource.timeout:g}s)"


def verify(
    api_client: Any,
    spec: dict[str, Any],
    prepared: list[Prepared],
    applied: dict[str, Applied],
    report: Report,
    since: datetime,
    started: float,
) -> Result:
    """Watch every workload until all succeed, one fails (reported at once) or a timeout passes."""
    tracked: list[Resource] = []
    for item in prepared:
        done = applied.get(item.key)
        resource = Resource(item.kind, item.name, item.timeout)
        if done is not None:
            resource.uid, resource.generation = done.uid, done.generation
        if item.kind not in VERIFIED_KINDS:
            resource.state, resource.reason = APPLIED, "applied"
        tracked.append(resource)
    waiting = [r for r in tracked if not r.done]
    if not waiting:
        return Result(SUCCEEDED, tracked, since)

    kinds = sorted({r.kind for r in waiting} | {"Pod"} | ({"ReplicaSet"} if any(
        r.kind == "Deployment" for r in waiting) else set()))
    selector = f"{L_APP}={spec['app']},{L_ENV}={spec['env']}"
    with Watchers(api_client, spec["namespace"], kinds, selector) as watchers:
        result = _watch(watchers, tracked, waiting, report, since, started)
        result.pods = {_name(p): p for p in watchers.cache.all("Pod")}
        return result


def _watch(
    watchers: Watchers, tracked: list[Resource], waiting: list[Resource], report: Report, since: datetime,
    started: float,
) -> Result:
    try:
        watchers.wait_synced(SYNC_TIMEOUT)
    except TimeoutError as exc:
        problems = "; ".join(watchers.cache.errors[-3:])
        for r in waiting:
            detail = f": {problems}" if problems else ""
            r.state, r.reason = FAILED, f"{r.key}: cannot watch the rollout: {exc}{detail}"
        return Result(FAILED, tracked, since, failed_at=time.monotonic())
    reported_doom: set[str] = set()
    while True:
        now = time.monotonic()
        for r in waiting:
            if r.done:
                continue
            verdict = judge(r, watchers, since)
            if verdict is None:
                continue
            for pod, why in verdict.doom_reasons.items():
                if pod not in reported_doom and verdict.state != v.FAILED:
                    reported_doom.add(pod)
                    report("warning", f"{r.key}: pod {pod} {why}")
            r.doom_reasons = dict(verdict.doom_reasons)
            if verdict.state == v.FAILED:
                r.state, r.reason, r.finished_at = FAILED, verdict.reason, now
            elif verdict.state == v.SUCCEEDED:
                r.state, r.reason, r.finished_at = SUCCEEDED, verdict.reason, now
                report("rollout", f"{r.key} rolled out: {verdict.progress or verdict.reason}")
            elif verdict.progress and verdict.progress != r.progress:
                report("rollout", f"{r.key}: {verdict.progress}")
            r.progress = verdict.progress or r.progress
            if r.state == PROGRESSING:
                r.reason = verdict.reason
        failed = [r for r in waiting if r.state == FAILED]
        if failed:
            failed_at = time.monotonic()
            for r in failed:
                report("failed", r.reason)
            for r in waiting:
                if not r.done:
                    r.state, r.reason = STOPPED, f"stopped at the first failure ({r.reason or 'progressing'})"
            return Result(FAILED, tracked, since, failed_at=failed_at)
        timed_out = [r for r in waiting if not r.done and now - started >= r.timeout]
        if timed_out:
            for r in timed_out:
                r.state, r.reason, r.finished_at = TIMED_OUT, timeout_reason(r, watchers), now
                report("timeout", r.reason)
            # The operation has failed; waiting on for the others would only delay the rollback.
            for r in waiting:
                if not r.done:
                    r.state, r.reason = STOPPED, f"stopped at the first timeout ({r.reason or 'progressing'})"
            return Result(TIMED_OUT, tracked, since, failed_at=time.monotonic())
        pending = [r for r in waiting if not r.done]
        if not pending:
            return Result(SUCCEEDED, tracked, since)
        next_deadline = min(started + r.timeout for r in pending)
        watchers.next(next_deadline - time.monotonic())


def utc_now() -> datetime:
    return datetime.now(UTC)
