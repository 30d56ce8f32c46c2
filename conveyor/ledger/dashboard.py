"""The dashboard's reads: the whole organisation in a few queries, at any ledger size.

Every app+env with a release has one `release_counters` row, so "the live release of each" is one
correlated index seek per row on (app, env, status, number), never a GROUP BY over every release: 500 apps
x 3 stages cost the same with a thousand releases or a million, on SQLite and PostgreSQL alike. The rendered
spec is left out (it is the heavy column and no tile shows it).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select, tuple_

from conveyor.ledger.models import Block
from conveyor.ledger.schema import blocks, events, operation_events, operations, release_counters, releases

if TYPE_CHECKING:
    from conveyor.ledger.store import Ledger

# What a tile shows of a release: everything but the rendered spec.
TILE_COLUMNS = ("id", "app", "env", "number", "kind", "status", "sha", "digest", "actor", "origin", "reason",
                "forced", "step", "error", "created_at", "finished_at")


@dataclass(frozen=True)
class TileRelease:
    id: int
    app: str
    env: str
    number: int
    kind: str
    status: str
    sha: str
    digest: str
    actor: str
    origin: str
    reason: str
    forced: bool
    step: str
    error: str
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class EnvHeads:
    """An app+env's live release (highest succeeded) and its latest attempt (highest number, any status)."""

    live: TileRelease | None
    latest: TileRelease | None


def heads_query() -> Any:
    """Per app+env: the ids of its live release and of its latest attempt (one index seek each)."""
    inner = releases.alias("r")

    def newest(*conditions: Any) -> Any:
        return (select(inner.c.id)
                .where(inner.c.app == release_counters.c.app, inner.c.env == release_counters.c.env, *conditions)
                .order_by(inner.c.number.desc()).limit(1).scalar_subquery())

    return select(release_counters.c.app, release_counters.c.env, newest(inner.c.status == "succeeded")
                  .label("live_id"), newest().label("latest_id"))


def env_heads(ledger: Ledger, only: list[tuple[str, str]] | None = None) -> dict[tuple[str, str], EnvHeads]:
    """Every app+env's live release and latest attempt (or only those named): two queries in all."""
    query = heads_query()
    if only is not None:
        query = query.where(tuple_(release_counters.c.app, release_counters.c.env).in_(only))
    with ledger._read() as conn:
        found = conn.execute(query).all()
        wanted = {i for row in found for i in (row.live_id, row.latest_id) if i is not None}
        rows = conn.execute(select(*(releases.c[name] for name in TILE_COLUMNS))
                            .where(releases.c.id.in_(wanted))).all() if wanted else []
    by_id = {row[0]: TileRelease(*row) for row in rows}  # by position: TILE_COLUMNS is the field order
    return {(row.app, row.env): EnvHeads(by_id.get(row.live_id), by_id.get(row.latest_id)) for row in found}


class HeadsCache:
    """env_heads kept current from the hash chain: every write of a release row (recorded, and each
    change of status or step) appends an event naming its app+env in the same transaction, and chained
    writes are serialised, so the events after the last one seen name every app+env whose heads may have
    moved. A view re-reads those only: one deploy costs one app+env's seeks, not 1,500."""

    def __init__(self) -> None:
        self._heads: dict[tuple[str, str], EnvHeads] = {}
        self._seen: int | None = None
        self._lock = threading.Lock()

    def heads(self, ledger: Ledger) -> dict[tuple[str, str], EnvHeads]:
        """The current heads; the dict returned is never changed afterwards (a change makes a new one)."""
        with self._lock:
            with ledger._read() as conn:
                newest = conn.execute(select(func.max(events.c.id))).scalar() or 0
                moved = [] if self._seen is None or newest == self._seen else [
                    (row.app, row.env) for row in conn.execute(
                        select(events.c.app, events.c.env).where(events.c.id > self._seen,
                                                                 events.c.release_id.is_not(None)).distinct())]
            if self._seen is None:
                self._heads = env_heads(ledger)
            elif moved:
                self._heads = {**self._heads, **env_heads(ledger, moved)}
            self._seen = newest
            return self._heads


def blocks_in_force(ledger: Ledger) -> list[Block]:
    """Every block that stops something now, of every scope and app (blocks are few: one query)."""
    now = datetime.now(UTC)
    query = (select(blocks).where(blocks.c.lifted_at.is_(None), or_(blocks.c.until.is_(None), blocks.c.until > now))
             .order_by(blocks.c.id))
    with ledger._read() as conn:
        return [Block(row.id, row.scope, row.app, row.env, row.reason, row.actor, row.created_at, row.until)
                for row in conn.execute(query)]


def last_progress(ledger: Ledger, operation_ids: list[int]) -> dict[int, tuple[int, dict[str, Any]]]:
    """Each operation's newest progress event: (event id, payload)."""
    if not operation_ids:
        return {}
    newest = (select(func.max(operation_events.c.id)).where(operation_events.c.operation_id.in_(operation_ids))
              .group_by(operation_events.c.operation_id))
    query = select(operation_events).where(operation_events.c.id.in_(newest))
    with ledger._read() as conn:
        return {row.operation_id: (row.id, json.loads(row.payload)) for row in conn.execute(query)}


def change_marker(ledger: Ledger) -> tuple[Any, ...]:
    """A value that changes whenever anything the overview shows changes: a new ledger or operation event,
    an operation submitted or finished, a block added or lifted. Index-only reads, cheap enough to take
    several times a second. Its second item is the newest operation event: only the activity panel (the
    operations' latest steps) shows that; the rest changes the apps' grid too."""
    unfinished = operations.c.state.in_(("queued", "running"))
    query = select(
        select(func.max(events.c.id)).scalar_subquery(),
        select(func.max(operation_events.c.id)).scalar_subquery(),
        select(func.max(operations.c.id)).scalar_subquery(),
        select(func.count()).select_from(operations).where(unfinished).scalar_subquery(),
        select(func.max(blocks.c.id)).scalar_subquery(),
        select(func.count()).select_from(blocks).where(and_(blocks.c.lifted_at.is_not(None))).scalar_subquery(),
    )
    with ledger._read() as conn:
        return tuple(conn.execute(query).one())
