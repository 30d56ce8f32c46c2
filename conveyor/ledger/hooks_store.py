"""The forge webhooks' part of the ledger: accepted deliveries (deduplicated by their id), pushes waiting for
their commit's CI to go green, and each app's open release pull request.

It shares the Ledger's engine and transactions, like ledger/server_store.py, so a delivery, the trigger it
records and the operation it queues are in the database every replica reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from conveyor.ledger.schema import pending_triggers, release_prs, webhook_deliveries

if TYPE_CHECKING:
    from conveyor.ledger.store import Ledger

WAITING = "waiting"


@dataclass(frozen=True)
class PendingTrigger:
    id: int
    app: str
    env: str
    sha: str
    branch: str
    actor: str
    origin: str
    created_at: datetime
    state: str
    operation_id: int | None
    note: str


@dataclass(frozen=True)
class ReleasePull:
    app: str
    number: int
    source: str
    target: str
    head_sha: str
    digest: str
    opened_at: datetime
    updated_at: datetime
    merged_at: datetime | None


def _now() -> datetime:
    return datetime.now(UTC)


def _pending(row: Row[Any]) -> PendingTrigger:
    return PendingTrigger(row.id, row.app, row.env, row.sha, row.branch, row.actor, row.origin, row.created_at,
                          row.state, row.operation_id, row.note)


def _pull(row: Row[Any]) -> ReleasePull:
    return ReleasePull(row.app, row.number, row.source, row.target, row.head_sha, row.digest, row.opened_at,
                       row.updated_at, row.merged_at)


class HooksStore:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    # ------------------------------------------------------------------------------------- deliveries

    def record_delivery(self, delivery_id: str, *, app: str, event: str) -> bool:
        """True for a delivery id seen for the first time; False for a replay (nothing else is written)."""
        try:
            with self._ledger._write() as conn:
                conn.execute(insert(webhook_deliveries).values(id=delivery_id, app=app, event=event,
                                                               received_at=_now(), outcome=""))
        except IntegrityError:
            return False
        return True

    def forget_delivery(self, delivery_id: str) -> None:
        from sqlalchemy import delete

        with self._ledger._write() as conn:
            conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id))

    def set_outcome(self, delivery_id: str, outcome: str) -> None:
        with self._ledger._write() as conn:
            conn.execute(update(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)
                         .values(outcome=outcome))

    def delivery_outcome(self, delivery_id: str) -> str | None:
        with self._ledger._read() as conn:
            return conn.execute(select(webhook_deliveries.c.outcome)
                                .where(webhook_deliveries.c.id == delivery_id)).scalar()

    # ----------------------------------------------------------------------------------------- pushes

    def add_pending(self, *, app: str, env: str, sha: str, branch: str, actor: str, origin: str) -> PendingTrigger:
        """A push waiting for green CI; the older pushes still waiting for the same env are superseded (only
        a branch's head ships)."""
        now = _now()
        with self._ledger._write() as conn:
            conn.execute(update(pending_triggers)
                         .where(pending_triggers.c.app == app, pending_triggers.c.env == env,
                                pending_triggers.c.state == WAITING)
                         .values(state="superseded", note=f"a newer push ({sha[:12]}) to {branch}", decided_at=now))
            row = conn.execute(insert(pending_triggers).values(
                app=app, env=env, sha=sha, branch=branch, actor=actor, origin=origin, created_at=now,
                state=WAITING, note="").returning(*pending_triggers.c)).one()
        return _pending(row)

    def waiting(self, *, app: str | None = None, sha: str | None = None) -> list[PendingTrigger]:
        query = select(pending_triggers).where(pending_triggers.c.state == WAITING)
        if app is not None:
            query = query.where(pending_triggers.c.app == app)
        if sha is not None:
            query = query.where(pending_triggers.c.sha == sha)
        with self._ledger._read() as conn:
            return [_pending(row) for row in conn.execute(query.order_by(pending_triggers.c.id))]

    def decide(self, pending_id: int, *, state: str, note: str, operation_id: int | None = None) -> bool:
        """Move a waiting push on (queued, paused, red…); False when another replica decided it first."""
        stmt = (update(pending_triggers)
                .where(pending_triggers.c.id == pending_id, pending_triggers.c.state == WAITING)
                .values(state=state, note=note, operation_id=operation_id, decided_at=_now()))
        with self._ledger._write() as conn:
            return conn.execute(stmt).rowcount > 0

    def note(self, pending_id: int, note: str) -> None:
        """Why a waiting push still waits (CI pending, a pause), as last seen."""
        with self._ledger._write() as conn:
            conn.execute(update(pending_triggers).where(pending_triggers.c.id == pending_id).values(note=note))

    def set_operation(self, pending_id: int, operation_id: int) -> None:
        with self._ledger._write() as conn:
            conn.execute(update(pending_triggers).where(pending_triggers.c.id == pending_id)
                         .values(operation_id=operation_id, note=f"queued as operation #{operation_id}"))

    def reopen(self, pending_id: int, note: str) -> None:
        """Back to waiting (its submission failed): the next CI event or poll tries again."""
        with self._ledger._write() as conn:
            conn.execute(update(pending_triggers).where(pending_triggers.c.id == pending_id)
                         .values(state=WAITING, note=note, decided_at=None))

    def get_pending(self, pending_id: int) -> PendingTrigger | None:
        with self._ledger._read() as conn:
            row = conn.execute(select(pending_triggers).where(pending_triggers.c.id == pending_id)).first()
        return _pending(row) if row else None

    # ------------------------------------------------------------------------------------ release PRs

    def save_pull(self, *, app: str, number: int, source: str, target: str, head_sha: str, digest: str,
                  opened_at: datetime) -> None:
        now = _now()
        values = {"number": number, "source": source, "target": target, "head_sha": head_sha, "digest": digest,
                  "opened_at": opened_at, "updated_at": now, "merged_at": None}
        with self._ledger._write() as conn:
            changed = conn.execute(update(release_prs).where(release_prs.c.app == app).values(**values)).rowcount
            if not changed:
                conn.execute(insert(release_prs).values(app=app, **values))

    def open_pulls(self) -> list[ReleasePull]:
        with self._ledger._read() as conn:
            rows = conn.execute(select(release_prs).where(release_prs.c.merged_at.is_(None))
                                .order_by(release_prs.c.app))
            return [_pull(row) for row in rows]

    def get_pull(self, app: str) -> ReleasePull | None:
        with self._ledger._read() as conn:
            row = conn.execute(select(release_prs).where(release_prs.c.app == app)).first()
        return _pull(row) if row else None

    def pull_merged(self, app: str, number: int) -> None:
        with self._ledger._write() as conn:
            conn.execute(update(release_prs).where(release_prs.c.app == app, release_prs.c.number == number)
                         .values(merged_at=_now()))

    # -------------------------------------------------------------------------------- trigger pauses

    def trigger_pauses(self, app: str, env: str) -> list[Any]:
        """The active `triggers` blocks of app/env: what a rollback records so that webhooks stop deploying
        there (manual operations are not stopped by them; ledger/store.py active_blocks leaves them out)."""
        from sqlalchemy import or_

        from conveyor.ledger.schema import blocks
        from conveyor.ledger.store import _block

        now = _now()
        query = (select(blocks)
                 .where(blocks.c.scope == "triggers", blocks.c.app == app, blocks.c.env == env,
                        blocks.c.lifted_at.is_(None), or_(blocks.c.until.is_(None), blocks.c.until > now))
                 .order_by(blocks.c.id))
        with self._ledger._read() as conn:
            return [_block(row) for row in conn.execute(query)]

    # ---------------------------------------------------------------------------------------- outbox

    def queue_outbox(self, app: str, env: str, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Outbox items owed by a delivery rather than a release (a PR comment saying why it was refused)."""
        with self._ledger._write() as conn:
            self._ledger._queue(conn, app, env, None, items)
