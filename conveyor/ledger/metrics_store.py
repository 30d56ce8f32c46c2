"""The ledger queries behind the metrics: aggregates over id ranges of releases (so a scrape reads what is
new since the last one, an index range on the primary key), and the small tables' state now.

`reading(ledger)` gives a Reader on one connection for a whole scrape, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, func, literal_column, select
from sqlalchemy.engine import Connection

from conveyor.ledger.schema import leases, operations, outbox, releases

if TYPE_CHECKING:
    from conveyor.ledger.store import Ledger

FINISHED = ("succeeded", "failed", "interrupted")
UNFINISHED = ("pending", "running")


@dataclass(frozen=True)
class ReleaseRow:
    id: int
    app: str
    env: str
    number: int
    kind: str
    status: str
    sha: str
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class Tally:
    """Finished releases of one app, env, kind and status: how many, their total seconds, and how many took
    at most each bound (cumulative, in the order of the bounds asked for)."""

    app: str
    env: str
    kind: str
    status: str
    count: int
    seconds: float
    within: tuple[int, ...]


def _duration(postgres: bool) -> Any:
    """Seconds from recorded to finished, in the database's own arithmetic."""
    if postgres:
        return func.extract("epoch", releases.c.finished_at - releases.c.created_at)
    return (func.julianday(releases.c.finished_at) - func.julianday(releases.c.created_at)) * literal_column("86400.0")


def _row_columns() -> list[Any]:
    c = releases.c
    return [c.id, c.app, c.env, c.number, c.kind, c.status, c.sha, c.created_at, c.finished_at]


@contextmanager
def reading(ledger: Ledger) -> Iterator[Reader]:
    with ledger._read() as conn:
        yield Reader(conn, ledger._postgres)


class Reader:
    """The metrics' queries, all on one connection (one read transaction per scrape: one round of
    connection checkout and BEGIN, not one per query)."""

    def __init__(self, conn: Connection, postgres: bool) -> None:
        self.conn = conn
        self.postgres = postgres

    def settled_id(self, before: datetime) -> int:
        """The highest release id recorded before `before`: every lower id is committed by now (a PostgreSQL
        sequence hands out ids before their transactions commit, so the newest ids may still gain a neighbour)."""
        query = select(releases.c.id).where(releases.c.created_at <= before).order_by(releases.c.id.desc()).limit(1)
        return int(self.conn.execute(query).scalar() or 0)

    def tallies(self, after_id: int, upto_id: int, bounds: Sequence[float]) -> list[Tally]:
        """Finished releases with after_id < id <= upto_id, grouped; one pass over that id range.

        Each row's duration is computed once, in a subquery the planner may not merge into the outer one (a
        LIMIT -1 on SQLite, OFFSET 0 on PostgreSQL); the outer query groups by the first bound it fits."""
        c = releases.c
        inner = (select(c.app, c.env, c.kind, c.status, _duration(self.postgres).label("seconds"))
                 .where(c.id > after_id, c.id <= upto_id, c.status.in_(FINISHED), c.finished_at.is_not(None)))
        rows = (inner.offset(0) if self.postgres else inner.limit(-1)).subquery()
        bucket = case(*[(rows.c.seconds <= bound, index) for index, bound in enumerate(bounds)], else_=len(bounds))
        keys = [rows.c.app, rows.c.env, rows.c.kind, rows.c.status]
        query = select(*keys, bucket, func.count(), func.sum(rows.c.seconds)).group_by(*keys, bucket)
        found: dict[tuple[str, str, str, str], list[Any]] = {}
        for app, env, kind, status, first, count, seconds in self.conn.execute(query):
            entry = found.setdefault((app, env, kind, status), [0, 0.0, [0] * len(bounds)])
            entry[0] += int(count)
            entry[1] += float(seconds or 0.0)
            for index in range(int(first), len(bounds)):
                entry[2][index] += int(count)
        return [Tally(*key, count, seconds, tuple(within)) for key, (count, seconds, within) in found.items()]

    def unfinished_ids(self, after_id: int, upto_id: int) -> list[int]:
        query = select(releases.c.id).where(releases.c.id > after_id, releases.c.id <= upto_id,
                                            releases.c.status.in_(UNFINISHED))
        return [int(row[0]) for row in self.conn.execute(query)]

    def latest_succeeded(self, after_id: int, upto_id: int) -> list[ReleaseRow]:
        """Per app+env, its highest-numbered succeeded release among after_id < id <= upto_id."""
        newest = select(releases.c.app, releases.c.env, func.max(releases.c.number).label("number"))
        if after_id == 0:
            # The first read: every row, which the (app, env, status, number) index answers alone. Rows past
            # upto_id are the caller's newest, which it adds anyway: a live release is the same whoever adds it.
            newest = newest.where(releases.c.status == "succeeded")
        else:
            newest = newest.where(releases.c.id > after_id, releases.c.id <= upto_id, releases.c.status == "succeeded")
        newest = newest.group_by(releases.c.app, releases.c.env).subquery()
        query = select(*_row_columns()).join(newest, and_(
            releases.c.app == newest.c.app, releases.c.env == newest.c.env, releases.c.number == newest.c.number))
        return [ReleaseRow(*row) for row in self.conn.execute(query)]

    def rows_by_id(self, ids: Sequence[int]) -> list[ReleaseRow]:
        if not ids:
            return []
        return [ReleaseRow(*row) for row in self.conn.execute(select(*_row_columns()).where(releases.c.id.in_(ids)))]

    def rows_after(self, after_id: int) -> list[ReleaseRow]:
        return [ReleaseRow(*row) for row in self.conn.execute(select(*_row_columns()).where(releases.c.id > after_id))]

    def queued(self) -> list[tuple[str, str, int, datetime]]:
        """(app, lane, how many wait, the oldest one's submission time) of the server's queue."""
        query = (select(operations.c.app, operations.c.lane, func.count(), func.min(operations.c.created_at))
                 .where(operations.c.state == "queued").group_by(operations.c.app, operations.c.lane))
        return [(row[0], row[1], int(row[2]), row[3]) for row in self.conn.execute(query)]

    def lease_expiries(self) -> list[datetime]:
        """When each lease now held expires (one row per app+env under way: a small table)."""
        return [row[0] for row in self.conn.execute(select(leases.c.expires_at))]

    def undelivered(self) -> list[tuple[str, int, int, datetime]]:
        """(kind, how many wait, how many of them are stopped, the oldest one's queueing time) of the outbox."""
        query = (select(outbox.c.kind, func.count(), func.sum(case((outbox.c.stopped != "", 1), else_=0)),
                        func.min(outbox.c.created_at))
                 .where(outbox.c.delivered_at.is_(None)).group_by(outbox.c.kind))
        return [(row[0], int(row[1]), int(row[2] or 0), row[3]) for row in self.conn.execute(query)]
