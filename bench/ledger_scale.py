"""conveyor on a big ledger: 1,000,000 releases of one environment, against a five-release ledger.

Fills a SQLite file and a throwaway PostgreSQL cluster (started like devstack.Postgres does for the tests)
with realistic rows: releases with a rendered spec as JSON, two hash-chained events per release, every
tenth release failed. The schema comes from the real migrations (open_ledger); the bulk rows go in with
one INSERT … SELECT each (a recursive CTE on SQLite, generate_series on PostgreSQL), followed by ANALYZE,
as autovacuum would have done on a ledger that grew this big. A small ledger of the same shape (five
releases per stage) is filled through the Ledger API.

Then times, through the real executable (CONVEYOR_HOME / CONVEYOR_DATABASE_URL pointed at each ledger),
`history --limit 20`, `history staging`, `status` and `diff`, small and big interleaved, and prints the
medians and their ratio (target: big ≤ 1.2 × small for each).

    .venv/bin/python bench/ledger_scale.py [--releases N] [--runs N] [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cli_speed import make_repo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack import Postgres  # noqa: E402

CONVEYOR = str(Path(sys.executable).parent / "conveyor")
DIGEST = "sha256:" + "ab" * 32
IMAGE = f"127.0.0.1:5000/bench@{DIGEST}"
SPEC = json.dumps({
    "app": "bench", "env": "staging", "image": IMAGE, "port": 18001,
    "env_vars": {"PORT": "8080", "LOG_LEVEL": "info", "DATABASE_URL_ENV": "BENCH_DB"},
    "health": {"path": "/health", "interval": 1.0, "timeout": 30.0},
    "drain_seconds": 5, "labels": {"conveyor.app": "bench", "conveyor.env": "staging"},
}, sort_keys=True, separators=(",", ":"))
COMMANDS = {
    "history --limit 20": ["history", "--limit", "20"],
    "history staging": ["history", "staging"],
    "status": ["status"],
    "diff": ["diff"],
}

# Row k of the bulk (1-based) is release id base_id + k; its events are ids base_event + 2k - 1 and + 2k.
# Hashes are stand-ins (k as 64 hex digits): nothing here verifies the chain, but prev_hash stays unique.
SQLITE_RELEASES = """
WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < :count)
INSERT INTO releases (id, app, env, number, kind, status, sha, digest, image, spec, config_digest, actor, origin,
                      reason, forced, step, error, previous_number, promoted_from_id, created_at, started_at,
                      finished_at)
SELECT :base_id + k, 'bench', 'staging', :base_number + k, 'deploy',
       CASE WHEN k % 10 = 0 THEN 'failed' ELSE 'succeeded' END, :sha, :digest, :image, :spec, 'sha256:conf',
       'ci-bot', 'ci', 'nightly', 0, 'done', CASE WHEN k % 10 = 0 THEN 'health check timed out' ELSE '' END,
       :base_number + k - 1, NULL,
       datetime(:t0, '+' || k || ' seconds') || '.000000', datetime(:t0, '+' || k || ' seconds') || '.000000',
       datetime(:t0, '+' || (k + 1) || ' seconds') || '.000000'
FROM n
"""
SQLITE_EVENTS = """
WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < 2 * :count)
INSERT INTO events (id, app, env, release_id, at, step, status, message, data, prev_hash, hash)
SELECT :base_event + k, 'bench', 'staging', :base_id + (k + 1) / 2,
       datetime(:t0, '+' || ((k + 1) / 2) || ' seconds') || '.000000',
       CASE WHEN k % 2 = 1 THEN 'recorded' ELSE 'done' END, 'ok',
       CASE WHEN k % 2 = 1 THEN 'release recorded' ELSE 'release finished' END,
       '{"digest":"' || :digest || '"}',
       CASE WHEN k = 1 THEN :prev_hash ELSE printf('%064x', k - 1) END, printf('%064x', k)
FROM n
"""
POSTGRES_RELEASES = """
INSERT INTO releases (id, app, env, number, kind, status, sha, digest, image, spec, config_digest, actor, origin,
                      reason, forced, step, error, previous_number, promoted_from_id, created_at, started_at,
                      finished_at)
SELECT %(base_id)s + k, 'bench', 'staging', %(base_number)s + k, 'deploy',
       CASE WHEN k %% 10 = 0 THEN 'failed' ELSE 'succeeded' END, %(sha)s, %(digest)s, %(image)s, %(spec)s,
       'sha256:conf', 'ci-bot', 'ci', 'nightly', false, 'done',
       CASE WHEN k %% 10 = 0 THEN 'health check timed out' ELSE '' END, %(base_number)s + k - 1, NULL,
       %(t0)s::timestamptz + k * interval '1 second', %(t0)s::timestamptz + k * interval '1 second',
       %(t0)s::timestamptz + (k + 1) * interval '1 second'
FROM generate_series(1, %(count)s) AS k
"""
POSTGRES_EVENTS = """
INSERT INTO events (id, app, env, release_id, at, step, status, message, data, prev_hash, hash)
SELECT %(base_event)s + k, 'bench', 'staging', %(base_id)s + (k + 1) / 2,
       %(t0)s::timestamptz + ((k + 1) / 2) * interval '1 second',
       CASE WHEN k %% 2 = 1 THEN 'recorded' ELSE 'done' END, 'ok',
       CASE WHEN k %% 2 = 1 THEN 'release recorded' ELSE 'release finished' END,
       '{"digest":"' || %(digest)s || '"}',
       CASE WHEN k = 1 THEN %(prev_hash)s ELSE lpad(to_hex(k - 1), 64, '0') END, lpad(to_hex(k), 64, '0')
FROM generate_series(1, 2 * %(count)s) AS k
"""


def record_through_the_ledger(url: str, shas: list[str], per_env: int) -> None:
    """Five releases per stage, written the way conveyor writes them."""
    from conveyor.ledger import open_ledger

    ledger = open_ledger(url)
    for env, sha in (("production", shas[0]), ("staging", shas[1])):
        for _ in range(per_env):
            release = ledger.create_release(
                app="bench", env=env, kind="deploy", sha=sha, digest=DIGEST, image=IMAGE, spec=json.loads(SPEC),
                config_digest="sha256:conf", actor="ci-bot", origin="ci", reason="nightly", forced=False,
                previous_number=None, source_release_id=None,
            )
            ledger.append_event(app="bench", env=env, release_id=release.id, step="recorded", status="ok",
                                message="release recorded")
            ledger.update_release(release.id, status="succeeded", finished=True)
            ledger.append_event(app="bench", env=env, release_id=release.id, step="done", status="ok",
                                message="release finished")
    ledger.close()


def bulk_values(conn: object, sha: str, count: int) -> dict[str, object]:
    """Where the bulk rows continue the ledger's ids, staging's numbers and the event chain."""
    def one(sql: str) -> object:
        return conn.execute(sql).fetchone()[0]  # type: ignore[attr-defined]

    return {
        "count": count, "sha": sha, "digest": DIGEST, "image": IMAGE, "spec": SPEC, "t0": "2026-01-01 00:00:00",
        "base_id": one("SELECT max(id) FROM releases"), "base_event": one("SELECT max(id) FROM events"),
        "base_number": one("SELECT max(number) FROM releases WHERE env = 'staging'"),
        "prev_hash": one("SELECT hash FROM events ORDER BY id DESC LIMIT 1"),
    }


def bulk_fill_sqlite(path: Path, sha: str, count: int) -> None:
    import sqlite3

    conn = sqlite3.connect(path)
    values = bulk_values(conn, sha, count)
    with conn:
        conn.execute(SQLITE_RELEASES, values)
        conn.execute(SQLITE_EVENTS, values)
        conn.execute("UPDATE release_counters SET last_number = last_number + ? WHERE env = 'staging'", (count,))
    conn.execute("ANALYZE")
    conn.close()


def bulk_fill_postgres(url: str, sha: str, count: int) -> None:
    import psycopg

    with psycopg.connect(url) as conn:
        values = bulk_values(conn, sha, count)
        conn.execute(POSTGRES_RELEASES, values)
        conn.execute(POSTGRES_EVENTS, values)
        conn.execute("UPDATE release_counters SET last_number = last_number + %s WHERE env = 'staging'", (count,))
        for table in ("releases", "events"):  # the serial sequences continue after the bulk ids
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE")


def timed(args: list[str], repo: Path, env: dict[str, str]) -> float:
    """Wall time of one run. Nothing serves the bench's releases, so `status` probes them, reports the outage
    and exits 1: that is its whole normal path; any other failure stops the bench."""
    start = time.perf_counter()
    done = subprocess.run([CONVEYOR, *args], cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - start
    if done.returncode not in (0, 1) or (done.returncode == 1 and args[0] != "status"):
        raise SystemExit(f"conveyor {' '.join(args)} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    return took


def compare(name: str, repo: Path, small: dict[str, str], big: dict[str, str], runs: int) -> None:
    """Small and big ledgers interleaved per command, so the machine's load falls on both alike."""
    print(f"\n{name}: median of {runs} runs each, small (5+5 releases) vs big")
    for label, args in COMMANDS.items():
        timed(args, repo, small), timed(args, repo, big)  # warm the page cache
        a, b = [], []
        for _ in range(runs):
            a.append(timed(args, repo, small))
            b.append(timed(args, repo, big))
        ms, mb = statistics.median(a), statistics.median(b)
        verdict = "met" if mb <= 1.2 * ms else "MISSED"
        print(f"  {label:20} small {ms * 1000:7.1f} ms  big {mb * 1000:7.1f} ms  ratio {mb / ms:4.2f}x  ({verdict})")


def environment(home: Path, url: str | None) -> dict[str, str]:
    env = {**os.environ, "CONVEYOR_HOME": str(home)}
    env.pop("CONVEYOR_DATABASE_URL", None)
    if url:
        env["CONVEYOR_DATABASE_URL"] = url
    home.mkdir(parents=True, exist_ok=True)
    return env


def run_sqlite(root: Path, repo: Path, shas: list[str], count: int, runs: int) -> None:
    small, big = root / "sqlite-small", root / "sqlite-big"
    for home in (small, big):
        home.mkdir()
        record_through_the_ledger(f"sqlite:///{home / 'ledger.db'}", shas, per_env=5)
    started = time.perf_counter()
    bulk_fill_sqlite(big / "ledger.db", shas[1], count)
    size = (big / "ledger.db").stat().st_size / 1e6
    print(f"sqlite: filled {count} releases, {2 * count} events in {time.perf_counter() - started:.0f}s "
          f"({size:.0f} MB)")
    compare("sqlite", repo, environment(small, None), environment(big, None), runs)


def run_postgres(root: Path, repo: Path, shas: list[str], count: int, runs: int) -> None:
    import psycopg

    server = Postgres(Path(tempfile.mkdtemp(prefix="conveyor-scale-pg-"))).start()  # a dir postgres may own
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            for name in ("small", "big"):
                conn.execute(f'CREATE DATABASE "{name}"')
        urls = {name: f"postgresql://postgres@127.0.0.1:{server.port}/{name}" for name in ("small", "big")}
        for url in urls.values():
            record_through_the_ledger(url, shas, per_env=5)
        started = time.perf_counter()
        bulk_fill_postgres(urls["big"], shas[1], count)
        print(f"postgres: filled {count} releases, {2 * count} events in {time.perf_counter() - started:.0f}s")
        compare("postgres", repo, environment(root / "pg-small-home", urls["small"]),
                environment(root / "pg-big-home", urls["big"]), runs)
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--releases", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="conveyor-scale-bench-"))
    try:
        repo = root / "repo"
        shas = make_repo(repo)
        if args.backend in ("sqlite", "both"):
            run_sqlite(root, repo, shas, args.releases, args.runs)
        if args.backend in ("postgres", "both"):
            run_postgres(root, repo, shas, args.releases, args.runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
