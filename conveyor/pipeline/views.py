"""Read-only views for status and history, as plain dicts with stable field names (the --json output)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from conveyor.ledger.models import Block, Lease, Release
from conveyor.pipeline.workspace import Workspace

if TYPE_CHECKING:
    from conveyor.targets.base import Target


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def release_view(release: Release, holder_gone_since: datetime | None = None) -> dict[str, Any]:
    """`holder_gone_since`: for a pending or running release whose process stopped heartbeating, when it
    was last heard from (the record itself is only rewritten by `recover` or a takeover, never by a view)."""
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
        "source_release_id": release.source_release_id,
        "config_digest": release.config_digest,
        "config_source": release.config_source or "commit",
        "created_at": _iso(release.created_at),
        "started_at": _iso(release.started_at),
        "finished_at": _iso(release.finished_at),
        "holder_gone_since": _iso(holder_gone_since),
        "hosts": len(release.spec["hosts"]) if isinstance(release.spec.get("hosts"), list) else None,
        "trace_id": release.trace_id or None,  # the operation's OpenTelemetry trace (null: tracing was off)
    }


def lease_view(lease: Lease) -> dict[str, Any]:
    """`holder_gone_since` is set once the lease expired: its holder stopped heartbeating (it died)."""
    return {
        "holder_actor": lease.actor,
        "operation": lease.operation,
        "acquired_at": _iso(lease.acquired_at),
        "expires_at": _iso(lease.expires_at),
        "holder_gone_since": _iso(lease.heartbeat_at) if _expired(lease) else None,
    }


def _expired(lease: Lease) -> bool:
    return lease.expires_at < datetime.now(UTC)


def holder_gone_since(ws: Workspace, release: Release, leases: list[Lease]) -> datetime | None:
    """When an unfinished release's holder was last heard from, if it is gone: its lease expired, or no
    lease names the release at all. None for a finished release or one whose holder still heartbeats."""
    if release.status not in ("pending", "running"):
        return None
    lease = next((le for le in leases if le.release_id == release.id), None)
    if lease is not None:
        return lease.heartbeat_at if _expired(lease) else None
    last = ws.ledger.events(release_id=release.id)
    return last[-1].at if last else release.created_at


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


def app_blocks(ws: Workspace) -> list[dict[str, Any]]:
    """Every block in force on any environment of the app (its own, app-wide and org-wide), each once."""
    from conveyor.ledger.hooks_store import HooksStore

    seen: dict[int, dict[str, Any]] = {}
    for env in ws.config.environments:
        for block in ws.ledger.active_blocks(ws.config.app, env.name):
            seen[block.id] = block_view(block)
        for pause in HooksStore(ws.ledger).trigger_pauses(ws.config.app, env.name):  # a rollback's
            seen[pause.id] = block_view(pause)
    return list(seen.values())


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
            "outage": None,
            "hosts": None,
        }
        if check_live:
            row["serving"], row["drift"], row["hosts"] = _serving_hosts(ws, env.target.type, app, env.name, live)
            row["outage"] = _outage(ws, live)
        rows.append(row)
        previous, previous_name = live, env.name
    return rows


def _serving(ws: Workspace, kind: str, app: str, env: str, live: Release | None) -> tuple[str | None, bool | None]:
    serving, drift, _ = _serving_hosts(ws, kind, app, env, live)
    return serving, drift


def _serving_hosts(ws: Workspace, kind: str, app: str, env: str,
                   live: Release | None) -> tuple[str | None, bool | None, list[dict[str, Any]] | None]:
    """What serves, whether that drifts from the ledger's live release, and for a fleet the same per host."""
    return target_serving(ws.target(kind), app, env, live)


def target_serving(target: Target, app: str, env: str,
                   live: Release | None) -> tuple[str | None, bool | None, list[dict[str, Any]] | None]:
    """_serving_hosts, asked of a target the caller holds (the server's overview checks hold their own)."""
    try:
        state = target.live(app, env, live.spec if live else None)
    except Exception as exc:  # status must still show the ledger when the target is unreachable
        return f"unknown ({exc})", None, None
    if state is None:
        return None, live is not None, None
    hosts = None
    if state.hosts is not None:
        hosts = [{**host, "drift": live is None or host.get("image") != live.image} for host in state.hosts]
    return state.image, live is None or state.image != live.image, hosts


def _outage(ws: Workspace, live: Release | None) -> str | None:
    """Why the live release does not answer, or None when it does (or nothing is deployed)."""
    if live is None:
        return None
    return target_outage(ws.target(live.spec["target"]), live)


def target_outage(target: Target, live: Release) -> str | None:
    """_outage, asked of a target the caller holds."""
    try:
        return target.probe(live.spec)
    except Exception as exc:  # the probe itself failing is an outage of what it needs
        return f"cannot check that {live.env}#{live.number} answers: {exc}"


def retired_view(ws: Workspace) -> list[dict[str, Any]]:
    """Environments the config no longer has whose last release was never retired, and what serves them."""
    from conveyor.pipeline.repair import retired_envs

    rows = []
    for live in retired_envs(ws):
        serving, _ = _serving(ws, live.spec["target"], live.app, live.env, live)
        rows.append({"env": live.env, "live": release_view(live), "serving": serving})
    return rows


def status_report(ws: Workspace) -> dict[str, Any]:
    """`conveyor status`: every environment, ones retired from the config, and what the outbox owes."""
    return {"environments": status(ws), "retired_from_config": retired_view(ws), "outbox": outbox_view(ws)}


def has_outage(report: dict[str, Any]) -> bool:
    """`conveyor status` exits 1 when a live release does not answer."""
    return any(row["outage"] for row in report["environments"])


def history(ws: Workspace, env: str | None, limit: int, *, before_id: int | None = None) -> list[dict[str, Any]]:
    """Newest first (by the order they were recorded); before_id continues from a page's last release."""
    if env is not None:
        ws.config.environment(env)
    leases = ws.ledger.list_leases()
    return [release_view(r, holder_gone_since(ws, r, leases))
            for r in ws.ledger.list_releases(ws.config.app, env, limit, before_id=before_id)]


def history_page(ws: Workspace, env: str | None, limit: int, *, before_id: int | None = None
                 ) -> tuple[list[dict[str, Any]], int | None]:
    """A page of history and where the next one starts (the `before_id` to pass), or None on the last page."""
    if env is not None:
        ws.config.environment(env)
    leases = ws.ledger.list_leases()
    found = ws.ledger.list_releases(ws.config.app, env, limit + 1, before_id=before_id)
    page = found[:limit]
    rows = [release_view(r, holder_gone_since(ws, r, leases)) for r in page]
    return rows, page[-1].id if len(found) > limit else None


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
