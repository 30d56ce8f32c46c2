"""The one operation every release goes through, whatever its kind:

preflight → lease → record `pending` → pre-deploy tasks (new artifact) → target deploy (apply + verify)
→ record `succeeded` or `failed` → release the lease.

The ledger is written before and after every step, so a crash leaves a record that says how far it got.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any

from conveyor.config.models import Environment
from conveyor.errors import ConveyorError, OperationFailed
from conveyor.ledger.models import Block, Release
from conveyor.pipeline.guards import check_blocks, describe_block
from conveyor.pipeline.lease import LeaseKeeper
from conveyor.pipeline.workspace import Workspace
from conveyor.targets.base import Artifact


@dataclass
class ReleasePlan:
    env: Environment
    kind: str  # deploy | promote | rollback | hotfix
    artifact: Artifact
    spec: dict[str, Any]
    reason: str
    forced: bool
    source: Release | None = None  # promote: the pinned source release; rollback: the release re-applied
    run_tasks: bool = True
    notes: list[str] = field(default_factory=list)  # printed with the plan and recorded as events

    @property
    def tasks(self) -> list[dict[str, Any]]:
        return list(self.spec.get("tasks", [])) if self.run_tasks else []

    def steps(self, app: str, live: Release | None) -> list[str]:
        short = self.artifact.sha[:12]
        current = f"{self.env.name}#{live.number} ({live.sha[:12]})" if live else "nothing yet"
        lines = [
            f"{self.kind} {app} {short} to {self.env.name} (now serving {current})",
            f"artifact: {self.artifact.image}",
            f"acquire the lease on {app}/{self.env.name}",
            f"record the next {self.env.name} release as pending",
        ]
        lines += [f"run pre-deploy task '{t['name']}' with the new image" for t in self.tasks]
        lines += [
            f"deploy on {self.spec['target']}: apply the new version and verify it (health check or rollout); "
            "on failure keep or restore the previous release",
            "record the release as succeeded or failed",
            "queue and push the release's git tags and branch (outbox)",
            "release the lease",
        ]
        return [*self.notes, *lines]


class _Interrupted(BaseException):
    """SIGTERM, turned into an exception so the release is recorded as interrupted and the lease freed."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (tests drive the pipeline from threads)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def execute(ws: Workspace, plan: ReleasePlan, *, wait: bool, dry_run: bool) -> Release | None:
    app = ws.config.app
    ledger = ws.ledger
    overridden = plan.forced or plan.kind == "hotfix"
    ignored_blocks = check_blocks(ws, plan.env, overridden=overridden)
    live = ledger.live_release(app, plan.env.name)
    if dry_run:
        ws.say("dry run: nothing will be changed. The plan:")
        for number, line in enumerate(plan.steps(app, live), 1):
            ws.say(f"  {number}. {line}")
        return None
    target = ws.target(plan.spec["target"])
    target.preflight(plan.spec)
    operation = f"{plan.kind} {plan.env.name} {plan.artifact.sha[:12]}"
    try:
        return _execute_under_lease(ws, plan, operation, target, ignored_blocks, wait=wait)
    finally:
        from conveyor.pipeline.outbox import deliver

        deliver(ws)  # this release's refs, and anything an earlier run still owes


def _execute_under_lease(
    ws: Workspace, plan: ReleasePlan, operation: str, target: Any, ignored_blocks: list[Block], *, wait: bool
) -> Release:
    app = ws.config.app
    ledger = ws.ledger
    with _sigterm_raises(), LeaseKeeper(ws, plan.env.name, operation, wait=wait) as lease:
        live = ledger.live_release(app, plan.env.name)  # re-read: a queued run may have waited behind one
        release = ledger.create_release(
            app=app, env=plan.env.name, kind=plan.kind, sha=plan.artifact.sha, digest=plan.artifact.digest,
            image=plan.artifact.image, spec=plan.spec, config_digest=ws.config_digest,
            actor=ws.identity.actor, origin=ws.identity.origin, reason=plan.reason, forced=plan.forced,
            previous_number=live.number if live else None,
            promoted_from_id=plan.source.id if plan.source else None,
        )
        lease.attach_release(release.id)
        recorder = _Recorder(ws, release)
        recorder.event("recorded", "ok", f"release {plan.env.name}#{release.number} recorded as pending",
                       {"kind": plan.kind, "sha": plan.artifact.sha, "digest": plan.artifact.digest})
        _record_overrides(recorder, plan, ignored_blocks)
        try:
            return _run_steps(ws, plan, release, recorder, lease, target)
        except _Interrupted:
            recorder.finish("interrupted", "terminated by a signal")
            raise OperationFailed(f"interrupted: {plan.env.name}#{release.number} recorded as interrupted") \
                from None
        except KeyboardInterrupt:
            recorder.finish("interrupted", "interrupted by the user (Ctrl-C)")
            raise
        except ConveyorError as exc:
            recorder.finish("failed", exc.message)
            raise
        except Exception as exc:
            recorder.finish("failed", f"{type(exc).__name__}: {exc}")
            raise OperationFailed(f"{plan.env.name}#{release.number} failed: {type(exc).__name__}: {exc}") \
                from exc


def _record_overrides(recorder: _Recorder, plan: ReleasePlan, ignored: list[Block]) -> None:
    for note in plan.notes:
        recorder.report("plan", note)
    if plan.forced:
        recorder.event("safeties", "info", f"forced: ran ignoring safeties ({plan.reason})")
    for block in ignored:
        recorder.event("safeties", "info", f"override of a block: {describe_block(block)}",
                       {"block_id": block.id, "kind": plan.kind})


def _run_steps(
    ws: Workspace, plan: ReleasePlan, release: Release, recorder: _Recorder, lease: LeaseKeeper, target: Any
) -> Release:
    for task in plan.tasks:
        _check_lease(lease)
        recorder.step(f"task:{task['name']}")
        recorder.event("task", "started", f"pre-deploy task '{task['name']}' with {plan.artifact.image}",
                       {"task": task["name"]})
        target.run_task(plan.spec, task, recorder.report)
        recorder.event("task", "ok", f"pre-deploy task '{task['name']}' succeeded", {"task": task["name"]})
    _check_lease(lease)
    recorder.step("deploy", status="running", started=True)
    outcome = target.deploy(plan.spec, f"{plan.env.name}#{release.number}", recorder.report)
    if outcome.succeeded:
        return recorder.succeed(ws)
    for line in outcome.logs:
        recorder.event("logs", "info", line)
    serving = "the previous version is still serving"
    if not outcome.previous_still_serving:
        serving = _roll_back_automatically(ws, release, recorder, target)
    recorder.finish("failed", f"{outcome.reason}; {serving}")
    tail = "\n".join(f"    {line}" for line in outcome.logs[-20:])
    raise OperationFailed(
        f"{plan.env.name}#{release.number} failed: {outcome.reason}; {serving}"
        + (f"\n  last log lines:\n{tail}" if tail else "")
    )


def _roll_back_automatically(ws: Workspace, release: Release, recorder: _Recorder, target: Any) -> str:
    """The target may have changed what serves: re-apply the previous release's stored spec, verified the
    same way, and record how that went. Returns what now serves, for the failure message."""
    if release.previous_number is None:
        return "there was no previous release to roll back to"
    previous = ws.ledger.get_release(release.app, release.env, release.previous_number)
    if previous is None:
        return "the previous release is missing from the ledger"
    label = f"{release.env}#{previous.number}"
    recorder.event("auto-rollback", "started", f"re-applying {label}'s stored spec ({previous.image})")
    outcome = target.deploy(previous.spec, label, recorder.report)
    if outcome.succeeded:
        recorder.event("auto-rollback", "ok", f"{label} re-applied and verified")
        return f"automatically rolled back to {label}, which serves again"
    recorder.event("auto-rollback", "failed", f"re-applying {label} failed: {outcome.reason}")
    return f"the automatic rollback to {label} ALSO failed: {outcome.reason}"


def _check_lease(lease: LeaseKeeper) -> None:
    if lease.lost:
        raise OperationFailed("lost the lease (heartbeats stopped reaching the ledger); stopped before changing more")


class _Recorder:
    """Writes a release's steps and events, echoing each to the user."""

    def __init__(self, ws: Workspace, release: Release) -> None:
        self.ws = ws
        self.release = release

    def event(self, step: str, status: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.ws.ledger.append_event(
            app=self.release.app, env=self.release.env, release_id=self.release.id, step=step,
            status=status, message=message, data=data,
        )

    def report(self, step: str, message: str) -> None:
        self.ws.say(f"  {step}: {message}")
        self.event(step, "info", message)

    def step(self, step: str, *, status: str | None = None, started: bool = False) -> None:
        self.release = self.ws.ledger.update_release(self.release.id, step=step, status=status, started=started)

    def succeed(self, ws: Workspace) -> Release:
        return self.finish("succeeded", "")

    def finish(self, status: str, error: str) -> Release:
        """Record the final status, and queue what the outbox's handlers say it owes in the same
        transaction (the outbox delivers them after), whatever the status."""
        from datetime import UTC, datetime

        from conveyor.pipeline.outbox import owed

        finished_at = datetime.now(UTC)
        final = replace(self.release, status=status, error=error, finished_at=finished_at)
        self.release = self.ws.ledger.update_release(
            self.release.id, status=status, error=error, finished=True,
            outbox_items=owed(self.ws, final, finished_at), finished_at=finished_at,
        )
        label = f"{self.release.env}#{self.release.number}"
        self.event("finished", "ok" if status == "succeeded" else "failed",
                   f"{label} {status}" + (f": {error}" if error else ""))
        return self.release
