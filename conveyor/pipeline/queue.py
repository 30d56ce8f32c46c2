"""The server's deploy queue: what may be submitted, in which lane it waits, and how a worker performs it.

An operation is a durable row (ledger/server_store.py) before the API answers. It waits in its lane, the
environment it changes (builds have their own lane per app), first come first served; lanes run in
parallel. A worker performs it through the same pipeline functions the CLI calls, with a workspace on the
server's mirror of the app, and stores the very object `--json` would print, so a CLI following it prints
the same thing whether the server or the CLI itself ran it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.errors import EXIT_REFUSED, BadInput, ConveyorError, Refused
from conveyor.pipeline.outcome import build_result, error_kind, failure, release_result

if TYPE_CHECKING:
    from conveyor.ledger.server_store import Operation, ServerStore
    from conveyor.pipeline.worker import Server
    from conveyor.pipeline.workspace import Workspace

KINDS = ("build", "deploy", "promote", "rollback")
BUILD_LANE = ""  # not an environment name (those are never empty)

# What each kind takes, with defaults; anything else is refused as bad input.
PARAMS: dict[str, dict[str, Any]] = {
    "build": {"ref": "HEAD"},
    "deploy": {"env": None, "ref": None, "reason": "", "hotfix": False, "force": False, "dry_run": False,
               "wait_for_ci": False},
    "promote": {"source": None, "target": None, "only": None, "reason": "", "force": False, "dry_run": False,
                "wait_for_ci": False},
    "rollback": {"env": None, "to": None, "reason": "", "force": False, "dry_run": False},
}


def normalise(kind: str, given: dict[str, Any]) -> dict[str, Any]:
    """The complete parameters of a submission, or BadInput naming what is wrong."""
    if kind not in PARAMS:
        raise BadInput(f"unknown operation '{kind}': choose from {', '.join(KINDS)}")
    unknown = sorted(set(given) - set(PARAMS[kind]))
    if unknown:
        raise BadInput(f"{kind} takes no parameter {', '.join(unknown)}")
    params = {**PARAMS[kind], **{k: v for k, v in given.items() if v is not None}}
    for required in ("env", "ref"):
        if required in params and params[required] in (None, ""):
            raise BadInput(f"{kind} needs {required}")
    return params


def complete_promotion(ws: Workspace, params: dict[str, Any]) -> dict[str, Any]:
    """A promotion without FROM TO means the first two stages of the app's config: named at submission, so
    it waits in the right lane."""
    from conveyor.pipeline.stages import stage_pair

    if params.get("target"):
        return params
    source, target = stage_pair(ws, params.get("source"), None, "promote")
    return {**params, "source": source, "target": target}


def submit(server: Server, app: str, kind: str, params: dict[str, Any], *, actor: str, origin: str,
           traceparent: str = "") -> tuple[Operation, int]:
    """Queue an operation (the API's, the dashboard's and a trigger's alike): its parameters completed, in its
    lane, the workers woken. Returns it and how many wait ahead of it."""
    params = normalise(kind, params)
    if kind == "promote" and not params.get("target"):
        ws = server.workspace(app)
        try:
            params = complete_promotion(ws, params)
        finally:
            ws.close()
    operation, ahead = server.store.submit(app=app, lane=lane_of(kind, params), kind=kind, params=params,
                                           actor=actor, origin=origin, traceparent=traceparent)
    server.submitted()
    return operation, ahead


def lapsed(store: ServerStore, limit: int) -> list[Operation]:
    """Running operations whose replica stopped renewing their lease (the reaper requeues them soon)."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return [op for op in store.list_operations(states=("running",), limit=limit)
            if op.lease_until is not None and op.lease_until < now]


def lane_of(kind: str, params: dict[str, Any]) -> str:
    """The environment an operation changes (a promotion's target), or the app's build lane."""
    if kind == "build":
        return BUILD_LANE
    return str(params["target"] if kind == "promote" else params["env"])


def perform(ws: Workspace, kind: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Run one operation to its end: (exit code, the --json result). Errors become the failure object, as
    the CLI's would; the message is redacted of the config's secret values."""
    try:
        return 0, _dispatch(ws, kind, params)
    except ConveyorError as exc:
        return exc.exit_code, failure(exc.exit_code, error_kind(exc), ws.redactor.text(exc.message),
                                      release=exc.release)


def _dispatch(ws: Workspace, kind: str, p: dict[str, Any]) -> dict[str, Any]:
    from conveyor.pipeline import operations

    if kind == "build":
        from conveyor.pipeline.artifacts import build

        artifact, built = build(ws, p["ref"])
        return build_result(artifact, built)
    if kind == "deploy":
        release = operations.deploy(ws, p["env"], p["ref"], reason=p["reason"], hotfix=p["hotfix"],
                                    force=p["force"], wait=True, dry_run=p["dry_run"],
                                    wait_for_ci=p.get("wait_for_ci", False))
        return release_result(release)
    if kind == "promote":
        release = operations.promote(ws, p["source"], p["target"], only=p["only"], reason=p["reason"],
                                     force=p["force"], wait=True, dry_run=p["dry_run"],
                                     wait_for_ci=p.get("wait_for_ci", False))
        return release_result(release)
    if kind == "rollback":
        release, not_undone = operations.rollback(ws, p["env"], to=p["to"], reason=p["reason"], force=p["force"],
                                                  wait=True, dry_run=p["dry_run"])
        return release_result(release, {"not_undone": not_undone})
    raise BadInput(f"unknown operation '{kind}'")


def supersedes(ws: Workspace, store: ServerStore, operation: Operation) -> Operation | None:
    """For a deploy to an environment configured `queue: supersede` (in the commit it ships), the newest of
    the deploys queued right behind it: that one runs, this one and those in between are superseded.
    A promote or rollback queued in between keeps its place, so nothing jumps over it."""
    if operation.kind != "deploy":
        return None
    try:
        ws.ship(ws.repo.resolve(operation.params["ref"]))
        policy = ws.config.environment(operation.lane).queue
    except ConveyorError:
        return None  # performing it reports the problem
    if policy != "supersede":
        return None
    newer = []
    for waiting in store.waiting_behind(operation):
        if waiting.kind != "deploy":
            break
        newer.append(waiting)
    return newer[-1] if newer else None


def cancel(store: ServerStore, operation_id: int, actor: str) -> Operation:
    operation = store.get_operation(operation_id)
    if operation is None:
        raise BadInput(f"no operation #{operation_id}")
    note = f"cancelled by {actor} while queued"
    result = failure(EXIT_REFUSED, "cancelled", f"operation #{operation_id} was {note}")
    if not store.set_aside(operation_id, state="cancelled", note=note, exit_code=EXIT_REFUSED, result=result):
        current = store.get_operation(operation_id)
        state = current.state if current else operation.state
        raise Refused(f"operation #{operation_id} is {state}: only a queued operation can be cancelled")
    cancelled = store.get_operation(operation_id)
    assert cancelled is not None
    return cancelled


def operation_view(operation: Operation, position: int | None = None) -> dict[str, Any]:
    return {
        "id": operation.id,
        "app": operation.app,
        "env": operation.lane or None,
        "kind": operation.kind,
        "params": operation.params,
        "state": operation.state,
        "exit_code": operation.exit_code,
        "result": operation.result,
        "actor": operation.actor,
        "origin": operation.origin,
        "created_at": operation.created_at.isoformat(),
        "started_at": operation.started_at.isoformat() if operation.started_at else None,
        "finished_at": operation.finished_at.isoformat() if operation.finished_at else None,
        "replica": operation.holder,
        "attempts": operation.attempts,
        "note": operation.note,
        "queue_position": position,
    }
