"""The Ledger: every query conveyor runs against its database, on SQLite and PostgreSQL alike.

Several OS processes share one ledger (two `conveyor deploy` runs racing), so every read-modify-write runs
in one database transaction that the database itself serialises:

* SQLite: writes open with BEGIN IMMEDIATE, taking the file's write lock before the first read, so the
  read and the write that depends on it cannot interleave with another process. WAL lets readers go on
  meanwhile, and a 30 s busy timeout makes a second writer wait instead of failing.
* PostgreSQL: row locks (SELECT ... FOR UPDATE, upserts) where a row exists to lock, a table lock for the
  global event chain, and an advisory lock around migrations.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Engine,
    Row,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)

from conveyor.errors import BadInput, InfrastructureMissing, Refused
from conveyor.ledger import redact_url
from conveyor.ledger.models import (
    BLOCK_SCOPES,
    RELEASE_KINDS,
    RELEASE_STATUSES,
    Block,
    Event,
    Lease,
    LeaseAttempt,
    NotifyMessage,
    OutboxItem,
    Release,
)
from conveyor.ledger.schema import (
    HEAD_REVISION,
    blocks,
    events,
    leases,
    notify_messages,
    outbox,
    release_counters,
    releases,
    waiters,
)

if TYPE_CHECKING:
    from conveyor.ledger.server_store import ServerStore

SQLITE_BUSY_TIMEOUT = 30.0  # seconds a writer waits for another process's write lock
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK_KEY = 0x636F6E76  # "conv": PostgreSQL advisory lock serialising concurrent migrators


def _now() -> datetime:
    return datetime.now(UTC)


def _unchanged(value: Any) -> Any:
    return value


# ---------------------------------------------------------------------------------------------- opening


def open_store(url: str) -> Ledger:
    """Connect, migrate if needed, and return the Ledger; an unreachable database is InfrastructureMissing."""
    shown = redact_url(url)
    if not url.startswith(("sqlite", "postgresql")):
        raise BadInput(f"unsupported ledger database {shown}: use sqlite:///path or postgresql://...")
    try:
        engine = _make_engine(url)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise BadInput(f"not a usable ledger database URL {shown}: {exc}") from None
    try:
        _ensure_schema(engine)
    except (OperationalError, InterfaceError) as exc:
        engine.dispose()
        reason = _first_line(exc, engine)
        if engine.dialect.name == "sqlite":
            raise InfrastructureMissing(
                f"cannot reach the ledger database {shown}: {reason} (is CONVEYOR_HOME a writable directory?)"
            ) from None
        raise InfrastructureMissing(
            f"cannot reach the ledger database {shown}: {reason} "
            "(start it, or point CONVEYOR_DATABASE_URL at a reachable database)"
        ) from None
    except DatabaseError as exc:  # reached, but not a database conveyor can use: a corrupt or foreign file
        engine.dispose()
        raise _unusable(shown, _first_line(exc, engine)) from None
    except BaseException:
        engine.dispose()
        raise
    return Ledger(engine, shown)


def _unusable(shown: str, reason: str) -> BadInput:
    return BadInput(f"the ledger database {shown} is unusable: {reason} (restore it from a backup, or move it "
                    "aside to start an empty ledger)")


@contextmanager
def _corruption_reported(shown: str) -> Iterator[None]:
    """A damaged page can surface at any query, not only at opening: report it like a damaged file at open.
    Only the driver's generic DatabaseError means that; its subclasses (locks, constraints) pass through."""
    try:
        yield
    except DatabaseError as exc:
        if type(exc) is not DatabaseError:
            raise
        detail = str(exc.orig if exc.orig is not None else exc).strip()
        raise _unusable(shown, detail.splitlines()[0] if detail else "damaged") from None


def _first_line(exc: DatabaseError | InterfaceError, engine: Engine) -> str:
    """The driver's own first line of the error, with the URL's password masked."""
    detail = str(exc.orig if exc.orig is not None else exc).strip()
    reason = detail.splitlines()[0] if detail else type(exc).__name__
    password = engine.url.password
    return reason.replace(str(password), "***") if password else reason


def _make_engine(url: str) -> Engine:
    """An engine with the per-backend settings multi-process sharing needs."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT})
        _install_sqlite_hooks(engine)
        return engine
    return create_engine(
        url, pool_pre_ping=True, connect_args={"connect_timeout": 10, "application_name": "conveyor"}
    )


def _install_sqlite_hooks(engine: Engine) -> None:
    """Take BEGIN away from the sqlite3 driver (SQLAlchemy's documented recipe) so writes can BEGIN IMMEDIATE.

    The driver otherwise opens transactions lazily at the first INSERT/UPDATE, after the reads a write
    depends on, which lets two processes read the same "max number" or "chain head".
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("ledger_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _current_revision(conn: Connection) -> str | None:
    """The alembic_version row, read with plain SQL so an up-to-date ledger never imports Alembic."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _revision_if_recorded(conn: Connection) -> str | None:
    """The alembic_version row in one statement, no catalogue inspection: the check every open pays.
    A database without the table (a new ledger) answers None, and the locked path below looks properly."""
    try:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError):
        conn.rollback()
        return None


def _ensure_schema(engine: Engine) -> None:
    """Bring the database to HEAD_REVISION; a no-op (and no Alembic import) when it is already there.

    Concurrent first runs are serialised (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL) and
    the revision is read again under the lock, so only one process migrates.
    """
    with engine.connect() as conn:  # an unreachable database fails here, before the question is asked
        if _revision_if_recorded(conn) == HEAD_REVISION:
            return
    with engine.execution_options(ledger_write=True).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        current = _current_revision(conn)
        if current == HEAD_REVISION:
            return
        _run_migrations(conn, current)


def _run_migrations(conn: Connection, current: str | None) -> None:
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = conn
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    if current is not None and current not in known:
        raise BadInput(
            f"the ledger database is at schema revision {current!r}, which this conveyor does not know; "
            "it was probably migrated by a newer conveyor"
        )
    command.upgrade(config, "head")


# ---------------------------------------------------------------------------------------------- rows


def _release(row: Row[Any]) -> Release:
    return Release(
        id=row.id,
        app=row.app,
        env=row.env,
        number=row.number,
        kind=row.kind,
        status=row.status,
        sha=row.sha,
        digest=row.digest,
        image=row.image,
        spec=json.loads(row.spec),
        config_digest=row.config_digest,
        config_source=row.config_source,
        actor=row.actor,
        origin=row.origin,
        reason=row.reason,
        forced=bool(row.forced),
        step=row.step,
        error=row.error,
        previous_number=row.previous_number,
        source_release_id=row.promoted_from_id,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        committed_at=row.committed_at,
        trace_id=row.trace_id,
    )


def _event(row: Row[Any]) -> Event:
    return Event(
        id=row.id,
        app=row.app,
        env=row.env,
        release_id=row.release_id,
        at=row.at,
        step=row.step,
        status=row.status,
        message=row.message,
        data=json.loads(row.data),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def _lease(row: Row[Any]) -> Lease:
    return Lease(
        app=row.app,
        env=row.env,
        holder=row.holder,
        actor=row.actor,
        operation=row.operation,
        release_id=row.release_id,
        acquired_at=row.acquired_at,
        heartbeat_at=row.heartbeat_at,
        expires_at=row.expires_at,
    )


def _block(row: Row[Any]) -> Block:
    return Block(
        id=row.id,
        scope=row.scope,
        app=row.app,
        env=row.env,
        reason=row.reason,
        actor=row.actor,
        created_at=row.created_at,
        until=row.until,
    )


def _outbox_item(row: Row[Any]) -> OutboxItem:
    return OutboxItem(
        id=row.id,
        app=row.app,
        env=row.env,
        release_id=row.release_id,
        kind=row.kind,
        payload=json.loads(row.payload),
        created_at=row.created_at,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        delivered_at=row.delivered_at,
        stopped=row.stopped,
    )


def _canonical(value: Any) -> str:
    """One JSON spelling per value (sorted keys, no spaces), so hashes and stored specs are reproducible."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def event_hash(
    prev_hash: str,
    *,
    app: str,
    env: str,
    release_id: int | None,
    at: datetime,
    step: str,
    status: str,
    message: str,
    data: dict[str, Any],
) -> str:
    """sha256(prev_hash + canonical JSON of the event): the link that makes the chain tamper-evident."""
    content = _canonical([app, env, release_id, at.astimezone(UTC).isoformat(), step, status, message, data])
    return hashlib.sha256((prev_hash + content).encode()).hexdigest()


RELEASE_STATE = "release-state"  # the step of the chained record written with every release change


def release_state(release: Release) -> dict[str, Any]:
    """A release row's content as the chain records it: every column, the spec by its sha256 (specs are
    large and already immutable), times in ISO 8601. `audit verify` compares rows with this."""
    state: dict[str, Any] = {}
    for name, value in vars(release).items():
        if name == "spec":
            state["spec_sha256"] = hashlib.sha256(_canonical(value).encode()).hexdigest()
        elif isinstance(value, datetime):
            state[name] = value.astimezone(UTC).isoformat()
        elif name == "trace_id" and not value:
            continue  # records chained before releases had a trace id must still match their rows
        else:
            state[name] = value
    return state


# ---------------------------------------------------------------------------------------------- the ledger


class Ledger:
    """One ledger database. Each method is one short transaction; no state is kept between calls."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.url = url  # redacted: safe to print
        # Applied to what callers write as text (event messages and data, release reasons and errors), so
        # a secret's value quoted by a task or a container never lands in the ledger. Set by the Workspace.
        self.redact: Callable[[Any], Any] = _unchanged
        # Wraps every transaction: a release holds a signal back with it until the transaction has ended, so
        # an interruption never lands inside one (and leaves the database locked). Set by pipeline/release.py.
        self.guard: Callable[[], AbstractContextManager[None]] = nullcontext
        self._engine = engine
        self._writer = engine.execution_options(ledger_write=True)
        self._owns_engine = True

    def __repr__(self) -> str:
        return f"Ledger({self.url!r})"

    def close(self) -> None:
        if self._owns_engine:
            self._engine.dispose()

    def sharing(self) -> Ledger:
        """Another handle on the same database and connection pool, with its own redact and guard hooks (the
        server gives each operation one); closing it leaves the pool open."""
        handle = Ledger(self._engine, self.url)
        handle._owns_engine = False
        return handle

    @property
    def server(self) -> ServerStore:
        """Apps, tokens and the operation queue of `conveyor server`."""
        from conveyor.ledger.server_store import ServerStore

        return ServerStore(self)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction that holds the write lock from its first statement (BEGIN IMMEDIATE on SQLite)."""
        with self.guard(), _corruption_reported(self.url), self._writer.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.guard(), _corruption_reported(self.url), self._engine.begin() as conn:
            yield conn

    @property
    def _postgres(self) -> bool:
        return self._engine.dialect.name == "postgresql"

    def _upsert(self, table: Any) -> Any:
        """The dialect's INSERT with ON CONFLICT support (same API on both backends)."""
        if self._postgres:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    # ------------------------------------------------------------------------------------------ releases

    def create_release(
        self,
        *,
        app: str,
        env: str,
        kind: str,
        sha: str,
        digest: str,
        image: str,
        spec: dict[str, Any],
        config_digest: str,
        config_source: str = "",
        actor: str,
        origin: str,
        reason: str,
        forced: bool,
        previous_number: int | None,
        source_release_id: int | None,
        committed_at: datetime | None = None,
        holder: str | None = None,
        announce: Callable[[Release], list[tuple[str, dict[str, Any]]]] | None = None,
        trace_id: str = "",
    ) -> Release:
        """Record a new pending release with the next gapless number for app+env.

        With `holder`, the release is attached to app+env's lease in the same transaction, so a process
        killed at any instant leaves either no release or one its lease names (a takeover finds it); when
        `holder` does not hold that lease, nothing is recorded (Refused). Only ledger tests and benchmarks
        record releases without a lease. `announce(release)` names outbox items queued in the same transaction."""
        if kind not in RELEASE_KINDS:
            raise ValueError(f"release kind {kind!r} is not one of {RELEASE_KINDS}")
        with self._write() as conn:
            self._lock_chain(conn)  # the chain first, then the lease: every writer locks in this order
            if holder is not None:
                self._lock_own_lease(conn, app, env, holder)
            number = self._next_number(conn, app, env)
            row = conn.execute(
                insert(releases)
                .values(
                    app=app, env=env, number=number, kind=kind, status="pending", sha=sha, digest=digest,
                    image=image, spec=_canonical(spec), config_digest=config_digest,
                    config_source=config_source, actor=actor,
                    origin=origin, reason=self.redact(reason), forced=forced, step="recorded", error="",
                    previous_number=previous_number, promoted_from_id=source_release_id, created_at=_now(),
                    committed_at=committed_at,
                    trace_id=trace_id,
                )
                .returning(*releases.c)
            ).one()
            if holder is not None:
                conn.execute(
                    update(leases)
                    .where(leases.c.app == app, leases.c.env == env, leases.c.holder == holder)
                    .values(release_id=row.id)
                )
            release = _release(row)
            self._record_release_state(conn, release)
            if announce is not None:
                self._queue(conn, app, env, release.id, announce(release))
        return release

    def _queue(self, conn: Connection, app: str, env: str, release_id: int | None,
               items: list[tuple[str, dict[str, Any]]]) -> None:
        """Queue outbox items (kind, payload) in the caller's transaction; no secret value is stored."""
        if not items:
            return
        now = _now()
        conn.execute(insert(outbox), [
            {"app": app, "env": env, "release_id": release_id, "kind": kind,
             "payload": _canonical(self.redact(payload)), "created_at": now, "attempts": 0,
             "next_attempt_at": now, "last_error": "", "delivered_at": None, "stopped": ""}
            for kind, payload in items
        ])

    @staticmethod
    def _lock_own_lease(conn: Connection, app: str, env: str, holder: str) -> None:
        """Row-lock app+env's lease in the caller's transaction; Refused unless `holder` holds it."""
        held = conn.execute(
            select(leases.c.holder)
            .where(leases.c.app == app, leases.c.env == env, leases.c.holder == holder)
            .with_for_update()
        ).one_or_none()
        if held is None:
            raise Refused(f"{app}/{env}: this operation no longer holds the lease (it expired and was taken "
                          "over); nothing was recorded")

    def _next_number(self, conn: Connection, app: str, env: str) -> int:
        """Increment app+env's counter in the caller's transaction; the upsert row-locks it until commit.

        A rolled-back release rolls its number back with it, so numbers stay gapless.
        """
        stmt = self._upsert(release_counters).values(app=app, env=env, last_number=1)
        stmt = stmt.on_conflict_do_update(
            index_elements=[release_counters.c.app, release_counters.c.env],
            set_={"last_number": release_counters.c.last_number + 1},
        ).returning(release_counters.c.last_number)
        return int(conn.execute(stmt).scalar_one())

    def update_release(
        self,
        release_id: int,
        *,
        status: str | None = None,
        step: str | None = None,
        error: str | None = None,
        started: bool = False,
        finished: bool = False,
        outbox_items: list[tuple[str, dict[str, Any]]] | None = None,
        finished_at: datetime | None = None,
    ) -> Release:
        """Move a release along; started/finished stamp started_at/finished_at with the current time.

        outbox_items (kind, payload) are queued in the same transaction: a release recorded as succeeded
        always has its side effects owed, even if the process dies right after."""
        values: dict[str, Any] = {}
        if status is not None:
            if status not in RELEASE_STATUSES:
                raise ValueError(f"release status {status!r} is not one of {RELEASE_STATUSES}")
            values["status"] = status
        if step is not None:
            values["step"] = step
        if error is not None:
            values["error"] = self.redact(error)
        if started:
            values["started_at"] = _now()
        if finished:
            values["finished_at"] = finished_at or _now()
        with self._write() as conn:
            if values:
                self._lock_chain(conn)
                stmt = update(releases).where(releases.c.id == release_id).values(**values)
                row = conn.execute(stmt.returning(*releases.c)).one_or_none()
                if row is not None:
                    self._record_release_state(conn, _release(row))
            else:
                row = conn.execute(select(releases).where(releases.c.id == release_id)).one_or_none()
            if row is not None and outbox_items:
                self._queue(conn, row.app, row.env, row.id, outbox_items)
        if row is None:
            raise BadInput(f"no release with id {release_id} in the ledger")
        return _release(row)

    def get_release(self, app: str, env: str, number: int) -> Release | None:
        query = select(releases).where(
            releases.c.app == app, releases.c.env == env, releases.c.number == number
        )
        with self._read() as conn:
            row = conn.execute(query).one_or_none()
        return _release(row) if row else None

    def get_release_by_id(self, release_id: int) -> Release | None:
        with self._read() as conn:
            row = conn.execute(select(releases).where(releases.c.id == release_id)).one_or_none()
        return _release(row) if row else None

    def live_release(self, app: str, env: str, *, before_number: int | None = None) -> Release | None:
        """What app+env runs now: the highest-numbered succeeded release (later failures replace nothing).
        before_number: the one that was live before release #before_number (what a rollback goes back to)."""
        query = select(releases).where(
            releases.c.app == app, releases.c.env == env, releases.c.status == "succeeded"
        )
        if before_number is not None:
            query = query.where(releases.c.number < before_number)
        query = query.order_by(releases.c.number.desc()).limit(1)
        with self._read() as conn:
            row = conn.execute(query).one_or_none()
        return _release(row) if row else None

    def list_releases(
        self, app: str, env: str | None = None, limit: int = 20, *, before_id: int | None = None
    ) -> list[Release]:
        """Newest first, by id: the order releases were recorded in (an index range read at any ledger size).

        before_id is a keyset cursor: the page after one that ended with that release's id.
        """
        query = select(releases).where(releases.c.app == app)
        if env is not None:
            query = query.where(releases.c.env == env)
        if before_id is not None:
            query = query.where(releases.c.id < before_id)
        query = query.order_by(releases.c.id.desc()).limit(limit)
        with self._read() as conn:
            return [_release(row) for row in conn.execute(query)]

    def unfinished_releases(self, app: str, env: str) -> list[Release]:
        """Releases of app+env still recorded pending or running, oldest first."""
        query = (
            select(releases)
            .where(releases.c.app == app, releases.c.env == env, releases.c.status.in_(("pending", "running")))
            .order_by(releases.c.number)
        )
        with self._read() as conn:
            return [_release(row) for row in conn.execute(query)]

    def releases_by_status(self, statuses: tuple[str, ...], limit: int = 100) -> list[Release]:
        """Every app's releases in these statuses, newest first (the server's recovery view)."""
        query = select(releases).where(releases.c.status.in_(statuses)).order_by(releases.c.id.desc()).limit(limit)
        with self._read() as conn:
            return [_release(row) for row in conn.execute(query)]

    def finished_releases(self, app_envs: Iterable[tuple[str, str]], *, since: datetime,
                          until: datetime) -> list[dict[str, Any]]:
        """What delivery metrics need of each release of these app+envs that finished in [since, until]."""
        pairs = list(app_envs)
        if not pairs:
            return []
        c = releases.c
        query = (select(c.app, c.number, c.kind, c.status, c.previous_number, c.committed_at, c.finished_at)
                 .where(tuple_(c.app, c.env).in_(pairs), c.status.in_(("succeeded", "failed")),
                        c.finished_at >= since, c.finished_at <= until))
        with self._read() as conn:
            return [row._asdict() for row in conn.execute(query)]

    def release_envs(self, app: str) -> list[str]:
        """Every environment the ledger holds a release of for app (also ones no longer configured). Read from
        the release counters, one row per app+env: a DISTINCT over the releases reads every release's index
        entry on PostgreSQL, which has no skip scan."""
        query = select(release_counters.c.env).where(release_counters.c.app == app).order_by(release_counters.c.env)
        with self._read() as conn:
            return [str(env) for env in conn.execute(query).scalars()]

    def releases_between(self, app: str, env: str, after_number: int, up_to_number: int) -> list[Release]:
        """Releases numbered in (after_number, up_to_number], ascending: what a rollback or promote spans."""
        query = (
            select(releases)
            .where(
                releases.c.app == app,
                releases.c.env == env,
                releases.c.number > after_number,
                releases.c.number <= up_to_number,
            )
            .order_by(releases.c.number)
        )
        with self._read() as conn:
            return [_release(row) for row in conn.execute(query)]

    # ------------------------------------------------------------------------------------------ events

    def append_event(
        self,
        *,
        app: str,
        env: str,
        release_id: int | None,
        step: str,
        status: str,
        message: str,
        data: dict[str, Any] | None = None,
    ) -> Event:
        """Append to the global hash chain, reading the chain head under the same lock as the insert."""
        with self._write() as conn:
            self._lock_chain(conn)
            return self._append(conn, app=app, env=env, release_id=release_id, step=step, status=status,
                                message=self.redact(message), data=self.redact(data))

    def _lock_chain(self, conn: Connection) -> None:
        """Serialise appenders before anything else in the transaction (the same order everywhere, so two
        writers never wait on each other's locks). SQLite's BEGIN IMMEDIATE already did."""
        if self._postgres:
            # EXCLUSIVE blocks other appenders (and writers) but not plain SELECTs.
            conn.execute(text("LOCK TABLE events IN EXCLUSIVE MODE"))

    def _append(
        self, conn: Connection, *, app: str, env: str, release_id: int | None, step: str, status: str,
        message: str, data: dict[str, Any] | None,
    ) -> Event:
        """Insert the next event of the chain; the caller holds the chain lock (_lock_chain)."""
        data_text = _canonical(data or {})
        data_value = json.loads(data_text)  # exactly what a later verify_chain will read back
        prev_hash = conn.execute(select(events.c.hash).order_by(events.c.id.desc()).limit(1)).scalar()
        prev_hash = prev_hash or ""
        at = _now()
        digest = event_hash(
            prev_hash, app=app, env=env, release_id=release_id, at=at, step=step, status=status,
            message=message, data=data_value,
        )
        row = conn.execute(
            insert(events)
            .values(
                app=app, env=env, release_id=release_id, at=at, step=step, status=status, message=message,
                data=data_text, prev_hash=prev_hash, hash=digest,
            )
            .returning(*events.c)
        ).one()
        return _event(row)

    def _record_release_state(self, conn: Connection, release: Release) -> None:
        """Chain the release row's new content in the transaction that wrote it: editing the row later
        makes it differ from its newest record, and editing the record breaks the chain."""
        self._append(
            conn, app=release.app, env=release.env, release_id=release.id, step=RELEASE_STATE, status="info",
            message=f"{release.env}#{release.number} {release.status} at step {release.step}",
            data={"release_id": release.id, "state": release_state(release)},
        )

    def chain_head(self) -> Event | None:
        """The newest event: what an outside witness of the chain names."""
        with self._read() as conn:
            row = conn.execute(select(events).order_by(events.c.id.desc()).limit(1)).one_or_none()
        return _event(row) if row else None

    def event_by_id(self, event_id: int) -> Event | None:
        with self._read() as conn:
            row = conn.execute(select(events).where(events.c.id == event_id)).one_or_none()
        return _event(row) if row else None

    def all_releases(self) -> list[Release]:
        """Every release of every app, by id (what `audit verify` checks against the chain)."""
        with self._read() as conn:
            return [_release(row) for row in conn.execute(select(releases).order_by(releases.c.id))]

    def events(
        self,
        *,
        app: str | None = None,
        env: str | None = None,
        release_id: int | None = None,
        step: str | None = None,
    ) -> list[Event]:
        query = select(events).order_by(events.c.id)
        if app is not None:
            query = query.where(events.c.app == app)
        if env is not None:
            query = query.where(events.c.env == env)
        if release_id is not None:
            query = query.where(events.c.release_id == release_id)
        if step is not None:
            query = query.where(events.c.step == step)
        with self._read() as conn:
            return [_event(row) for row in conn.execute(query)]

    def verify_chain(self) -> list[int]:
        """Ids of events whose own hash is wrong or whose prev_hash is not the previous event's hash.

        An edited row fails its own hash; an edited row whose hash was recomputed breaks the next row's link.
        """
        bad: list[int] = []
        previous = ""
        with self._read() as conn:
            for row in conn.execute(select(events).order_by(events.c.id).execution_options(yield_per=1000)):
                expected = event_hash(
                    row.prev_hash, app=row.app, env=row.env, release_id=row.release_id, at=row.at,
                    step=row.step, status=row.status, message=row.message, data=json.loads(row.data),
                )
                if row.prev_hash != previous or row.hash != expected:
                    bad.append(row.id)
                previous = row.hash
        return bad

    # ------------------------------------------------------------------------------------------ leases

    def try_acquire_lease(
        self, *, app: str, env: str, holder: str, actor: str, operation: str, ttl: float, grace: float = 0.0
    ) -> LeaseAttempt:
        """Take app+env's lease if free, or expired for more than `grace` seconds; otherwise report who
        holds it. The grace is the margin for a live holder whose heartbeat waited behind other writers.

        The existing row is locked (FOR UPDATE) before its expiry is judged, so of several processes racing
        for an expired lease exactly one replaces it and the others then see the winner's fresh lease.
        """
        with self._write() as conn:
            while True:
                now = _now()
                mine = dict(
                    app=app, env=env, holder=holder, actor=actor, operation=operation, release_id=None,
                    acquired_at=now, heartbeat_at=now, expires_at=now + timedelta(seconds=ttl),
                )
                stmt = self._upsert(leases).values(**mine).on_conflict_do_nothing(
                    index_elements=[leases.c.app, leases.c.env]
                )
                row = conn.execute(stmt.returning(*leases.c)).one_or_none()
                if row is not None:
                    return LeaseAttempt(acquired=True, holder=_lease(row), taken_over=None)
                current = conn.execute(
                    select(leases).where(leases.c.app == app, leases.c.env == env).with_for_update()
                ).one_or_none()
                if current is None:
                    continue  # released between our insert and our select: try the insert again
                now = _now()
                if current.expires_at + timedelta(seconds=grace) >= now:
                    return LeaseAttempt(acquired=False, holder=_lease(current), taken_over=None)
                mine.update(acquired_at=now, heartbeat_at=now, expires_at=now + timedelta(seconds=ttl))
                row = conn.execute(
                    update(leases)
                    .where(leases.c.app == app, leases.c.env == env)
                    .values(**mine)
                    .returning(*leases.c)
                ).one()
                return LeaseAttempt(acquired=True, holder=_lease(row), taken_over=_lease(current))

    def seize_lease(self, *, app: str, env: str, holder: str, actor: str, operation: str, ttl: float) -> Lease | None:
        """Take app+env's lease even though it has not expired (`conveyor recover --force`: its holder is
        known to be stuck); returns the lease it replaced, or None when there was none."""
        now = _now()
        mine = dict(app=app, env=env, holder=holder, actor=actor, operation=operation, release_id=None,
                    acquired_at=now, heartbeat_at=now, expires_at=now + timedelta(seconds=ttl))
        with self._write() as conn:
            current = conn.execute(
                select(leases).where(leases.c.app == app, leases.c.env == env).with_for_update()
            ).one_or_none()
            if current is None:
                conn.execute(insert(leases).values(**mine))
                return None
            conn.execute(update(leases).where(leases.c.app == app, leases.c.env == env).values(**mine))
        return _lease(current)

    def heartbeat(self, *, app: str, env: str, holder: str, ttl: float) -> bool:
        """Push our lease's expiry ttl seconds ahead; False means someone took it over (stop working)."""
        now = _now()
        stmt = (
            update(leases)
            .where(leases.c.app == app, leases.c.env == env, leases.c.holder == holder)
            .values(heartbeat_at=now, expires_at=now + timedelta(seconds=ttl))
        )
        with self._write() as conn:
            return conn.execute(stmt).rowcount == 1

    def set_lease_release(self, *, app: str, env: str, holder: str, release_id: int) -> None:
        """Note which release the lease's operation is applying, so a takeover can mark it interrupted."""
        stmt = (
            update(leases)
            .where(leases.c.app == app, leases.c.env == env, leases.c.holder == holder)
            .values(release_id=release_id)
        )
        with self._write() as conn:
            conn.execute(stmt)

    def release_lease(self, *, app: str, env: str, holder: str) -> None:
        """Give the lease up; a no-op unless `holder` still holds it (never drops someone else's lease)."""
        stmt = delete(leases).where(leases.c.app == app, leases.c.env == env, leases.c.holder == holder)
        with self._write() as conn:
            conn.execute(stmt)

    def get_lease(self, app: str, env: str) -> Lease | None:
        with self._read() as conn:
            row = conn.execute(select(leases).where(leases.c.app == app, leases.c.env == env)).one_or_none()
        return _lease(row) if row else None

    def list_leases(self) -> list[Lease]:
        with self._read() as conn:
            return [_lease(row) for row in conn.execute(select(leases).order_by(leases.c.app, leases.c.env))]

    # ------------------------------------------------------------------------------------------ waiters

    def enqueue_waiter(
        self, *, app: str, env: str, holder: str, actor: str, operation: str, ticket: int | None = None
    ) -> int:
        """Join the FIFO queue for app+env's lease; the returned ticket id is the place in the queue.

        `ticket` puts a waiter whose row was forgotten back at its old place (ids are never reused)."""
        now = _now()
        values = dict(app=app, env=env, holder=holder, actor=actor, operation=operation,
                      enqueued_at=now, heartbeat_at=now)
        if ticket is not None:
            values["id"] = ticket
        with self._write() as conn:
            return int(conn.execute(insert(waiters).values(**values).returning(waiters.c.id)).scalar_one())

    def touch_waiter(self, ticket: int) -> bool:
        """Heartbeat a ticket so it is not skipped as silent; False if its row was forgotten (enqueue again)."""
        stmt = update(waiters).where(waiters.c.id == ticket).values(heartbeat_at=_now())
        with self._write() as conn:
            return conn.execute(stmt).rowcount == 1

    def first_waiter(self, *, app: str, env: str, stale_after: float) -> int | None:
        """The ticket heading app+env's queue, skipping tickets silent for more than `stale_after` seconds.

        A read, not a write: polling waiters never contend for the write lock, and a skipped ticket keeps
        its place, so a waiter that was only late heads the queue again with its next heartbeat."""
        cutoff = _now() - timedelta(seconds=stale_after)
        query = select(func.min(waiters.c.id)).where(
            waiters.c.app == app, waiters.c.env == env, waiters.c.heartbeat_at >= cutoff
        )
        with self._read() as conn:
            return conn.execute(query).scalar()

    def remove_waiter(self, ticket: int, *, forget_silent_after: float | None = None) -> None:
        """Leave the queue; with forget_silent_after, also forget app+env's tickets silent that long (their
        waiters died: a waiter that was only late puts its ticket back at the same place)."""
        with self._write() as conn:
            row = conn.execute(
                delete(waiters).where(waiters.c.id == ticket).returning(waiters.c.app, waiters.c.env)
            ).one_or_none()
            if row is not None and forget_silent_after is not None:
                cutoff = _now() - timedelta(seconds=forget_silent_after)
                conn.execute(delete(waiters).where(
                    waiters.c.app == row.app, waiters.c.env == row.env, waiters.c.heartbeat_at < cutoff
                ))

    # ------------------------------------------------------------------------------------------ blocks

    @staticmethod
    def _block_target(scope: str, app: str, env: str) -> tuple[str, str]:
        """The (app, env) a scope is keyed on: org ignores both, app ignores env."""
        if scope not in BLOCK_SCOPES:
            raise BadInput(f"block scope {scope!r} is not one of {', '.join(BLOCK_SCOPES)}")
        if scope == "org":
            return "", ""
        if not app:
            raise BadInput(f"a {scope}-scope block needs an app")
        if scope == "app":
            return app, ""
        if not env:
            raise BadInput("an env-scope block needs an env")
        return app, env

    def add_block(
        self, *, scope: str, app: str, env: str, reason: str, actor: str, until: datetime | None,
        announce: Callable[[Block], tuple[str, list[tuple[str, dict[str, Any]]]]] | None = None,
    ) -> Block:
        """Stop deploys for an env, an app, or the whole org, until lifted or until `until` passes.
        `announce(block)` gives (the app whose outbox it is, items) to queue in the same transaction."""
        app, env = self._block_target(scope, app, env)
        stmt = insert(blocks).values(
            scope=scope, app=app, env=env, reason=reason, actor=actor, created_at=_now(), until=until
        )
        with self._write() as conn:
            block = _block(conn.execute(stmt.returning(*blocks.c)).one())
            if announce is not None:
                owner, items = announce(block)
                self._queue(conn, owner, env, None, items)
        return block

    def lift_blocks(self, *, scope: str, app: str, env: str, actor: str,
                    announce: Callable[[list[Block]], tuple[str, list[tuple[str, dict[str, Any]]]]] | None = None,
                    ) -> int:
        """Lift the active blocks of exactly this scope and target; rows are kept, stamped with who lifted.
        `announce(lifted)` gives (the app whose outbox it is, items) to queue in the same transaction."""
        app, env = self._block_target(scope, app, env)
        now = _now()
        stmt = (
            update(blocks)
            .where(
                blocks.c.scope == scope,
                blocks.c.app == app,
                blocks.c.env == env,
                blocks.c.lifted_at.is_(None),
                or_(blocks.c.until.is_(None), blocks.c.until > now),
            )
            .values(lifted_at=now, lifted_by=actor)
            .returning(*blocks.c)
        )
        with self._write() as conn:
            lifted = [_block(row) for row in conn.execute(stmt)]
            if lifted and announce is not None:
                owner, items = announce(lifted)
                self._queue(conn, owner, env, None, items)
        return len(lifted)

    def active_blocks(self, app: str, env: str) -> list[Block]:
        """Blocks that stop a deploy of app to env now: its env block, its app block, and org blocks."""
        now = _now()
        query = (
            select(blocks)
            .where(
                or_(
                    and_(blocks.c.scope == "env", blocks.c.app == app, blocks.c.env == env),
                    and_(blocks.c.scope == "app", blocks.c.app == app),
                    blocks.c.scope == "org",
                ),
                blocks.c.lifted_at.is_(None),
                or_(blocks.c.until.is_(None), blocks.c.until > now),
            )
            .order_by(blocks.c.id)
        )
        with self._read() as conn:
            return [_block(row) for row in conn.execute(query)]

    # ------------------------------------------------------------------------------------------ outbox

    def undelivered(self, app: str | None = None) -> list[OutboxItem]:
        """Items still owed, oldest first (the delivery order)."""
        query = select(outbox).where(outbox.c.delivered_at.is_(None))
        if app is not None:
            query = query.where(outbox.c.app == app)
        with self._read() as conn:
            return [_outbox_item(row) for row in conn.execute(query.order_by(outbox.c.id))]

    def outbox_items(self, *, app: str, env: str, since: datetime) -> list[OutboxItem]:
        """Items for app+env created at or after `since`, delivered or not (to keep ref names distinct)."""
        query = select(outbox).where(outbox.c.app == app, outbox.c.env == env, outbox.c.created_at >= since)
        with self._read() as conn:
            return [_outbox_item(row) for row in conn.execute(query.order_by(outbox.c.id))]

    def mark_delivered(self, item_id: int) -> None:
        stmt = update(outbox).where(outbox.c.id == item_id).values(
            delivered_at=_now(), attempts=outbox.c.attempts + 1, last_error="", stopped=""
        )
        with self._write() as conn:
            conn.execute(stmt)

    def mark_attempt_failed(self, item_id: int, *, error: str, retry_at: datetime, stopped: str = "") -> OutboxItem:
        """`stopped`: why no automatic retry can help (the item waits for `conveyor outbox flush`)."""
        stmt = (
            update(outbox).where(outbox.c.id == item_id)
            .values(attempts=outbox.c.attempts + 1, last_error=self.redact(error), next_attempt_at=retry_at,
                    stopped=self.redact(stopped))
            .returning(*outbox.c)
        )
        with self._write() as conn:
            return _outbox_item(conn.execute(stmt).one())

    # ------------------------------------------------------------------------------------------ notify

    def notify_message(self, app: str, destination: str, operation: str) -> NotifyMessage | None:
        query = select(notify_messages).where(
            notify_messages.c.app == app, notify_messages.c.destination == destination,
            notify_messages.c.operation == operation,
        )
        with self._read() as conn:
            row = conn.execute(query).one_or_none()
        return NotifyMessage(row.channel, row.ts, row.claimed_at) if row else None

    def claim_notify_message(self, app: str, destination: str, operation: str, channel: str) -> None:
        """Note, before posting, that an operation's message is being posted (ts unknown until Slack answers)."""
        stmt = self._upsert(notify_messages).values(
            app=app, destination=destination, operation=operation, channel=channel, ts=None, claimed_at=_now()
        ).on_conflict_do_nothing()
        with self._write() as conn:
            conn.execute(stmt)

    def set_notify_ts(self, app: str, destination: str, operation: str, *, channel: str, ts: str) -> None:
        """Slack answered: the message's channel id and ts, which later updates address."""
        stmt = update(notify_messages).where(
            notify_messages.c.app == app, notify_messages.c.destination == destination,
            notify_messages.c.operation == operation,
        ).values(channel=channel, ts=ts)
        with self._write() as conn:
            conn.execute(stmt)
