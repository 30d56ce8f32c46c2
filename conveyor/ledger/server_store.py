"""The server's part of the ledger: registered apps, hashed API tokens, and the durable operation queue.

It shares the Ledger's engine and transactions, so the queue lives in the same database as the records it
produces, on SQLite (one server process) and PostgreSQL (several replicas) alike:

* Claiming takes the oldest queued operation whose lane (app + environment) has nothing older waiting or
  running. On PostgreSQL the candidate row is locked `FOR UPDATE SKIP LOCKED`, so replicas claiming at once
  each get a different row without waiting on each other; on SQLite BEGIN IMMEDIATE serialises claimers.
* Submitting and requeueing send `NOTIFY conveyor_queue` (delivered when the transaction commits), and every
  event sends `NOTIFY conveyor_events`, so idle workers and event streams in other replicas wake at once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from conveyor.errors import BadInput
from conveyor.ledger.schema import apps, operation_events, operations, tokens

if TYPE_CHECKING:
    from conveyor.ledger.store import Ledger

QUEUE_CHANNEL = "conveyor_queue"
EVENTS_CHANNEL = "conveyor_events"
OPERATION_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "superseded")
FINISHED_STATES = ("succeeded", "failed", "cancelled", "superseded")


@dataclass(frozen=True)
class App:
    name: str
    repo_url: str
    created_at: datetime
    created_by: str
    stages: tuple[str, ...] = ()  # its environments in config order, as a server last read its config


@dataclass(frozen=True)
class Token:
    name: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True)
class Operation:
    id: int
    app: str
    lane: str  # the environment it changes; "" for a build
    kind: str  # build | deploy | promote | rollback
    params: dict[str, Any]
    state: str
    exit_code: int | None
    result: Any
    actor: str
    origin: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    holder: str | None
    lease_until: datetime | None
    attempts: int
    note: str
    traceparent: str = ""  # the submitter's W3C trace context; "" when it sent none


@dataclass(frozen=True)
class OperationEvent:
    id: int
    operation_id: int
    at: datetime
    payload: dict[str, Any]


def _now() -> datetime:
    return datetime.now(UTC)


def _app(row: Row[Any]) -> App:
    return App(row.name, row.repo_url, row.created_at, row.created_by, tuple(json.loads(row.stages or "[]")))


def _token(row: Row[Any]) -> Token:
    return Token(row.name, json.loads(row.scopes), row.created_at, row.last_used_at)


def _operation(row: Row[Any]) -> Operation:
    return Operation(
        id=row.id, app=row.app, lane=row.lane, kind=row.kind, params=json.loads(row.params), state=row.state,
        exit_code=row.exit_code, result=json.loads(row.result) if row.result is not None else None,
        actor=row.actor, origin=row.origin, created_at=row.created_at, started_at=row.started_at,
        finished_at=row.finished_at, holder=row.holder, lease_until=row.lease_until, attempts=row.attempts,
        note=row.note, traceparent=row.traceparent,
    )


class ServerStore:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def _notify(self, conn: Any, channel: str, payload: str = "") -> None:
        if self._ledger._postgres:
            conn.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload})

    # ------------------------------------------------------------------------------------------- apps

    def add_app(self, name: str, repo_url: str, actor: str) -> App:
        row = {"name": name, "repo_url": repo_url, "created_at": _now(), "created_by": actor}
        try:
            with self._ledger._write() as conn:
                conn.execute(insert(apps).values(**row))
        except IntegrityError:
            raise BadInput(f"app '{name}' is already registered") from None
        return App(**row)

    def get_app(self, name: str) -> App | None:
        with self._ledger._read() as conn:
            row = conn.execute(select(apps).where(apps.c.name == name)).first()
        return _app(row) if row else None

    def list_apps(self) -> list[App]:
        with self._ledger._read() as conn:
            return [_app(row) for row in conn.execute(select(apps).order_by(apps.c.name))]

    def set_stages(self, name: str, stages: list[str]) -> None:
        with self._ledger._write() as conn:
            conn.execute(update(apps).where(apps.c.name == name).values(stages=json.dumps(stages)))

    def stages_by_app(self) -> dict[str, list[str]]:
        """Every registered app's stage order ([] until a server has read its config), in one query."""
        with self._ledger._read() as conn:
            rows = conn.execute(select(apps.c.name, apps.c.stages).order_by(apps.c.name))
            return {row.name: json.loads(row.stages or "[]") for row in rows}

    def remove_app(self, name: str) -> bool:
        with self._ledger._write() as conn:
            return conn.execute(delete(apps).where(apps.c.name == name)).rowcount > 0

    # ----------------------------------------------------------------------------------------- tokens

    def add_token(self, name: str, token_hash: str, scopes: list[str]) -> Token:
        created = _now()
        try:
            with self._ledger._write() as conn:
                conn.execute(insert(tokens).values(name=name, token_hash=token_hash, scopes=json.dumps(scopes),
                                                   created_at=created))
        except IntegrityError:
            raise BadInput(f"a token named '{name}' exists; revoke it first or choose another name") from None
        return Token(name, scopes, created, None)

    def token_by_hash(self, token_hash: str) -> Token | None:
        with self._ledger._read() as conn:
            row = conn.execute(select(tokens).where(tokens.c.token_hash == token_hash)).first()
        return _token(row) if row else None

    def token_named(self, name: str) -> tuple[Token, str] | None:
        """A token and its stored hash, by name (a dashboard session names its token)."""
        with self._ledger._read() as conn:
            row = conn.execute(select(tokens).where(tokens.c.name == name)).first()
        return (_token(row), row.token_hash) if row else None

    def touch_token(self, name: str) -> None:
        with self._ledger._write() as conn:
            conn.execute(update(tokens).where(tokens.c.name == name).values(last_used_at=_now()))

    def list_tokens(self) -> list[Token]:
        with self._ledger._read() as conn:
            return [_token(row) for row in conn.execute(select(tokens).order_by(tokens.c.name))]

    def remove_token(self, name: str) -> bool:
        with self._ledger._write() as conn:
            return conn.execute(delete(tokens).where(tokens.c.name == name)).rowcount > 0

    # ------------------------------------------------------------------------------------------ queue

    def submit(self, *, app: str, lane: str, kind: str, params: dict[str, Any], actor: str,
               origin: str, traceparent: str = "") -> tuple[Operation, int]:
        """The durable row, committed before the caller answers, and how many are ahead of it in its lane."""
        values = {"app": app, "lane": lane, "kind": kind, "params": json.dumps(params, sort_keys=True),
                  "state": "queued", "actor": actor, "origin": origin, "created_at": _now(), "attempts": 0,
                  "note": "", "traceparent": traceparent}
        with self._ledger._write() as conn:
            row = conn.execute(insert(operations).values(**values).returning(*operations.c)).one()
            ahead = conn.execute(self._ahead_of(_operation(row))).scalar_one()
            self._notify(conn, QUEUE_CHANNEL)
        return _operation(row), int(ahead)

    @staticmethod
    def _ahead_of(operation: Operation) -> Any:
        from sqlalchemy import func

        return select(func.count()).select_from(operations).where(
            operations.c.app == operation.app, operations.c.lane == operation.lane,
            operations.c.state.in_(("queued", "running")), operations.c.id < operation.id)

    def claim(self, holder: str, ttl: float) -> Operation | None:
        """The oldest queued operation at the head of its lane, now running under `holder`'s lease."""
        earlier = aliased(operations)
        ahead = (
            select(earlier.c.id)
            .where(earlier.c.app == operations.c.app, earlier.c.lane == operations.c.lane,
                   earlier.c.state.in_(("queued", "running")), earlier.c.id < operations.c.id)
            .exists()
        )
        query = select(operations.c.id).where(operations.c.state == "queued", ~ahead).order_by(operations.c.id)
        query = query.limit(1)
        if self._ledger._postgres:
            query = query.with_for_update(skip_locked=True, of=operations)
        now = _now()
        with self._ledger._write() as conn:
            chosen = conn.execute(query).scalar()
            if chosen is None:
                return None
            row = conn.execute(
                update(operations).where(operations.c.id == chosen, operations.c.state == "queued")
                .values(state="running", holder=holder, lease_until=now + timedelta(seconds=ttl),
                        started_at=now, attempts=operations.c.attempts + 1)
                .returning(*operations.c)
            ).one_or_none()
        return _operation(row) if row else None

    def renew(self, operation_id: int, holder: str, ttl: float) -> bool:
        """Extend a running operation's lease; False once it is no longer this holder's."""
        stmt = (update(operations)
                .where(operations.c.id == operation_id, operations.c.holder == holder,
                       operations.c.state == "running")
                .values(lease_until=_now() + timedelta(seconds=ttl)))
        with self._ledger._write() as conn:
            return conn.execute(stmt).rowcount > 0

    def finish(self, operation_id: int, holder: str, *, state: str, exit_code: int, result: Any,
               note: str = "") -> bool:
        values: dict[str, Any] = {"state": state, "exit_code": exit_code, "result": json.dumps(result),
                                  "finished_at": _now(), "lease_until": None}
        if note:
            values["note"] = note
        stmt = (update(operations)
                .where(operations.c.id == operation_id, operations.c.holder == holder,
                       operations.c.state == "running")
                .values(**values))
        with self._ledger._write() as conn:
            done = conn.execute(stmt).rowcount > 0
            self._notify(conn, EVENTS_CHANNEL, str(operation_id))
            self._notify(conn, QUEUE_CHANNEL)  # the lane's next operation may start
        return done

    def set_aside(self, operation_id: int, *, state: str, note: str, exit_code: int, result: Any,
                  by_holder: str | None = None) -> bool:
        """Finish an operation that will not run: cancelled while queued, or superseded by a newer one
        (when it is the one a worker holds, `by_holder`)."""
        condition = (operations.c.holder == by_holder) & (operations.c.state == "running") if by_holder \
            else operations.c.state == "queued"
        stmt = (update(operations).where(operations.c.id == operation_id, condition)
                .values(state=state, note=note, finished_at=_now(), lease_until=None, exit_code=exit_code,
                        result=json.dumps(result)))
        with self._ledger._write() as conn:
            done = conn.execute(stmt).rowcount > 0
            if done:
                self._notify(conn, EVENTS_CHANNEL, str(operation_id))
                self._notify(conn, QUEUE_CHANNEL)
        return done

    def waiting_behind(self, operation: Operation) -> list[Operation]:
        """The operations queued after this one in its lane, oldest first."""
        query = (select(operations)
                 .where(operations.c.app == operation.app, operations.c.lane == operation.lane,
                        operations.c.state == "queued", operations.c.id > operation.id)
                 .order_by(operations.c.id))
        with self._ledger._read() as conn:
            return [_operation(row) for row in conn.execute(query)]

    def requeue_lapsed(self) -> list[Operation]:
        """Running operations whose replica stopped renewing their lease go back to the head of their lane
        (their ids keep their place), with a note saying whose lease lapsed when."""
        now = _now()
        query = select(operations).where(operations.c.state == "running", operations.c.lease_until < now)
        if self._ledger._postgres:
            query = query.with_for_update(skip_locked=True)
        requeued = []
        with self._ledger._write() as conn:
            for row in conn.execute(query).all():
                note = (f"replica {row.holder} stopped renewing its lease at {row.lease_until.isoformat()} "
                        f"(attempt {row.attempts}); queued again for another replica")
                conn.execute(update(operations).where(operations.c.id == row.id)
                             .values(state="queued", holder=None, lease_until=None, note=note))
                self._append_event(conn, row.id, {"step": "note", "status": "info", "message": note, "data": {},
                                                  "release": None, "shown": True})
                requeued.append(row.id)
            if requeued:
                self._notify(conn, QUEUE_CHANNEL)
        return [op for op in (self.get_operation(number) for number in requeued) if op is not None]

    def get_operation(self, operation_id: int) -> Operation | None:
        with self._ledger._read() as conn:
            row = conn.execute(select(operations).where(operations.c.id == operation_id)).first()
        return _operation(row) if row else None

    def list_operations(self, *, states: tuple[str, ...] | None = None, app: str | None = None,
                        before_id: int | None = None, limit: int = 50) -> list[Operation]:
        """Newest first; page on with before_id (keyset)."""
        query = select(operations)
        if states:
            query = query.where(operations.c.state.in_(states))
        if app is not None:
            query = query.where(operations.c.app == app)
        if before_id is not None:
            query = query.where(operations.c.id < before_id)
        query = query.order_by(operations.c.id.desc()).limit(limit)
        with self._ledger._read() as conn:
            return [_operation(row) for row in conn.execute(query)]

    def queue_position(self, operation: Operation) -> int:
        """How many operations of its lane are ahead of a queued one (running included)."""
        with self._ledger._read() as conn:
            return int(conn.execute(self._ahead_of(operation)).scalar_one())

    def progress(self, operation_id: int, after_id: int = 0,
                 limit: int = 500) -> tuple[Operation | None, list[OperationEvent]]:
        """An operation as it stands and its events after `after_id`, read in one transaction (an event
        stream's every look)."""
        with self._ledger._read() as conn:
            row = conn.execute(select(operations).where(operations.c.id == operation_id)).first()
            found = self._events_after(conn, operation_id, after_id, limit)
        return (_operation(row) if row else None), found

    # ----------------------------------------------------------------------------------------- events

    def _append_event(self, conn: Any, operation_id: int, payload: dict[str, Any]) -> int:
        event_id = conn.execute(
            insert(operation_events).values(operation_id=operation_id, at=_now(),
                                            payload=json.dumps(payload, sort_keys=True, default=str))
            .returning(operation_events.c.id)
        ).scalar_one()
        self._notify(conn, EVENTS_CHANNEL, str(operation_id))
        return int(event_id)

    def append_event(self, operation_id: int, payload: dict[str, Any]) -> int:
        with self._ledger._write() as conn:
            return self._append_event(conn, operation_id, payload)

    def events_after(self, operation_id: int, after_id: int = 0, limit: int = 500) -> list[OperationEvent]:
        with self._ledger._read() as conn:
            return self._events_after(conn, operation_id, after_id, limit)

    @staticmethod
    def _events_after(conn: Any, operation_id: int, after_id: int, limit: int) -> list[OperationEvent]:
        query = (select(operation_events)
                 .where(operation_events.c.operation_id == operation_id, operation_events.c.id > after_id)
                 .order_by(operation_events.c.id).limit(limit))
        return [OperationEvent(row.id, row.operation_id, row.at, json.loads(row.payload))
                for row in conn.execute(query)]


def listen(ledger: Ledger, on_notify: Callable[[str, str], None], stop: threading.Event) -> None:
    """Call on_notify(channel, payload) for every NOTIFY on the queue and events channels until `stop`,
    reconnecting after a lost connection. PostgreSQL only (on SQLite there is one process: nothing to hear)."""
    import psycopg

    url = ledger._engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    while not stop.is_set():
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f"LISTEN {QUEUE_CHANNEL}")
                conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                on_notify(QUEUE_CHANNEL, "")  # anything submitted while not listening
                while not stop.is_set():
                    for note in conn.notifies(timeout=0.5, stop_after=100):
                        on_notify(note.channel, note.payload)
        except psycopg.Error:
            stop.wait(1.0)  # the database went away: polling covers the gap until it is back
