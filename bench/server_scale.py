"""`conveyor server`'s views on a huge ledger: history (first page, a deep page) and status of one app.

The ledger is filled the way bench/ledger_scale.py fills it (its functions: five releases per stage through
the Ledger API, then one INSERT … SELECT for RELEASES releases and two events each, then ANALYZE), plus
EVENTS_PER_RELEASE - 2 more events per release in one more INSERT … SELECT (step records, continuing the
hash chain), so the issue's 1,000,000 releases come with 10,000,000 events. A small ledger of the same
shape (the five-per-stage releases only) is measured alongside: its status time is what status costs
without the ledger's size, i.e. mostly the drift check against the target.

A real `conveyor server` per ledger (free port), app `bench` registered through POST /api/apps. Nothing
runs bench's releases, so status's drift check inspects the target (podman, HAProxy), finds nothing
running and reports it: its normal path for environments whose target isn't running.

"Server time" here is the round trip on localhost through a keep-alive client (httpx.Client), measured
per request, small and big interleaved; the server exposes no timing of its own. Printed: median and p95.
Target: p95 ≤ 50 ms on PostgreSQL.

    .venv/bin/python bench/server_scale.py [--releases N] [--events-per-release N] [--runs N]
                                           [--backend sqlite|postgres|both] [--sqlite-releases N]

Defaults are the issue's sizes (1,000,000 releases, 10 events each, 50 runs, both backends, SQLite as big
as PostgreSQL); `--releases 20000 --runs 10` is a quick run. The full PostgreSQL fill took 16 minutes on the
2-core development machine under load (100,000 releases with 1,000,000 events: ~80 s); the SQLite one took
~50 s for that size, and `--sqlite-releases 100000` keeps a full run of both near 20 minutes.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from cli_speed import make_repo
from ledger_scale import bulk_fill_postgres, bulk_fill_sqlite, record_through_the_ledger
from server_harness import ServerProcess, client, create_token, percentile, server_env

from devstack import Postgres

STEPS = ("tasks", "pull", "start", "health", "switch", "drain", "stop", "refs", "notify", "outbox")
# Event k of the extra ones (1-based) belongs to release first_release + (k - 1) / per; its hash continues the
# bulk's stand-in chain (hash n = n as 64 hex digits), so prev_hash stays unique.
POSTGRES_MORE_EVENTS = """
INSERT INTO events (id, app, env, release_id, at, step, status, message, data, prev_hash, hash)
SELECT %(base_event)s + k, 'bench', 'staging', %(first_release)s + (k - 1) / %(per)s,
       %(t0)s::timestamptz + ((k - 1) / %(per)s + 1) * interval '1 second',
       (%(steps)s::text[])[(k - 1) %% %(per)s + 1], 'ok', 'step finished', '{}',
       lpad(to_hex(%(chain)s + k - 1), 64, '0'), lpad(to_hex(%(chain)s + k), 64, '0')
FROM generate_series(1, %(count)s) AS k
"""
SQLITE_MORE_EVENTS = """
WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < :count)
INSERT INTO events (id, app, env, release_id, at, step, status, message, data, prev_hash, hash)
SELECT :base_event + k, 'bench', 'staging', :first_release + (k - 1) / :per,
       datetime(:t0, '+' || ((k - 1) / :per + 1) || ' seconds') || '.000000',
       json_extract(:steps, '$[' || ((k - 1) % :per) || ']'), 'ok', 'step finished', '{}',
       printf('%064x', :chain + k - 1), printf('%064x', :chain + k)
FROM n
"""


def more_events(first_release: int, base_event: int, releases: int, per: int) -> dict[str, Any]:
    return {"first_release": first_release, "base_event": base_event, "count": releases * per, "per": per,
            "chain": 2 * releases, "t0": "2026-01-01 00:00:00", "steps": list(STEPS[:per])}


def fill_sqlite(path: Path, sha: str, releases: int, per_release: int) -> None:
    conn = sqlite3.connect(path)
    first_release = conn.execute("SELECT max(id) FROM releases").fetchone()[0] + 1
    conn.close()
    bulk_fill_sqlite(path, sha, releases)
    conn = sqlite3.connect(path)
    base_event = conn.execute("SELECT max(id) FROM events").fetchone()[0]
    values = more_events(first_release, base_event, releases, per_release - 2)
    values["steps"] = "[" + ",".join(f'"{step}"' for step in values["steps"]) + "]"
    with conn:
        conn.execute(SQLITE_MORE_EVENTS, values)
    conn.execute("ANALYZE")
    conn.close()


def fill_postgres(url: str, sha: str, releases: int, per_release: int) -> None:
    import psycopg

    with psycopg.connect(url) as conn:
        first_release = conn.execute("SELECT max(id) FROM releases").fetchone()[0] + 1
    bulk_fill_postgres(url, sha, releases)
    with psycopg.connect(url) as conn:
        base_event = conn.execute("SELECT max(id) FROM events").fetchone()[0]
        conn.execute(POSTGRES_MORE_EVENTS, more_events(first_release, base_event, releases, per_release - 2))
        conn.execute("SELECT setval(pg_get_serial_sequence('events', 'id'), (SELECT max(id) FROM events))")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE events")  # as autovacuum would have, after 10M inserts


def deep_id(url: str, depth: int) -> int:
    """The id of staging's release `depth` releases below the newest: a deep page's `before`."""
    from conveyor.ledger import open_ledger

    ledger = open_ledger(url)
    try:
        newest = ledger.list_releases("bench", "staging", 1)[0].id
        return max(1, newest - depth)
    finally:
        ledger.close()


class Served:
    """One ledger's server with its API client."""

    def __init__(self, root: Path, name: str, url: str | None, repo: Path) -> None:
        self.env = server_env(root / f"{name}-home", url)
        self.url = url or f"sqlite:///{root / f'{name}-home' / 'ledger.db'}"
        admin = create_token(self.env, "admin", "admin")
        self.server = ServerProcess.start(self.env, root / f"{name}-server.log", workers=1)
        self.api = client(self.server.url, admin)
        response = self.api.post("/api/apps", json={"name": "bench", "repo_url": str(repo)})
        if response.status_code != 201:
            raise SystemExit(f"POST /api/apps: HTTP {response.status_code} {response.text}")

    def timed(self, path: str) -> float:
        started = time.perf_counter()
        response = self.api.get(path)
        took = time.perf_counter() - started
        if response.status_code != 200:
            log = self.server.log.read_text()[-3000:]
            raise SystemExit(f"GET {path}: HTTP {response.status_code} {response.text[:300]}\n{log}")
        return took

    def close(self) -> None:
        self.api.close()
        self.server.stop()


def requests(small: Served, big: Served, depth: int) -> dict[str, tuple[str, str]]:
    deep_small, deep_big = deep_id(small.url, 3), deep_id(big.url, depth)
    page = "/api/apps/bench/history?limit=20"
    return {
        "history, first page": (page, page),
        "history staging, first page": (page + "&env=staging",) * 2,  # type: ignore[dict-item]
        f"history, deep page ({depth:,} down)": (f"{page}&before={deep_small}", f"{page}&before={deep_big}"),
        f"history staging, deep page ({depth:,} down)": (f"{page}&env=staging&before={deep_small}",
                                                         f"{page}&env=staging&before={deep_big}"),
        "status": ("/api/apps/bench/status",) * 2,  # type: ignore[dict-item]
    }


def compare(label: str, small: Served, big: Served, runs: int, depth: int) -> None:
    def ms(values: list[float], share: float) -> str:
        return f"{percentile(values, share) * 1000:7.1f}"

    print(f"\n{label}: round trip on localhost (keep-alive httpx.Client), {runs} runs each, small and big "
          "interleaved; ms")
    print(f"  {'request':40} {'small p50':>9} {'small p95':>9} {'big p50':>9} {'big p95':>9}  target big p95 ≤ 50")
    for name, (small_path, big_path) in requests(small, big, depth).items():
        for _ in range(3):  # warm: connections, page cache, the mirror
            small.timed(small_path), big.timed(big_path)
        a, b = [], []
        for _ in range(runs):
            a.append(small.timed(small_path))
            b.append(big.timed(big_path))
        verdict = "met" if percentile(b, 0.95) <= 0.050 else "MISSED"
        print(f"  {name:40} {ms(a, .5):>9} {ms(a, .95):>9} {ms(b, .5):>9} {ms(b, .95):>9}  {verdict}")


def ledger_share(url: str, runs: int, depth: int) -> None:
    """The ledger's part of those requests, in-process through the Ledger API (the same queries the views
    run), so what the size of the ledger costs is seen apart from the per-request work around it."""
    from conveyor.ledger import open_ledger

    ledger = open_ledger(url)
    try:
        before = deep_id(url, depth)
        calls = {
            "list_releases, first page": lambda: ledger.list_releases("bench", None, 21),
            "list_releases staging, first page": lambda: ledger.list_releases("bench", "staging", 21),
            "list_releases, deep page": lambda: ledger.list_releases("bench", None, 21, before_id=before),
            "list_releases staging, deep page":
                lambda: ledger.list_releases("bench", "staging", 21, before_id=before),
            "live_release staging": lambda: ledger.live_release("bench", "staging"),
            "list_leases": lambda: ledger.list_leases(),
        }
        print("  the ledger's share (big ledger, in-process Ledger API calls), ms:")
        for name, call in calls.items():
            call()
            took = []
            for _ in range(runs):
                started = time.perf_counter()
                call()
                took.append(time.perf_counter() - started)
            print(f"    {name:38} p50 {percentile(took, .5) * 1000:6.2f}  p95 {percentile(took, .95) * 1000:6.2f}")
        if url.startswith("postgresql"):
            explain(url, before)
    finally:
        ledger.close()


def explain(url: str, before: int) -> None:
    """PostgreSQL's plan for the deep history pages (what the view's query compiles to)."""
    import psycopg

    with psycopg.connect(url) as conn:
        for env in ("", " AND env = 'staging'"):
            sql = (f"SELECT * FROM releases WHERE app = 'bench'{env} AND id < {before} "
                   "ORDER BY id DESC LIMIT 21")
            plan = [row[0] for row in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)]
            print(f"  EXPLAIN ANALYZE {sql}:")
            for line in plan:
                if "Scan" in line or "Execution Time" in line or "Limit" in line:
                    print(f"    {line.strip()}")


def run_backend(label: str, root: Path, repo: Path, shas: list[str], urls: dict[str, str | None],
                fill: Any, releases: int, per_release: int, runs: int) -> None:
    for name, url in urls.items():
        record_through_the_ledger(url or f"sqlite:///{root / f'{name}-home' / 'ledger.db'}", shas, per_env=5)
    started = time.perf_counter()
    fill(releases)
    print(f"\n{label}: filled {releases:,} releases and {releases * per_release:,} events in "
          f"{time.perf_counter() - started:.0f} s")
    small = Served(root, "small", urls["small"], repo)
    big = Served(root, "big", urls["big"], repo)
    try:
        compare(label, small, big, runs, depth=releases // 2)
        ledger_share(big.url, runs, depth=releases // 2)
    finally:
        small.close()
        big.close()


def run_postgres(root: Path, repo: Path, shas: list[str], releases: int, per: int, runs: int) -> None:
    import psycopg

    server = Postgres(Path(tempfile.mkdtemp(prefix="conveyor-server-scale-pg-"))).start()
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            for name in ("small", "big"):
                conn.execute(f'CREATE DATABASE "{name}"')
        urls: dict[str, str | None] = {name: f"postgresql://postgres@127.0.0.1:{server.port}/{name}"
                                       for name in ("small", "big")}
        big_url = str(urls["big"])
        run_backend("postgres", root / "pg", repo, shas, urls,
                    lambda count: fill_postgres(big_url, shas[1], count, per), releases, per, runs)
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


def run_sqlite(root: Path, repo: Path, shas: list[str], releases: int, per: int, runs: int) -> None:
    base = root / "sqlite"
    for name in ("small", "big"):
        (base / f"{name}-home").mkdir(parents=True)
    run_backend("sqlite", base, repo, shas, {"small": None, "big": None},
                lambda count: fill_sqlite(base / "big-home" / "ledger.db", shas[1], count, per), releases, per, runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--releases", type=int, default=1_000_000)
    parser.add_argument("--sqlite-releases", type=int, default=None, help="default: --releases")
    parser.add_argument("--events-per-release", type=int, default=10, choices=range(3, len(STEPS) + 3))
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="conveyor-server-scale-"))
    try:
        repo = root / "repo"
        shas = make_repo(repo)
        if args.backend in ("postgres", "both"):
            run_postgres(root, repo, shas, args.releases, args.events_per_release, args.runs)
        if args.backend in ("sqlite", "both"):
            run_sqlite(root, repo, shas, args.sqlite_releases or args.releases, args.events_per_release, args.runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
