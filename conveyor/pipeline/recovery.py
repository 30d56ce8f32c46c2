"""What needs a person across every app of a server: leases whose holder died, releases left unfinished
or interrupted, and outbox items still owed. Each is cleared or retried by `recover` and the outbox's retry
(pipeline/repair.py, pipeline/outbox.py), recorded with the actor and the reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from conveyor.pipeline.views import lease_view, release_view

if TYPE_CHECKING:
    from conveyor.ledger.store import Ledger

RECENT = 100


def recovery_report(ledger: Ledger) -> dict[str, Any]:
    now = datetime.now(UTC)
    expired = [{"app": lease.app, "env": lease.env, **lease_view(lease)}
               for lease in ledger.list_leases() if lease.expires_at < now and not lease.env.startswith("~")]
    return {
        "expired_leases": expired,
        "unfinished_releases": [release_view(r) for r in ledger.releases_by_status(("pending", "running"), RECENT)],
        "interrupted_releases": [release_view(r) for r in ledger.releases_by_status(("interrupted",), RECENT)],
        "undelivered": [{"id": item.id, "app": item.app, "env": item.env, "kind": item.kind,
                         "attempts": item.attempts, "last_error": item.last_error,
                         "created_at": item.created_at.isoformat()}
                        for item in ledger.undelivered()[:RECENT]],
    }
