"""What a verified GitHub delivery starts (`triggers:` in conveyor.yml), through the server's queue.

* `{on: push, branch: B, deploy: ENV}`: a push to B records a pending trigger for its head commit; the deploy
  is queued once that commit's whole CI verdict is green (the forge's ci_state: combined status and check
  runs), asked again on every `check_suite` / `check_run` / `status` event for the commit and by the poll
  (pipeline/poller.py) in case an event never comes. A newer push to B supersedes a push still waiting.
* `{on: pull_request_merged, base: B, promote: ENV}`: a PR closed **and** merged into B (an unmerged closed
  PR carries a merge_commit_sha too) promotes its merge commit with --only (pipeline/only.py's rules). A
  merge that brings commits the source stage never ran is refused, and a PR comment says why.

Every operation is submitted like the API submits one, with the sender as actor and the delivery as origin.
A rollback of an environment with triggers pauses them (a `triggers` block naming the rollback) until
someone lifts it with `conveyor unlock ENV --triggers`; env, app and org blocks stop triggers too.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConveyorError, Refused
from conveyor.ledger.hooks_store import HooksStore, PendingTrigger

if TYPE_CHECKING:
    from conveyor.config.models import AppConfig
    from conveyor.ledger.models import Block, Release
    from conveyor.pipeline.webhooks import Delivery
    from conveyor.pipeline.worker import Server
    from conveyor.pipeline.workspace import Workspace

log = logging.getLogger("conveyor.server")
CI_EVENTS = ("check_suite", "check_run", "status")
NULL_SHA = "0" * 40


def handle(server: Server, app: str, delivery: Delivery) -> str:
    """Act on one verified delivery for `app`; a line saying what was done (stored with the delivery)."""
    try:
        if delivery.event == "push":
            return _on_push(server, app, delivery)
        if delivery.event in CI_EVENTS:
            return _on_ci(server, app, delivery)
        if delivery.event == "pull_request":
            return _on_pull_request(server, app, delivery)
    except ConveyorError as exc:
        log.warning("webhook %s for %s: %s", delivery.id, app, exc.message)
        return f"not acted on: {exc.message}"
    return f"ignored: no trigger acts on {delivery.event or 'an unnamed'} events"


# ------------------------------------------------------------------------------------------------ push


def _on_push(server: Server, app: str, delivery: Delivery) -> str:
    payload = delivery.payload
    ref, sha = str(payload.get("ref", "")), str(payload.get("after", ""))
    if not ref.startswith("refs/heads/") or payload.get("deleted") or sha in ("", NULL_SHA):
        return "ignored: not a push of a branch head"
    branch = ref.removeprefix("refs/heads/")
    ws = server.workspace(app, fetch=True)  # the pushed commit's config says what its push triggers
    try:
        ws.ship(ws.repo.resolve(sha))
        envs = [t.deploy for t in ws.config.triggers if t.on == "push" and t.branch == branch and t.deploy]
        if not envs:
            return f"ignored: no trigger on a push to {branch}"
        store = HooksStore(server.ledger)
        said = []
        for env in envs:
            pending = store.add_pending(app=app, env=env, sha=sha, branch=branch, actor=delivery.actor,
                                        origin=delivery.origin)
            said.append(f"{env}: {evaluate(server, ws, pending)}")
        return "; ".join(said)
    finally:
        ws.close()


def _on_ci(server: Server, app: str, delivery: Delivery) -> str:
    sha = ci_event_sha(delivery.event, delivery.payload)
    if sha is None:
        return f"ignored: a {delivery.event} event that is not a completed verdict"
    waiting = HooksStore(server.ledger).waiting(app=app, sha=sha)
    if not waiting:
        return f"ignored: no push of {sha[:12]} waits for CI"
    ws = server.workspace(app)
    try:
        ws.ship(sha)
        return "; ".join(f"{pending.env}: {evaluate(server, ws, pending)}" for pending in waiting)
    finally:
        ws.close()


def ci_event_sha(event: str, payload: dict[str, Any]) -> str | None:
    """The commit a CI event is about, once it may change the verdict (a suite or run completed, a status)."""
    if event == "status":
        sha = payload.get("sha")
    else:
        body = payload.get(event)
        if payload.get("action") != "completed" or not isinstance(body, dict):
            return None
        sha = body.get("head_sha")
    return sha if isinstance(sha, str) and len(sha) == 40 else None


def evaluate(server: Server, ws: Workspace, pending: PendingTrigger) -> str:
    """Queue the push's deploy if nothing pauses its trigger and its CI is green; else say why it waits."""
    store = HooksStore(server.ledger)
    pause = pauses(ws, pending.app, pending.env)
    if pause:
        note = f"paused: {pause}"
        store.note(pending.id, note)
        return note
    verdict, detail = ci_verdict(ws, pending.sha)
    if verdict != "green":
        note = f"waiting for CI of {pending.sha[:12]} ({verdict}: {detail})"
        store.note(pending.id, note)
        return note
    return _submit_deploy(server, store, pending)


def _submit_deploy(server: Server, store: HooksStore, pending: PendingTrigger) -> str:
    if not store.decide(pending.id, state="queued", note="queueing"):
        return "already queued by another delivery"
    params = {"env": pending.env, "ref": pending.sha,
              "reason": f"trigger: push of {pending.sha[:12]} to {pending.branch}, CI green"}
    try:
        operation = submit(server, pending.app, "deploy", params, actor=pending.actor, origin=pending.origin)
    except ConveyorError as exc:
        store.reopen(pending.id, f"could not queue: {exc.message}")
        raise
    store.set_operation(pending.id, operation)
    return f"CI green: deploy of {pending.sha[:12]} queued as operation #{operation}"


def submit(server: Server, app: str, kind: str, params: dict[str, Any], *, actor: str, origin: str) -> int:
    """Queue an operation as the API does (pipeline/queue.py: submit), waking the workers."""
    from conveyor.pipeline import queue as queue_ops

    operation, _ = queue_ops.submit(server, app, kind, params, actor=actor, origin=origin)
    return int(operation.id)


# --------------------------------------------------------------------------------------------- the CI verdict


def ci_verdict(ws: Workspace, sha: str) -> tuple[str, str]:
    """("green" | "pending" | "red", its one-line summary): the commit's whole CI verdict (statuses and check
    runs) judged as the CI gate judges it (pipeline/ci_gate.py), by the config's `ci:` or, without one, every
    check that reported."""
    from conveyor.config.forge import CIGate
    from conveyor.pipeline.ci_gate import judge
    from conveyor.pipeline.release_pr import forge_of

    verdict = judge(forge_of(ws).ci_state(sha), ws.config.ci or CIGate())
    state = "green" if verdict.green else "red" if verdict.failing else "pending"
    return state, verdict.summary()


# ------------------------------------------------------------------------------------------ pull requests


def _on_pull_request(server: Server, app: str, delivery: Delivery) -> str:
    payload = delivery.payload
    pull = payload.get("pull_request")
    if payload.get("action") != "closed" or not isinstance(pull, dict):
        return f"ignored: pull_request {payload.get('action')}"
    number = pull.get("number")
    if pull.get("merged") is not True:
        return f"ignored: PR #{number} was closed without being merged"
    sha = pull.get("merge_commit_sha")
    base = (pull.get("base") or {}).get("ref") if isinstance(pull.get("base"), dict) else None
    if not isinstance(sha, str) or not isinstance(base, str):
        return f"ignored: PR #{number} names no merge commit or base"
    if isinstance(number, int):
        HooksStore(server.ledger).pull_merged(app, number)
    ws = server.workspace(app, fetch=True)
    try:
        ws.ship(ws.repo.resolve(sha))
        targets = [t.promote for t in ws.config.triggers
                   if t.on == "pull_request_merged" and t.base == base and t.promote]
        if not targets:
            return f"ignored: no trigger on a PR merged into {base}"
        return "; ".join(_promote_merge(server, ws, app, delivery, number, sha, env) for env in targets)
    finally:
        ws.close()


def _promote_merge(server: Server, ws: Workspace, app: str, delivery: Delivery, number: Any, sha: str,
                   env: str) -> str:
    from conveyor.pipeline.only import resolve_only

    pause = pauses(ws, app, env)
    if pause:
        return f"{env}: not promoted, paused: {pause}"
    source = source_stage(ws.config, env)
    try:
        resolve_only(ws, source, sha)
    except Refused as exc:
        comment_on_pull(server, ws, env, number, f"conveyor did not promote this merge to {env}: {exc.message}")
        return f"{env}: refused: {exc.message}"
    params = {"source": source, "target": env, "only": sha, "reason": f"trigger: PR #{number} merged"}
    operation = submit(server, app, "promote", params, actor=delivery.actor, origin=delivery.origin)
    return f"{env}: promotion of {sha[:12]} from {source} queued as operation #{operation}"


def source_stage(config: AppConfig, target: str) -> str:
    """What a merge promotes from: release_pr's stage when it carries to this target, else the stage
    before the target in the config's order."""
    names = [e.name for e in config.environments]
    if config.release_pr is not None and config.release_pr.stage in names and config.release_pr.stage != target:
        return config.release_pr.stage
    index = names.index(target)
    if index == 0:
        raise Refused(f"{target} is the first stage: there is nothing to promote it from")
    return names[index - 1]


def comment_on_pull(server: Server, ws: Workspace, env: str, number: Any, body: str) -> None:
    """A PR comment through the outbox (delivered now, retried through an outage)."""
    from conveyor.pipeline.outbox import deliver
    from conveyor.pipeline.release_pr import PR_COMMENT, frozen_forge

    payload = {"number": number, "body": body, "forge": frozen_forge(ws.config)}
    HooksStore(server.ledger).queue_outbox(ws.config.app, env, [(PR_COMMENT, payload)])
    deliver(ws)


# ------------------------------------------------------------------------------------------------ pauses


def pauses(ws: Workspace, app: str, env: str) -> str:
    """Why the env's automatic triggers must not act now ("" when nothing stops them): a trigger pause
    (a rollback's), or a block or freeze."""
    from conveyor.pipeline.guards import describe_block

    found: list[Block] = [*HooksStore(ws.ledger).trigger_pauses(app, env), *ws.ledger.active_blocks(app, env)]
    return "; ".join(describe_block(block) for block in found)


def pause_for_rollback(ws: Workspace, env: str, release: Release) -> None:
    """A rollback of an env with triggers pauses them: a webhook must not redeploy what was just rolled
    back. The block names the rollback; `conveyor unlock ENV --triggers` lifts it."""
    if not any(trigger.env == env for trigger in ws.config.triggers):
        return
    reason = (f"automatic triggers paused by rollback {env}#{release.number} ({release.status}) by "
              f"{release.actor}: {release.reason}; lift with `conveyor unlock {env} --triggers`")
    ws.ledger.add_block(scope="triggers", app=ws.config.app, env=env, reason=reason, actor=release.actor,
                        until=None)


def expire_waiting(server: Server, now: datetime | None = None) -> int:
    """Pushes waiting longer than their CI timeout are given up on (their CI never went green)."""
    now = now or datetime.now(UTC)
    store = HooksStore(server.ledger)
    given_up = 0
    for pending in store.waiting():
        if now - pending.created_at > timedelta(seconds=_ci_timeout(server, pending)):
            given_up += store.decide(pending.id, state="expired", note="CI never went green within ci.timeout")
    return given_up


def _ci_timeout(server: Server, pending: PendingTrigger) -> float:
    ws = server.workspace(pending.app)
    try:
        ws.ship(pending.sha)
        return ws.config.ci.timeout if ws.config.ci else 1800.0
    except ConveyorError:
        return 0.0
    finally:
        ws.close()


def triggers_view(server: Server, app: str) -> dict[str, Any]:
    """What the app's automatic triggers wait for: pushes waiting for CI (and why), the pauses in force,
    and the open release PR, as GET /api/apps/APP/triggers shows it."""
    from conveyor.pipeline.views import block_view

    store = HooksStore(server.ledger)
    waiting = [{"id": p.id, "env": p.env, "sha": p.sha, "branch": p.branch, "actor": p.actor, "origin": p.origin,
                "created_at": p.created_at.isoformat(), "note": p.note} for p in store.waiting(app=app)]
    ws = server.workspace(app)
    try:
        envs = [env.name for env in ws.config.environments]
    finally:
        ws.close()
    paused = [block_view(block) for env in envs for block in store.trigger_pauses(app, env)]
    pull = store.get_pull(app)
    release_pr = None if pull is None or pull.merged_at is not None else {
        "number": pull.number, "source": pull.source, "target": pull.target, "head_sha": pull.head_sha,
        "digest": pull.digest, "opened_at": pull.opened_at.isoformat()}
    return {"waiting": waiting, "paused": paused, "release_pr": release_pr}
