"""Read-only views for status and history, as plain dicts with stable field names (the --json output)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from conveyor.ledger.models import Block, Lease, Release
from conveyor.pipeline.workspace import Workspace


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def release_view(release: Release) -> dict[str, Any]:
    return {
        "app": release.app,
        "env": release.env,
        "number": release.number,
        "kind": release.kind,
        "status": release.status,
        "sha": release.sha,
        "digest": release.digest,
        "image": release.image,
        "actor": release.actor,
        "origin": release.origin,
        "reason": release.reason,
        "forced": release.forced,
        "step": release.step,
        "error": release.error,
        "previous_number": release.previous_number,
        "source_release_id": release.promoted_from_id,
        "config_digest": release.config_digest,
        "created_at": _iso(release.created_at),
        "started_at": _iso(release.started_at),
        "finished_at": _iso(release.finished_at),
    }


def lease_view(lease: Lease) -> dict[str, Any]:
    return {
        "holder_actor": lease.actor,
        "operation": lease.operation,
        "acquired_at": _iso(lease.acquired_at),
        "expires_at": _iso(lease.expires_at),
    }


def block_view(block: Block) -> dict[str, Any]:
    return {
        "id": block.id,
        "scope": block.scope,
        "app": block.app,
        "env": block.env,
        "reason": block.reason,
        "actor": block.actor,
        "created_at": _iso(block.created_at),
        "until": _iso(block.until),
    }


def status(ws: Workspace, *, check_live: bool = True) -> list[dict[str, Any]]:
    """Per environment in pipeline order: the live release, how far behind the previous stage it is,
    the lease and blocks in force, and whether the target really serves what the ledger says."""
    app = ws.config.app
    rows: list[dict[str, Any]] = []
    previous: Release | None = None
    previous_name: str | None = None
    for env in ws.config.environments:
        live = ws.ledger.live_release(app, env.name)
        lease = ws.ledger.get_lease(app, env.name)
        behind = None
        if previous is not None:
            behind = ws.repo.commits_between(live.sha, previous.sha) if live else None
        row: dict[str, Any] = {
            "env": env.name,
            "live": release_view(live) if live else None,
            "behind": {"stage": previous_name, "commits": behind} if previous_name else None,
            "lease": lease_view(lease) if lease else None,
            "blocks": [block_view(b) for b in ws.ledger.active_blocks(app, env.name)],
            "serving": None,
            "drift": None,
        }
        if check_live:
            row["serving"], row["drift"] = _serving(ws, env.target.type, app, env.name, live)
        rows.append(row)
        previous, previous_name = live, env.name
    return rows


def _serving(ws: Workspace, kind: str, app: str, env: str, live: Release | None) -> tuple[str | None, bool | None]:
    try:
        state = ws.target(kind).live(app, env, live.spec if live else None)
    except Exception as exc:  # status must still show the ledger when the target is unreachable
        return f"unknown ({exc})", None
    if state is None:
        return None, live is not None
    return state.image, live is None or state.image != live.image


def status_report(ws: Workspace) -> dict[str, Any]:
    """`conveyor status`: every environment, and what the outbox still owes."""
    return {"environments": status(ws), "outbox": outbox_view(ws)}


def history(ws: Workspace, env: str | None, limit: int) -> list[dict[str, Any]]:
    if env is not None:
        ws.config.environment(env)
    return [release_view(r) for r in ws.ledger.list_releases(ws.config.app, env, limit)]


def outbox_view(ws: Workspace) -> list[dict[str, Any]]:
    from datetime import UTC, datetime

    from conveyor.pipeline.outbox import Delivery, describe, why_waiting

    items = ws.ledger.undelivered(ws.config.app)
    waiting = why_waiting(items, Delivery.of(ws), datetime.now(UTC)) if items else {}
    return [
        {
            "id": item.id,
            "env": item.env,
            "kind": item.kind,
            "what": describe(item),
            "attempts": item.attempts,
            "last_error": item.last_error,
            "next_attempt_at": _iso(item.next_attempt_at),
            "created_at": _iso(item.created_at),
            "waiting": waiting[item.id],
        }
        for item in items
    ]
