"""The ledger on a real SQLite file and a real PostgreSQL server: every test runs on both via `database_url`.

Concurrency tests start real OS processes (as two `conveyor deploy` runs would be), each with its own
open_ledger, held at a barrier and released together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from conveyor.errors import BadInput, InfrastructureMissing
from conveyor.ledger import default_database_url, open_ledger, redact_url
from conveyor.ledger.schema import HEAD_REVISION, metadata
from conveyor.ledger.store import Ledger, event_hash
from devstack import free_port

REPO = Path(__file__).resolve().parents[1]

# Run in child processes: open the ledger, say "ready", wait for the go file, then do the work and print
# the outcome as one JSON line.
WORKER = r"""
import json, os, sys, time
from conveyor.ledger import open_ledger

mode, url, go, arg = sys.argv[1:5]
ledger = open_ledger(url)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
if mode == "releases":
    numbers = []
    for _ in range(int(arg)):
        release = ledger.create_release(
            app="web", env="prod", kind="deploy", sha="abc", digest="sha256:d", image="r/web@sha256:d",
            spec={"pid": os.getpid()}, config_digest="c", actor="racer", origin="test", reason="",
            forced=False, previous_number=None, source_release_id=None,
        )
        numbers.append(release.number)
    print(json.dumps(numbers))
elif mode == "lease":
    attempt = ledger.try_acquire_lease(
        app="web", env="prod", holder=arg, actor="racer", operation="deploy", ttl=60
    )
    print(json.dumps({
        "acquired": attempt.acquired,
        "holder": attempt.holder.holder if attempt.holder else None,
        "taken_over": attempt.taken_over.holder if attempt.taken_over else None,
    }))
elif mode == "events":
    for i in range(int(arg)):
        ledger.append_event(app="web", env="prod", release_id=None, step="race", status="info",
                            message=f"{os.getpid()} {i}", data={"i": i})
    print(json.dumps("done"))
ledger.close()
"""


def run_racers(tmp_path: Path, mode: str, url: str, args: list[str]) -> list[Any]:
    """Start one worker process per arg, release them together once all are ready, return their outputs."""
    go = tmp_path / f"go-{mode}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, mode, url, str(go), arg],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for arg in args
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", proc.communicate()[1]
        go.touch()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    opened = open_ledger(database_url)
    yield opened
    opened.close()


def new_release(ledger: Ledger, app: str = "web", env: str = "prod", **overrides: Any) -> Any:
    values: dict[str, Any] = dict(
        app=app, env=env, kind="deploy", sha="0123abc", digest="sha256:feed", image="reg/web@sha256:feed",
        spec={"image": "reg/web@sha256:feed"}, config_digest="sha256:conf", actor="alice", origin="cli",
        reason="", forced=False, previous_number=None, source_release_id=None,
    )
    values.update(overrides)
    return ledger.create_release(**values)


def raw_engine(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def is_utc_now(value: datetime) -> bool:
    return value.utcoffset() == timedelta(0) and abs(datetime.now(UTC) - value) < timedelta(seconds=30)


# ---------------------------------------------------------------------------------------------- migrations


def test_fresh_database_is_migrated_to_the_schema(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from conveyor.ledger.store import MIGRATIONS

    open_ledger(database_url).close()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION
    engine = raw_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION
        tables = set(sa.inspect(conn).get_table_names())
        assert {"releases", "release_counters", "events", "leases", "waiters", "blocks"} <= tables
        # The migration builds exactly what schema.py describes (columns, types, indexes, constraints).
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        if conn.dialect.name == "sqlite":
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()


def test_reopening_a_migrated_ledger_is_a_no_op_that_never_loads_alembic(database_url: str) -> None:
    with_data = open_ledger(database_url)
    release = new_release(with_data)
    with_data.close()
    script = (
        "import sys\n"
        "import conveyor.ledger\n"
        "assert 'sqlalchemy' not in sys.modules, 'importing conveyor.ledger loaded sqlalchemy'\n"
        f"ledger = conveyor.ledger.open_ledger({database_url!r})\n"
        "assert 'alembic' not in sys.modules, 'alembic was imported for an up-to-date ledger'\n"
        f"print(ledger.get_release_by_id({release.id}).number)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    engine = raw_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM releases")).scalar() == 1
    engine.dispose()


def test_opening_an_up_to_date_ledger_asks_for_its_revision_in_one_statement(database_url: str) -> None:
    open_ledger(database_url).close()
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, _parameters: Any, _context: Any, _many: bool) -> None:
        seen.append(statement)

    sa.event.listen(sa.Engine, "before_cursor_execute", record)
    try:
        open_ledger(database_url).close()
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", record)
    assert [s for s in seen if "alembic_version" in s] == ["SELECT version_num FROM alembic_version"]
    catalogue = ("table_info", "sqlite_master", "pg_class", "information_schema")
    assert not [s for s in seen if any(word in s for word in catalogue)], seen  # no inspection on every open


def test_a_database_migrated_by_a_newer_conveyor_is_refused(database_url: str) -> None:
    open_ledger(database_url).close()
    engine = raw_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(BadInput, match="9999"):
        open_ledger(database_url)


# ---------------------------------------------------------------------------------------------- urls & errors


def test_default_url_comes_from_the_environment(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if database_url.startswith("sqlite"):
        monkeypatch.delenv("CONVEYOR_DATABASE_URL", raising=False)
        home = tmp_path / "state" / "conveyor"
        monkeypatch.setenv("CONVEYOR_HOME", str(home))
        assert default_database_url() == f"sqlite:///{home / 'ledger.db'}"
        assert home.is_dir()
        expected_file: Path | None = home / "ledger.db"
    else:
        # Users paste postgres:// URLs; they must be routed to psycopg 3.
        pasted = database_url.replace("postgresql+psycopg://", "postgres://")
        monkeypatch.setenv("CONVEYOR_DATABASE_URL", pasted)
        assert default_database_url() == database_url
        expected_file = None
    opened = open_ledger()
    new_release(opened)
    opened.close()
    if expected_file is not None:
        assert expected_file.stat().st_size > 0


def test_unreachable_database_is_infrastructure_missing_without_the_password(
    database_url: str, tmp_path: Path
) -> None:
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'ledger.db'}"
        secret = None
    else:
        secret = "s3cr3t-pw"
        url = f"postgresql://deployer:{secret}@127.0.0.1:{free_port()}/ledger"
    with pytest.raises(InfrastructureMissing) as caught:
        open_ledger(url)
    message = caught.value.message
    assert "cannot reach the ledger database" in message
    if secret:
        assert secret not in message and secret not in str(caught.value)
        assert "deployer:***@127.0.0.1" in message
    assert redact_url("postgresql+psycopg://u:p@ss@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    with pytest.raises(BadInput, match="unsupported") as unsupported:
        open_ledger("mysql://deployer:hunter2@db.example/ledger")
    assert "hunter2" not in unsupported.value.message


def test_ledger_url_is_redacted(database_url: str) -> None:
    opened = open_ledger(database_url)
    try:
        assert opened.url == redact_url(database_url)
        assert "***" not in opened.url  # the fixture URLs carry no password, so nothing to hide
    finally:
        opened.close()


# ---------------------------------------------------------------------------------------------- releases


def test_numbers_are_gapless_per_app_and_env(ledger: Ledger) -> None:
    assert [new_release(ledger, env="staging").number for _ in range(3)] == [1, 2, 3]
    assert new_release(ledger, env="prod").number == 1
    assert new_release(ledger, app="api", env="staging").number == 1
    assert new_release(ledger, env="staging").number == 4
    fresh = new_release(ledger, env="prod")
    assert (fresh.number, fresh.status, fresh.step, fresh.error) == (2, "pending", "recorded", "")
    assert is_utc_now(fresh.created_at)
    assert fresh.started_at is None and fresh.finished_at is None


REFUSE_INSERT = {
    "sqlite": [
        "CREATE TRIGGER refuse_release BEFORE INSERT ON releases WHEN NEW.sha = 'refused' "
        "BEGIN SELECT RAISE(ABORT, 'release refused by the test trigger'); END",
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_release() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.sha = 'refused' THEN RAISE EXCEPTION 'release refused by the test trigger'; END IF; "
        "RETURN NEW; END $$",
        "CREATE TRIGGER refuse_release BEFORE INSERT ON releases FOR EACH ROW EXECUTE FUNCTION refuse_release()",
    ],
}


def test_an_insert_that_fails_after_the_number_was_taken_leaves_no_gap(ledger: Ledger, database_url: str) -> None:
    """The counter is bumped, then the release row is inserted: a failing insert must take the bump back."""
    assert new_release(ledger).number == 1
    engine = raw_engine(database_url)
    with engine.begin() as conn:
        for statement in REFUSE_INSERT[conn.dialect.name]:
            conn.exec_driver_sql(statement)
    engine.dispose()
    with pytest.raises(sa.exc.DatabaseError, match="refused by the test trigger"):
        new_release(ledger, sha="refused")
    assert new_release(ledger).number == 2


def test_concurrent_processes_get_unique_gapless_numbers(database_url: str, tmp_path: Path) -> None:
    # The database is fresh: the racers also race to migrate it.
    per_process = 5
    results = run_racers(tmp_path, "releases", database_url, [str(per_process)] * 8)
    numbers = sorted(n for batch in results for n in batch)
    assert numbers == list(range(1, 8 * per_process + 1))
    for batch in results:
        assert batch == sorted(batch)
    opened = open_ledger(database_url)
    try:
        stored = opened.releases_between("web", "prod", 0, 1000)
        assert [r.number for r in stored] == list(range(1, 8 * per_process + 1))
        assert new_release(opened).number == 8 * per_process + 1
    finally:
        opened.close()


def test_update_get_and_live_release(ledger: Ledger) -> None:
    assert ledger.live_release("web", "prod") is None
    first, second, third = (new_release(ledger) for _ in range(3))

    running = ledger.update_release(first.id, status="running", step="apply", started=True)
    assert (running.status, running.step) == ("running", "apply")
    assert running.started_at is not None and is_utc_now(running.started_at)
    assert running.finished_at is None
    done = ledger.update_release(first.id, status="succeeded", step="done", finished=True)
    assert done.finished_at is not None and is_utc_now(done.finished_at)
    assert done.started_at == running.started_at
    assert ledger.live_release("web", "prod") == done

    ledger.update_release(second.id, status="succeeded", finished=True)
    failed = ledger.update_release(third.id, status="failed", error="health check timed out", finished=True)
    assert failed.error == "health check timed out"
    new_release(ledger)  # a later pending release does not change what is live either
    live = ledger.live_release("web", "prod")
    assert live is not None and live.number == second.number
    assert ledger.live_release("web", "staging") is None
    # what was live before #2 (a rollback's default target), and before #1: nothing
    assert ledger.live_release("web", "prod", before_number=second.number) == done
    assert ledger.live_release("web", "prod", before_number=first.number) is None

    assert ledger.get_release("web", "prod", 3) == failed
    assert ledger.get_release_by_id(third.id) == failed
    assert ledger.get_release("web", "prod", 99) is None
    assert ledger.get_release_by_id(10_000) is None
    with pytest.raises(ValueError, match="exploded"):
        ledger.update_release(first.id, status="exploded")
    assert ledger.get_release_by_id(first.id) == done
    with pytest.raises(BadInput):
        ledger.update_release(10_000, status="failed")
    with pytest.raises(ValueError, match="kind"):
        new_release(ledger, kind="yolo")


def test_spec_and_provenance_round_trip(ledger: Ledger) -> None:
    spec = {
        "image": "reg/web@sha256:feed",
        "env": {"GREETING": "héllo ✓", "EMPTY": ""},
        "ports": [8080, 8443],
        "health": {"path": "/healthz", "timeout": 2.5, "enabled": True, "retries": None},
        "tasks": [{"name": "migrate", "cmd": ["./manage", "migrate"]}],
    }
    source = new_release(ledger, env="staging")
    promoted = new_release(
        ledger, kind="promote", spec=spec, forced=True, previous_number=7, source_release_id=source.id,
        reason="ship it", origin="ci", actor="bob",
    )
    fetched = ledger.get_release_by_id(promoted.id)
    assert fetched is not None
    assert fetched.spec == spec
    assert (fetched.kind, fetched.forced, fetched.previous_number, fetched.source_release_id) == (
        "promote", True, 7, source.id,
    )
    assert (fetched.reason, fetched.origin, fetched.actor) == ("ship it", "ci", "bob")
    assert fetched == promoted


def test_list_releases_newest_first_and_releases_between(ledger: Ledger) -> None:
    r1, r2 = new_release(ledger), new_release(ledger)
    ledger.update_release(r2.id, status="succeeded", finished=True)
    ledger.update_release(r1.id, status="failed", finished=True)  # finishing later does not move it up
    r3 = new_release(ledger)
    other = new_release(ledger, env="staging")
    new_release(ledger, app="api")

    assert [r.id for r in ledger.list_releases("web", "prod")] == [r3.id, r2.id, r1.id]
    assert [r.id for r in ledger.list_releases("web", "prod", limit=2)] == [r3.id, r2.id]
    assert [r.id for r in ledger.list_releases("web")] == [other.id, r3.id, r2.id, r1.id]
    assert ledger.list_releases("nope") == []

    assert [r.number for r in ledger.releases_between("web", "prod", 1, 3)] == [2, 3]
    assert [r.number for r in ledger.releases_between("web", "prod", 0, 2)] == [1, 2]
    assert ledger.releases_between("web", "prod", 3, 3) == []


def test_list_releases_pages_with_a_keyset_cursor(ledger: Ledger) -> None:
    made = [new_release(ledger, env=("prod", "staging")[n % 2]) for n in range(7)]
    new_release(ledger, app="api")
    newest_first = [r.id for r in reversed(made)]

    pages, cursor = [], None
    while page := ledger.list_releases("web", limit=3, before_id=cursor):
        pages.append([r.id for r in page])
        cursor = page[-1].id
    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:]]
    prod = [r.id for r in reversed(made) if r.env == "prod"]
    first = ledger.list_releases("web", "prod", limit=2)
    assert [r.id for r in first] == prod[:2]
    assert [r.id for r in ledger.list_releases("web", "prod", limit=10, before_id=first[-1].id)] == prod[2:]
    assert ledger.list_releases("web", before_id=made[0].id) == []


def _statements(ledger: Ledger, call: Any) -> list[tuple[str, Any]]:
    """The SQL (and parameters) a Ledger method sends, captured from its own engine."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    engine = ledger._engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return seen


def _plan(database_url: str, statement: str, parameters: Any) -> str:
    """The database's own plan for a statement. PostgreSQL is told to avoid sequential scans, so on these
    tiny tables it shows what an index can do; a plan that still scans or sorts has no index to use."""
    engine = raw_engine(database_url)
    with engine.connect() as conn:
        cursor = conn.connection.cursor()
        if conn.dialect.name == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            plan = "\n".join(str(row[-1]) for row in cursor.fetchall())
        else:
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("EXPLAIN " + statement, parameters)
            plan = "\n".join(row[0] for row in cursor.fetchall())
    engine.dispose()
    return plan


HOUR_AGO = datetime.now(UTC) - timedelta(hours=1)


@pytest.mark.parametrize(
    ("call", "sqlite_search", "pg_index", "exact"),
    [
        (lambda ledger: ledger.live_release("web", "prod"), "(app=? AND env=? AND status=?)",
         "ix_releases_app_env_status_number", True),
        (lambda ledger: ledger.list_releases("web", limit=20), "(app=?)", "ix_releases_app_id", True),
        (lambda ledger: ledger.list_releases("web", "prod", limit=20), "(app=? AND env=?)",
         "ix_releases_app_env_id", True),
        (lambda ledger: ledger.list_releases("web", "prod", limit=20, before_id=3), "(app=? AND env=? AND id<?)",
         "ix_releases_app_env_id", True),
        (lambda ledger: ledger.releases_between("web", "prod", 1, 3), "(app=? AND env=? AND number>? AND number<?)",
         "uq_releases_app_env_number", True),
        # not exact: sorting (and filtering by step) one release's few events, one env's items of the last hour
        (lambda ledger: ledger.events(release_id=1, step="health"), "(release_id=?)", "ix_events_release_id", False),
        (lambda ledger: ledger.outbox_items(app="web", env="prod", since=HOUR_AGO),
         "(app=? AND env=? AND created_at>?)", "ix_outbox_app_env_created_at", False),
    ],
    ids=["live_release", "history", "history_env", "history_page", "releases_between", "events_of_release",
         "outbox_items"],
)
def test_release_queries_read_an_index_range_never_every_release(
    ledger: Ledger, database_url: str, call: Any, sqlite_search: str, pg_index: str, exact: bool
) -> None:
    """Each query is answered by an index range read that already holds every condition and the order, so
    its cost does not grow with the ledger (bench/ledger_scale.py measures that at 1,000,000 releases)."""
    for n in range(6):
        release = new_release(ledger, env=("prod", "staging")[n % 2])
        ledger.append_event(app="web", env=release.env, release_id=release.id, step="health", status="ok",
                            message="healthy")
        ledger.update_release(release.id, status="succeeded", finished=True,
                              outbox_items=[("tag", {"name": f"{release.env}-{release.number}"})])
    statements = _statements(ledger, lambda: call(ledger))
    assert statements
    for statement, parameters in statements:
        plan = _plan(database_url, statement, parameters)
        if database_url.startswith("sqlite"):
            assert "SCAN" not in plan and sqlite_search in plan, plan
            assert "TEMP B-TREE" not in plan or not exact, plan  # ordered by the index, not sorted afterwards
        else:
            assert "Seq Scan" not in plan and pg_index in plan, plan
            assert ("Filter:" not in plan and "Sort" not in plan) or not exact, plan


# ---------------------------------------------------------------------------------------------- events


def test_event_chain_detects_tampering(ledger: Ledger, database_url: str) -> None:
    release = new_release(ledger)
    appended = [
        ledger.append_event(app="web", env="prod", release_id=release.id, step="build", status="started",
                            message="building"),
        ledger.append_event(app="web", env="prod", release_id=release.id, step="build", status="ok",
                            message="built", data={"digest": "sha256:feed", "layers": [1, 2]}),
        ledger.append_event(app="web", env="staging", release_id=None, step="block", status="info",
                            message="blocked"),
        ledger.append_event(app="api", env="prod", release_id=None, step="deploy", status="failed",
                            message="nope", data={"why": "ünïcode"}),
    ]
    record, = ledger.events(step="release-state")  # the release row's content, chained when it was created
    assert record.prev_hash == "" and appended[0].prev_hash == record.hash
    for before, after in zip(appended, appended[1:], strict=False):
        assert after.prev_hash == before.hash and after.id > before.id
    assert appended[1].data == {"digest": "sha256:feed", "layers": [1, 2]}
    assert appended[0].data == {}
    assert all(is_utc_now(e.at) for e in appended)

    assert ledger.events() == [record, *appended]
    assert ledger.events(app="web") == [record, *appended[:3]]
    assert ledger.events(app="web", env="prod") == [record, *appended[:2]]
    assert ledger.events(release_id=release.id, step="build") == appended[:2]
    assert ledger.events(step="deploy") == appended[3:]
    assert ledger.verify_chain() == []

    tampered = appended[1]
    engine = raw_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE events SET message = 'all fine' WHERE id = :id"), {"id": tampered.id})
    assert ledger.verify_chain() == [tampered.id]

    # A forger who also recomputes the edited row's hash breaks the next row's link instead.
    forged = event_hash(
        tampered.prev_hash, app=tampered.app, env=tampered.env, release_id=tampered.release_id,
        at=tampered.at, step=tampered.step, status=tampered.status, message="all fine", data=tampered.data,
    )
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE events SET hash = :h WHERE id = :id"), {"h": forged, "id": tampered.id})
    engine.dispose()
    assert ledger.verify_chain() == [appended[2].id]


def test_concurrent_appenders_keep_one_chain(ledger: Ledger, database_url: str, tmp_path: Path) -> None:
    ledger.append_event(
        app="web", env="prod", release_id=None, step="start", status="info", message="genesis"
    )
    run_racers(tmp_path, "events", database_url, ["15"] * 6)
    chain = ledger.events()
    assert len(chain) == 1 + 6 * 15
    assert len({e.prev_hash for e in chain}) == len(chain)  # no two events claim the same predecessor
    assert ledger.verify_chain() == []


# ---------------------------------------------------------------------------------------------- leases


def acquire(ledger: Ledger, holder: str, ttl: float = 60, env: str = "prod") -> Any:
    return ledger.try_acquire_lease(
        app="web", env=env, holder=holder, actor=f"{holder}-actor", operation=f"deploy by {holder}", ttl=ttl
    )


def test_lease_acquire_refuse_heartbeat_release(ledger: Ledger) -> None:
    assert ledger.get_lease("web", "prod") is None
    first = acquire(ledger, "h1", ttl=30)
    assert first.acquired and first.taken_over is None
    assert first.holder.holder == "h1" and first.holder.release_id is None
    assert is_utc_now(first.holder.acquired_at)
    assert first.holder.expires_at - first.holder.acquired_at == timedelta(seconds=30)

    refused = acquire(ledger, "h2")
    assert not refused.acquired and refused.taken_over is None
    assert refused.holder == first.holder  # who holds it, as they took it
    assert (refused.holder.actor, refused.holder.operation) == ("h1-actor", "deploy by h1")

    assert ledger.heartbeat(app="web", env="prod", holder="h1", ttl=600)
    extended = ledger.get_lease("web", "prod")
    assert extended is not None and extended.expires_at > first.holder.expires_at + timedelta(seconds=500)
    assert extended.heartbeat_at >= first.holder.heartbeat_at
    assert extended.acquired_at == first.holder.acquired_at
    assert not ledger.heartbeat(app="web", env="prod", holder="h2", ttl=600)

    release = new_release(ledger)
    ledger.set_lease_release(app="web", env="prod", holder="h1", release_id=release.id)
    ledger.set_lease_release(app="web", env="prod", holder="h2", release_id=release.id)  # not h2's to set
    other = acquire(ledger, "h3", env="staging")
    assert other.acquired
    leases = ledger.list_leases()
    assert [(le.env, le.holder, le.release_id) for le in leases] == [
        ("prod", "h1", release.id), ("staging", "h3", None),
    ]

    ledger.release_lease(app="web", env="prod", holder="h2")  # not the holder: nothing happens
    assert ledger.get_lease("web", "prod") == leases[0]
    ledger.release_lease(app="web", env="prod", holder="h1")
    assert ledger.get_lease("web", "prod") is None
    assert acquire(ledger, "h2").acquired


def test_expired_lease_is_taken_over(ledger: Ledger) -> None:
    old = acquire(ledger, "crashed", ttl=1)
    release = new_release(ledger)
    ledger.set_lease_release(app="web", env="prod", holder="crashed", release_id=release.id)
    assert not acquire(ledger, "early").acquired  # not expired yet
    time.sleep(1.2)
    attempt = acquire(ledger, "rescuer")
    assert attempt.acquired
    assert attempt.holder.holder == "rescuer" and attempt.holder.release_id is None
    assert attempt.taken_over is not None
    assert attempt.taken_over.holder == "crashed"
    assert attempt.taken_over.release_id == release.id  # so the pipeline can mark it interrupted
    assert attempt.taken_over.acquired_at == old.holder.acquired_at
    assert ledger.get_lease("web", "prod") == attempt.holder
    # The crashed holder, if it wakes up, learns it lost the lease and cannot drop the new one.
    assert not ledger.heartbeat(app="web", env="prod", holder="crashed", ttl=60)
    ledger.release_lease(app="web", env="prod", holder="crashed")
    assert ledger.get_lease("web", "prod") == attempt.holder


def test_an_expired_lease_is_kept_through_the_grace(ledger: Ledger) -> None:
    acquire(ledger, "slow", ttl=0.5)
    time.sleep(0.7)  # expired, still within a 60 s grace: a live holder whose heartbeats were delayed
    attempt = ledger.try_acquire_lease(app="web", env="prod", holder="eager", actor="b", operation="deploy",
                                       ttl=0.5, grace=60)
    assert not attempt.acquired and attempt.holder is not None and attempt.holder.holder == "slow"
    assert ledger.heartbeat(app="web", env="prod", holder="slow", ttl=0.5)


def test_racers_on_an_expired_lease_exactly_one_wins(
    ledger: Ledger, database_url: str, tmp_path: Path
) -> None:
    acquire(ledger, "crashed", ttl=0.1)
    time.sleep(0.3)
    holders = [f"racer-{i}" for i in range(8)]
    results = run_racers(tmp_path, "lease", database_url, holders)
    winners = [r for r in results if r["acquired"]]
    assert len(winners) == 1
    winner = winners[0]["holder"]
    assert winners[0]["taken_over"] == "crashed"
    for result in results:
        assert result["holder"] == winner
        if not result["acquired"]:
            assert result["taken_over"] is None
    lease = ledger.get_lease("web", "prod")
    assert lease is not None and lease.holder == winner


# ---------------------------------------------------------------------------------------------- waiters


def test_waiters_are_fifo_and_stale_ones_are_skipped(ledger: Ledger) -> None:
    def enqueue(holder: str, env: str = "prod") -> int:
        return ledger.enqueue_waiter(app="web", env=env, holder=holder, actor="a", operation="deploy")

    assert ledger.first_waiter(app="web", env="prod", stale_after=60) is None
    t1, t2, t3 = enqueue("w1"), enqueue("w2"), enqueue("w3")
    elsewhere = enqueue("w4", env="staging")
    assert t1 < t2 < t3
    assert ledger.first_waiter(app="web", env="prod", stale_after=60) == t1
    ledger.remove_waiter(t1)
    assert ledger.first_waiter(app="web", env="prod", stale_after=60) == t2

    time.sleep(0.8)  # ages w2's last heartbeat
    assert ledger.touch_waiter(t3)  # w3 keeps heartbeating, w2 went silent
    assert ledger.first_waiter(app="web", env="prod", stale_after=0.5) == t3
    assert ledger.touch_waiter(t2)  # skipped, never dropped: w2 was only late and heads the queue again
    assert ledger.first_waiter(app="web", env="prod", stale_after=0.5) == t2
    assert ledger.first_waiter(app="web", env="staging", stale_after=60) == elsewhere

    ledger.remove_waiter(t3)
    assert ledger.first_waiter(app="web", env="prod", stale_after=60) == t2
    assert enqueue("w5") > t3  # tickets are never reused, even after the newest one is deleted


def test_a_forgotten_waiter_goes_back_to_its_own_place(ledger: Ledger) -> None:
    def enqueue(holder: str, ticket: int | None = None) -> int:
        return ledger.enqueue_waiter(app="web", env="prod", holder=holder, actor="a", operation="deploy",
                                     ticket=ticket)

    late, dead, leaving = enqueue("late"), enqueue("dead"), enqueue("leaving")
    later = enqueue("later")
    time.sleep(0.8)  # ages every heartbeat
    assert ledger.touch_waiter(later)
    ledger.remove_waiter(leaving, forget_silent_after=0.5)  # forgets late and dead: both silent too long
    assert ledger.first_waiter(app="web", env="prod", stale_after=60) == later
    assert not ledger.touch_waiter(late)
    assert enqueue("late", ticket=late) == late  # back at its old place, ahead of `later`
    assert ledger.first_waiter(app="web", env="prod", stale_after=60) == late
    assert not ledger.touch_waiter(dead)


# ---------------------------------------------------------------------------------------------- blocks


def block(ledger: Ledger, scope: str, app: str = "", env: str = "", until: datetime | None = None) -> Any:
    return ledger.add_block(scope=scope, app=app, env=env, reason=f"{scope} freeze", actor="ops", until=until)


def test_blocks_apply_by_scope(ledger: Ledger) -> None:
    env_block = block(ledger, "env", "web", "prod")
    app_block = block(ledger, "app", "api", "ignored")
    assert (app_block.app, app_block.env) == ("api", "")
    assert (env_block.scope, env_block.reason, env_block.actor) == ("env", "env freeze", "ops")
    assert is_utc_now(env_block.created_at) and env_block.until is None

    assert ledger.active_blocks("web", "prod") == [env_block]
    assert ledger.active_blocks("web", "staging") == []
    assert ledger.active_blocks("api", "staging") == [app_block]
    assert ledger.active_blocks("api", "prod") == [app_block]

    org_block = block(ledger, "org", "ignored", "ignored")
    assert (org_block.app, org_block.env) == ("", "")
    assert ledger.active_blocks("web", "prod") == [env_block, org_block]
    assert ledger.active_blocks("other", "dev") == [org_block]

    with pytest.raises(BadInput):
        block(ledger, "galaxy", "web", "prod")
    with pytest.raises(BadInput):
        block(ledger, "env", "web", "")


def test_blocks_expire(ledger: Ledger) -> None:
    now = datetime.now(UTC)
    block(ledger, "env", "web", "prod", until=now - timedelta(seconds=1))
    future = block(ledger, "app", "web", until=now + timedelta(hours=1))
    assert future.until == now + timedelta(hours=1)
    assert future.until.utcoffset() == timedelta(0)
    assert ledger.active_blocks("web", "prod") == [future]
    short = block(ledger, "org", until=datetime.now(UTC) + timedelta(seconds=1))
    assert ledger.active_blocks("web", "prod") == [future, short]
    time.sleep(1.2)
    assert ledger.active_blocks("web", "prod") == [future]


def test_lifted_blocks_stop_applying_but_stay_recorded(ledger: Ledger, database_url: str) -> None:
    first = block(ledger, "env", "web", "prod")
    block(ledger, "env", "web", "prod")
    kept = block(ledger, "env", "web", "staging")
    org = block(ledger, "org")

    assert ledger.lift_blocks(scope="env", app="web", env="prod", actor="carol") == 2
    assert ledger.active_blocks("web", "prod") == [org]
    assert ledger.active_blocks("web", "staging") == [kept, org]
    assert ledger.lift_blocks(scope="env", app="web", env="prod", actor="carol") == 0
    assert ledger.lift_blocks(scope="org", app="", env="", actor="dave") == 1
    assert ledger.active_blocks("web", "prod") == []

    engine = raw_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, lifted_by, lifted_at FROM blocks ORDER BY id")).all()
    engine.dispose()
    assert len(rows) == 4
    assert [(r.id, r.lifted_by) for r in rows] == [
        (first.id, "carol"), (first.id + 1, "carol"), (kept.id, None), (org.id, "dave"),
    ]
    assert all(r.lifted_at is not None for r in rows if r.lifted_by)
