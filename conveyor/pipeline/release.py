"""The one operation every release goes through, whatever its kind:

preflight → lease → record `pending` → pre-deploy tasks (new artifact) → target deploy (apply + verify)
→ record `succeeded` or `failed` → release the lease.

The ledger is written before and after every step, so a crash leaves a record that says how far it got.
A signal (Ctrl-C, SIGTERM) before the target reports the switch records `interrupted`; after it the new
version serves, so the release is finished and recorded `succeeded`.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any

from conveyor import tracing
from conveyor.config.models import Environment
from conveyor.errors import ConveyorError, OperationFailed, Refused
from conveyor.ledger.models import Block, Release
from conveyor.pipeline.ci_gate import GateResult, check_ci
from conveyor.pipeline.copies import COPY_STEP, run_copy
from conveyor.pipeline.copies import describe as describe_copy
from conveyor.pipeline.events import Progress
from conveyor.pipeline.guards import check_blocks, check_promotion_policy, describe_block
from conveyor.pipeline.lease import LeaseKeeper
from conveyor.pipeline.metrics import observe_step
from conveyor.pipeline.workspace import Workspace
from conveyor.targets.base import SWITCHED, Artifact, Outcome


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
    wait_for_ci: bool = False  # the CI gate waits for a pending commit instead of refusing
    ci: GateResult | None = None  # what the CI gate found (pipeline/ci_gate.py), once checked

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
        lines += [describe_copy(copy) for copy in self.spec.get("copies", [])]
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
    """SIGTERM or SIGINT, turned into an exception so the release is recorded and the lease freed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.by_user = signum == signal.SIGINT
        self.cause = "interrupted by the user (Ctrl-C)" if self.by_user else "terminated by a signal"


@dataclass
class _Signals:
    """What a signal does at this point of a release: raise _Interrupted; inside a ledger transaction, wait
    for it to end (an exception inside one could leave the database locked for this very process); once the
    outcome is being recorded, nothing (recording it takes milliseconds; cutting it short would leave a false
    record)."""

    finishing: bool = False
    in_transaction: int = 0
    pending: int | None = None

    @contextmanager
    def held_back(self) -> Iterator[None]:
        """Around each ledger transaction of the main thread (the one signals interrupt)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.in_transaction += 1
        try:
            yield
        finally:
            self.in_transaction -= 1
        if not self.in_transaction and self.pending is not None and not self.finishing:
            signum, self.pending = self.pending, None
            raise _Interrupted(signum)


@contextmanager
def _signals_raise(ws: Workspace, signals: _Signals) -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        if signals.finishing:
            return
        if signals.in_transaction:
            signals.pending = signum
            return
        raise _Interrupted(signum)

    try:
        previous = {number: signal.signal(number, handler) for number in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread (tests drive the pipeline from threads)
        yield
        return
    ws.ledger.guard = signals.held_back
    try:
        yield
    finally:
        ws.ledger.guard = nullcontext
        for number, earlier in previous.items():
            signal.signal(number, earlier)


@dataclass(frozen=True)
class DryRun:
    """What `--dry-run` found: the steps a real run would take, and the checks that passed."""

    steps: list[str]
    checks: list[str]


NOTHING_TO_FORCE = "--force: nothing to override (no block or policy stands in the way); not recorded as forced"


def execute(ws: Workspace, plan: ReleasePlan, *, wait: bool, dry_run: bool) -> Release | DryRun:
    started = time.monotonic()
    app = ws.config.app
    overridden = plan.forced or plan.kind == "hotfix"
    ignored_blocks = check_blocks(ws, plan.env, overridden=overridden)
    ci = check_ci(ws, plan.artifact.sha, plan.kind, forced=plan.forced, wait=plan.wait_for_ci)
    plan = replace(plan, ci=ci)
    if plan.forced and not ignored_blocks and not _policy_overridden(plan) and not (ci and ci.overridden):
        plan = replace(plan, forced=False, notes=[*plan.notes, NOTHING_TO_FORCE])
    live = ws.ledger.live_release(app, plan.env.name)
    target = ws.target(plan.spec["target"])
    # Every check that needs no side effect, before the first one: a dry run runs them too.
    checks = [
        f"artifact {plan.artifact.image} is in the registry",
        _blocks_check(plan, ignored_blocks),
        *([ci.check] if ci else []),
        *(target.preflight(plan.spec) or []),
    ]
    if dry_run:
        return DryRun(plan.steps(app, live), checks)
    operation = f"{plan.kind} {plan.env.name} {plan.artifact.sha[:12]}"
    with tracing.operation(f"{plan.kind} {plan.env.name}", app=app, env=plan.env.name, kind=plan.kind,
                           sha=plan.artifact.sha, digest=plan.artifact.digest, target=plan.spec["target"],
                           forced=plan.forced) as span:
        try:
            release = _execute_under_lease(ws, plan, operation, target, ignored_blocks, wait=wait)
        except BaseException as exc:
            _trace_outcome(ws, span, getattr(exc, "release", None))
            raise
        finally:
            from conveyor.pipeline.outbox import deliver

            deliver(ws)  # this release's refs, and anything an earlier run still owes
        _trace_outcome(ws, span, release)
    ws.say(_timing(release, time.monotonic() - started))
    return release


def _trace_outcome(ws: Workspace, span: tracing.Span, release: Release | None) -> None:
    if release is None:
        return
    span.set(outcome=release.status, **{"release.number": release.number})
    if release.status != "succeeded":
        span.fail(ws.redactor.text(release.error or release.status))


def _policy_overridden(plan: ReleasePlan) -> bool:
    """Whether the environment's promotion policy would have refused this run without --force."""
    source_env = plan.source.env if plan.source is not None and plan.kind == "promote" else None
    try:
        check_promotion_policy(plan.env, kind=plan.kind, source_env=source_env, forced=False)
    except Refused:
        return True
    return False


def _blocks_check(plan: ReleasePlan, ignored: list[Block]) -> str:
    if not ignored:
        return f"no block on {plan.env.name}"
    why = "--hotfix" if plan.kind == "hotfix" else "--force"
    return f"{len(ignored)} block(s) on {plan.env.name} overridden by {why}, on record"


def _timing(release: Release, seconds: float) -> str:
    """The whole operation's time (tasks, deploy, delivery), and the deploy step's from the ledger record."""
    label = f"{release.env}#{release.number} {release.status}"
    if release.started_at and release.finished_at:
        deploy = (release.finished_at - release.started_at).total_seconds()
        return f"{label} in {seconds:.1f}s (the deploy step {deploy:.1f}s)"
    return f"{label} in {seconds:.1f}s"


def _execute_under_lease(
    ws: Workspace, plan: ReleasePlan, operation: str, target: Any, ignored_blocks: list[Block], *, wait: bool
) -> Release:
    signals = _Signals()
    waiting = tracing.start("lease", env=plan.env.name, wait=wait)  # a step of the trace: waiting for it
    waited_from = time.monotonic()
    try:
        with _signals_raise(ws, signals), LeaseKeeper(ws, plan.env.name, operation, wait=wait) as lease:
            waiting.end()
            observe_step("lease", "ok", time.monotonic() - waited_from)
            return _record_and_run(ws, plan, target, ignored_blocks, lease, signals)
    except _Interrupted as exc:  # before anything was recorded (waiting for the lease)
        waiting.fail(exc.cause)
        if exc.by_user:
            raise KeyboardInterrupt from None
        raise OperationFailed(f"{exc.cause} before anything was recorded") from None
    except ConveyorError as exc:
        waiting.fail(exc.message)  # refused by the lease (a no-op once the lease was taken)
        raise
    finally:
        waiting.end()


def _record_and_run(
    ws: Workspace, plan: ReleasePlan, target: Any, ignored_blocks: list[Block], lease: LeaseKeeper,
    signals: _Signals,
) -> Release:
    app = ws.config.app
    ledger = ws.ledger
    live = ledger.live_release(app, plan.env.name)  # re-read: a queued run may have waited behind one
    announced: list[tuple[str, dict[str, Any]]] = []
    release = ledger.create_release(
        app=app, env=plan.env.name, kind=plan.kind, sha=plan.artifact.sha, digest=plan.artifact.digest,
        image=plan.artifact.image, spec=plan.spec, config_digest=ws.config_digest,
        config_source=ws.config_source.recorded_as,
        actor=ws.identity.actor, origin=ws.identity.origin, reason=plan.reason, forced=plan.forced,
        previous_number=live.number if live else None,
        source_release_id=plan.source.id if plan.source else None, holder=lease.holder,
        committed_at=ws.repo.commit_time(plan.artifact.sha),
        announce=lambda recorded: _started_items(ws, recorded, announced), trace_id=tracing.current_trace_id(),
    )
    if announced:
        from conveyor.pipeline.outbox import deliver

        deliver(ws)  # one attempt; an answer that does not come in seconds is retried later, never waited for
    recorder = _Recorder(ws, release)
    try:
        recorder.event("recorded", "ok", f"release {plan.env.name}#{release.number} recorded as pending",
                       {"kind": plan.kind, "sha": plan.artifact.sha, "digest": plan.artifact.digest})
        _record_overrides(recorder, plan, ignored_blocks)
        return _run_steps(ws, plan, release, recorder, lease, target, signals)
    except (_Interrupted, KeyboardInterrupt) as exc:
        cause = exc.cause if isinstance(exc, _Interrupted) else "interrupted by the user (Ctrl-C)"
        if _stopped(ws, recorder, signals, "interrupted", cause):
            return recorder.release
        if not isinstance(exc, _Interrupted):
            _with_release(exc, recorder)
            raise
        if exc.by_user:
            raise _with_release(KeyboardInterrupt(), recorder) from None
        interrupted = OperationFailed(f"interrupted: {plan.env.name}#{release.number} recorded as interrupted")
        raise _with_release(interrupted, recorder) from None
    except ConveyorError as exc:
        if _stopped(ws, recorder, signals, "failed", exc.message):
            return recorder.release
        _with_release(exc, recorder)
        raise
    except Exception as exc:
        if _stopped(ws, recorder, signals, "failed", f"{type(exc).__name__}: {exc}"):
            return recorder.release
        failed = OperationFailed(f"{plan.env.name}#{release.number} failed: {type(exc).__name__}: {exc}")
        raise _with_release(failed, recorder) from exc


def _started_items(ws: Workspace, release: Release, announced: list[tuple[str, dict[str, Any]]]
                   ) -> list[tuple[str, dict[str, Any]]]:
    """The `started` announcements and the forge deployment, queued with the pending record (and noted, to
    deliver right after)."""
    from conveyor.pipeline.announce import release_items
    from conveyor.pipeline.deployments import started_items

    announced.extend(release_items(ws, release))
    announced.extend(started_items(ws, release))
    return announced


def _stopped(ws: Workspace, recorder: _Recorder, signals: _Signals, status: str, cause: str) -> bool:
    """Record a release that stopped before its end. True when it had already switched: then it serves,
    and is recorded as succeeded rather than as `status`. A release the steps already recorded as finished
    (a failed deploy) is left as it is."""
    signals.finishing = True
    # A target may fail after its switch (Heroku: a dyno of the current release crashed); the steps then
    # recorded `failed` and rolled back, and that record stands.
    if recorder.switched and recorder.release.status != "failed":
        recorder.succeed_after_switch(ws, cause)
        return True
    if recorder.release.finished_at is None:
        recorder.finish(status, cause)
    return False


def _with_release(exc: BaseException, recorder: _Recorder) -> BaseException:
    """Attach the release as recorded, so a --json failure can show what the operation reached."""
    exc.release = recorder.release  # type: ignore[attr-defined]  # also on KeyboardInterrupt
    return exc


def _record_overrides(recorder: _Recorder, plan: ReleasePlan, ignored: list[Block]) -> None:
    for note in plan.notes:
        recorder.report("plan", note)
    if plan.forced:
        recorder.event("safeties", "info", f"forced: ran ignoring safeties ({plan.reason})")
    if plan.ci and plan.ci.overridden:
        recorder.event("safeties", "info", f"override of the CI gate: {plan.ci.overridden}",
                       {"ci": plan.ci.overridden, "kind": plan.kind})
    for block in ignored:
        recorder.event("safeties", "info", f"override of a block: {describe_block(block)}",
                       {"block_id": block.id, "kind": plan.kind})


def _run_steps(
    ws: Workspace, plan: ReleasePlan, release: Release, recorder: _Recorder, lease: LeaseKeeper, target: Any,
    signals: _Signals,
) -> Release:
    for copy in plan.spec.get("copies", []):
        _check_lease(lease)
        recorder.step(COPY_STEP)
        recorder.event(COPY_STEP, "started", describe_copy(copy), {"digest": copy["digest"]}, shown=True)
        summary = run_copy(ws, copy, recorder.report)
        recorder.event(COPY_STEP, "ok", summary, {"digest": copy["digest"], "to": copy["to"]["repository"]},
                       shown=True)
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
    _record_hosts(recorder, "deploy", outcome)
    if outcome.succeeded:
        signals.finishing = True
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
    outcome = target.deploy(previous.spec, label, recorder.report_restoring)
    _record_hosts(recorder, "auto-rollback", outcome)
    if outcome.succeeded:
        recorder.event("auto-rollback", "ok", f"{label} re-applied and verified")
        return f"automatically rolled back to {label}, which serves again"
    recorder.event("auto-rollback", "failed", f"re-applying {label} failed: {outcome.reason}")
    return f"the automatic rollback to {label} ALSO failed: {outcome.reason}"


def _record_hosts(recorder: _Recorder, step: str, outcome: Outcome) -> None:
    """A fleet's per-host record: what each host was given and how it went (one event, its data a list)."""
    if not outcome.hosts:
        return
    summary = ", ".join(f"{host['host']} {host['outcome']}" for host in outcome.hosts)
    recorder.event(f"{step}:hosts", "ok" if outcome.succeeded else "failed", f"{step} per host: {summary}",
                   {"hosts": outcome.hosts})


def _check_lease(lease: LeaseKeeper) -> None:
    if not lease.confirm():
        raise OperationFailed("lost the lease (heartbeats stopped reaching the ledger, or it was taken over); "
                              "stopped before changing more")


class _Recorder:
    """Writes a release's steps and events, echoing each to the user."""

    def __init__(self, ws: Workspace, release: Release) -> None:
        self.ws = ws
        self.release = release
        self.switched = False  # the target reported that the new version took the traffic
        self._step = ""  # the step under way, a span in the trace and a duration in the metrics
        self._step_span = tracing.NULL
        self._step_started = 0.0

    def event(self, step: str, status: str, message: str, data: dict[str, Any] | None = None, *,
              shown: bool = False) -> None:
        """Append to the release's record, and tell whoever follows the operation."""
        label = f"{self.release.env}#{self.release.number}"
        self.ws.emit(Progress(step, status, message, data or {}, release=label, shown=shown))
        self.ws.ledger.append_event(
            app=self.release.app, env=self.release.env, release_id=self.release.id, step=step,
            status=status, message=message, data=data,
        )

    def report(self, step: str, message: str) -> None:
        """A target's or a task's progress line: shown to a person, and recorded."""
        if step == SWITCHED:
            self.switched = True  # first: an interruption while this is written already counts as switched
        self.event(step, "info", message, shown=True)

    def report_restoring(self, step: str, message: str) -> None:
        """A progress line of the automatic rollback: its switch puts the previous release back, which is
        not this release taking the traffic."""
        self.report("rollback-switch" if step == SWITCHED else step, message)

    def step(self, step: str, *, status: str | None = None, started: bool = False) -> None:
        self._end_step("ok")
        self._step, self._step_started = step, time.monotonic()
        self._step_span = tracing.start(step, app=self.release.app, env=self.release.env, step=step,
                                        **{"release.number": self.release.number})
        self.release = self.ws.ledger.update_release(self.release.id, step=step, status=status, started=started)

    def _end_step(self, outcome: str, error: str = "") -> None:
        """The step under way ended (the next began, or the release finished): its span and its duration."""
        if not self._step:
            return
        if error:
            self._step_span.fail(self.ws.redactor.text(error))
        self._step_span.set(outcome=outcome)
        self._step_span.end()
        observe_step(self._step, outcome, time.monotonic() - self._step_started)
        self._step, self._step_span = "", tracing.NULL

    def succeed(self, ws: Workspace) -> Release:
        return self.finish("succeeded", "")

    def succeed_after_switch(self, ws: Workspace, cause: str) -> Release:
        """Stopped after the switch: the new version serves, so the record says so (what follows the switch
        is clean-up). Finishing is honest; reverting the switch would need the very steps just cut short."""
        current = ws.ledger.get_release_by_id(self.release.id)
        if current is not None and current.status == "succeeded":
            self.release = current  # the signal came after success was recorded
        else:
            self.succeed(ws)
        label = f"{self.release.env}#{self.release.number}"
        message = (f"{cause} after the switch: {label} serves, so it is recorded as succeeded; what follows "
                   "the switch (the drain, retiring the previous version) was cut short")
        ws.say(message)
        self.event("interrupted", "info", message)
        return self.release

    def finish(self, status: str, error: str) -> Release:
        """Record the final status, and queue what the outbox's handlers say it owes in the same
        transaction (the outbox delivers them after), whatever the status."""
        from datetime import UTC, datetime

        from conveyor.pipeline.outbox import owed

        self._end_step("ok" if status == "succeeded" else status, error)
        if status != "succeeded":
            current = self.ws.ledger.get_release_by_id(self.release.id)
            if current is not None and current.status not in ("pending", "running"):
                # Already finished by whoever took the lease over (recover, a takeover): that record
                # stands; what this process saw is added to it.
                self.release = current
                self.event("finished", "info", f"this operation then stopped too ({status}): {error}")
                return current
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
