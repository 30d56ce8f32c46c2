"""The dashboard's actions: each one's scope, what its confirmation says (the dry-run plan, from the same
pipeline calls `--dry-run` makes), and how it is done: deploys, promotions and rollbacks are queued exactly
as the JSON API queues them; locks, unlocks and recovery are done at once, as the API does them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.errors import BadInput, ConveyorError

if TYPE_CHECKING:
    from conveyor.pipeline.identity import Identity
    from conveyor.pipeline.worker import Server
    from conveyor.pipeline.workspace import Workspace


@dataclass(frozen=True)
class Action:
    title: str
    scope: str  # what the token needs; {app} is filled in
    queued: bool  # an operation in the queue (else done during the request)


ACTIONS = {
    "deploy": Action("Deploy", "operate:{app}", True),
    "promote": Action("Promote", "operate:{app}", True),
    "rollback": Action("Roll back", "operate:{app}", True),
    "lock": Action("Lock", "block", False),
    "unlock": Action("Unlock", "block", False),
    "recover": Action("Recover", "block", False),
    "flush": Action("Retry undelivered", "block", False),
    "cancel": Action("Cancel a queued operation", "operate:{app}", False),
}


@dataclass(frozen=True)
class Plan:
    steps: list[str]
    checks: list[str]
    refused: str  # why it would not run (a block, a policy, bad input), or ""


@dataclass(frozen=True)
class Outcome:
    operation: int | None = None
    error: str = ""


def _params(action: str, fields: dict[str, str]) -> dict[str, Any]:
    """The queue parameters a form's fields name (the same the JSON API takes)."""
    reason = fields.get("reason", "").strip()
    if action == "deploy":
        return {"env": fields.get("env"), "ref": fields.get("ref", "").strip() or None, "reason": reason}
    if action == "promote":
        return {"source": fields.get("source") or None, "target": fields.get("target") or None,
                "only": fields.get("only", "").strip() or None, "reason": reason}
    to = fields.get("to", "").strip()
    if to and not to.isdigit():
        raise BadInput(f"roll back to: '{to}' is not a release number")
    return {"env": fields.get("env"), "to": int(to) if to else None, "reason": reason}


def plan(server: Server, app: str, action: str, fields: dict[str, str], identity: Identity) -> Plan:
    """What the action would do, as its confirmation shows it; nothing is changed."""
    if action == "cancel":
        try:
            return Plan(_cancel_plan(server, app, fields, identity), [], "")
        except ConveyorError as exc:
            return Plan([], [], exc.message)
    try:
        ws = server.workspace(app, identity=identity, fetch=ACTIONS[action].queued)
    except ConveyorError as exc:
        return Plan([], [], exc.message)
    try:
        return _plan(ws, action, fields)
    except ConveyorError as exc:
        return Plan([], [], ws.redactor.text(exc.message))
    finally:
        ws.close()


def _plan(ws: Workspace, action: str, fields: dict[str, str]) -> Plan:
    from conveyor.pipeline import operations

    if ACTIONS[action].queued:
        p = _params(action, fields)
        if action == "deploy":
            if not p["ref"]:
                raise BadInput("deploy needs a ref (a tag, branch or commit)")
            found: Any = operations.deploy(ws, p["env"], p["ref"], reason=p["reason"], dry_run=True)
        elif action == "promote":
            found = operations.promote(ws, p["source"], p["target"], only=p["only"], reason=p["reason"],
                                       dry_run=True)
        else:
            found, _ = operations.rollback(ws, p["env"], to=p["to"], reason=p["reason"], dry_run=True)
        return Plan(found.steps, found.checks, "")
    return Plan(_describe(ws, action, fields), [], "")


def _describe(ws: Workspace, action: str, fields: dict[str, str]) -> list[str]:
    env, reason, scope = fields.get("env") or None, fields.get("reason", "").strip(), fields.get("scope", "env")
    where = {"env": f"{ws.config.app}/{env}", "app": f"every environment of {ws.config.app}",
             "org": "every app of the organisation"}.get(scope, scope)
    if env:
        ws.config.environment(env)
    if action in ("lock", "recover", "flush") and not reason:
        raise BadInput(f"{ACTIONS[action].title.lower()} needs a reason: it is recorded")
    if action == "lock":
        return [f"lock {where}: deploys, promotions and rollbacks there are refused until it is unlocked",
                f"reason recorded and shown to everyone it stops: {reason}", "announced like `conveyor lock`"]
    if action == "unlock":
        return [f"lift the {scope} lock on {where}", "other locks in force (wider scopes) stay"]
    if action == "recover":
        return [f"take over {env}'s lease if its holder is gone", "record every release of it still pending "
                "or running as interrupted", f"reason: {reason}"]
    return ["retry every undelivered outbox item of the app now", f"reason: {reason}"]


def _queued_operation(server: Server, app: str, fields: dict[str, str]) -> Any:
    """The operation a cancel form names: one of this app's, still queued."""
    from conveyor.errors import Refused

    number = fields.get("operation", "").strip()
    found = server.store.get_operation(int(number)) if number.isdigit() and len(number) < 19 else None
    if found is None or found.app != app:
        raise BadInput(f"no operation #{number} of {app}")
    if found.state != "queued":
        raise Refused(f"operation #{found.id} is {found.state}: only a queued operation can be cancelled")
    return found


def _cancel_plan(server: Server, app: str, fields: dict[str, str], identity: Identity) -> list[str]:
    op = _queued_operation(server, app, fields)
    where = f" → {op.lane}" if op.lane else ""
    return [f"take #{op.id} ({op.kind} {app}{where}, queued by {op.actor} via {op.origin} at "
            f"{op.created_at:%Y-%m-%d %H:%M:%S} UTC) out of the queue: it never runs",
            f"record it as cancelled by {identity.actor}",
            "nothing else changes: what is running carries on, and the operations queued after it move up",
            "if it has started by the time you confirm, nothing is cancelled (a running operation cannot be)"]


def perform(server: Server, app: str, action: str, fields: dict[str, str], identity: Identity) -> Outcome:
    try:
        if action == "cancel":
            from conveyor.pipeline import queue as queue_ops

            op = _queued_operation(server, app, fields)
            return Outcome(operation=int(queue_ops.cancel(server.store, op.id, identity.actor).id))
        if ACTIONS[action].queued:
            return Outcome(operation=_submit(server, app, action, _params(action, fields), identity))
        ws = server.workspace(app, identity=identity)
        try:
            _do_now(ws, action, fields)
        finally:
            ws.close()
    except ConveyorError as exc:
        return Outcome(error=exc.message)
    return Outcome()


def _submit(server: Server, app: str, kind: str, params: dict[str, Any], identity: Identity) -> int:
    """The JSON API's submission (pipeline/queue.py: submit)."""
    from conveyor.pipeline import queue as queue_ops

    operation, _ = queue_ops.submit(server, app, kind, params, actor=identity.actor, origin=identity.origin)
    return int(operation.id)


def _do_now(ws: Workspace, action: str, fields: dict[str, str]) -> None:
    env, reason, scope = fields.get("env") or None, fields.get("reason", "").strip(), fields.get("scope", "env")
    if action == "lock":
        from conveyor.pipeline.blocks import add_block

        add_block(ws, env, scope, reason, fields.get("until") or None)
    elif action == "unlock":
        from conveyor.pipeline.blocks import lift_block

        lift_block(ws, env, scope)
    elif action == "recover":
        from conveyor.pipeline.repair import recover

        recover(ws, str(env), reason, force=False)
    else:
        from conveyor.pipeline.outbox import retry_all

        retry_all(ws, reason)
