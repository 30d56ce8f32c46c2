"""`/metrics` at scale: a ledger of 500 apps × 3 environments and 1,000,000 releases (bulk INSERTs), a real
`conveyor server` on it, and N scrapes over HTTP with a read token, as Prometheus makes them. Prints the first
(cold: every release aggregated once) scrape's time and the p50/p95 of the rest, on SQLite and PostgreSQL.

    .venv/bin/python bench/metrics_scrape.py [--releases 1000000] [--scrapes 100] [--backend sqlite|postgres|both]
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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack import Postgres  # noqa: E402

CONVEYOR = str(Path(sys.executable).parent / "conveyor")
APPS, ENVS = 500, ("staging", "canary", "production")
DIGEST = "sha256:" + "cd" * 32

# Row k: app k % 500, env (k / 500) % 3, so each app+env gets every 1,500th row and numbers k / 1500 + 1.
# One in ten failed, one in 97 interrupted; rollbacks and promotions among the deploys; all finished
# between 1 s and 5 min after they were recorded, long ago (settled, as a real ledger's are).
SELECT_ROWS = """
SELECT k, 'app-' || (k % 500), {env}, k / 1500 + 1,
       CASE WHEN k % 20 = 0 THEN 'rollback' WHEN k % 7 = 0 THEN 'promote' ELSE 'deploy' END,
       CASE WHEN k % 10 = 0 THEN 'failed' WHEN k % 97 = 0 THEN 'interrupted' ELSE 'succeeded' END,
       {sha}, '{digest}', 'registry.example/app@{digest}', '{{}}', 'sha256:conf', '', 'ci', 'ci', '', {false},
       'finished', '', NULL, NULL, {created}, {created}, {finished}, ''
FROM {series}
"""
COLUMNS = ("id, app, env, number, kind, status, sha, digest, image, spec, config_digest, config_source, actor, "
           "origin, reason, forced, step, error, previous_number, promoted_from_id, created_at, started_at, "
           "finished_at, trace_id")


def sqlite_sql(count: int) -> str:
    return f"WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < {count}) " + \
        f"INSERT INTO releases ({COLUMNS}) " + SELECT_ROWS.format(
            env="CASE (k / 500) % 3 WHEN 0 THEN 'staging' WHEN 1 THEN 'canary' ELSE 'production' END",
            sha="printf('%040x', k)", digest=DIGEST, false="0", series="n",
            created="datetime('2025-06-01', '+' || k || ' seconds') || '.000000'",
            finished="datetime('2025-06-01', '+' || (k + 1 + k % 300) || ' seconds') || '.000000'")


def postgres_sql(count: int) -> str:
    return f"INSERT INTO releases ({COLUMNS}) " + SELECT_ROWS.format(
        env="CASE (k / 500) % 3 WHEN 0 THEN 'staging' WHEN 1 THEN 'canary' ELSE 'production' END",
        sha="lpad(to_hex(k), 40, '0')", digest=DIGEST, false="false", series=f"generate_series(1, {count}) AS k",
        created="'2025-06-01'::timestamptz + k * interval '1 second'",
        finished="'2025-06-01'::timestamptz + (k + 1 + k % 300) * interval '1 second'")


def registered_apps(conn: object, placeholder: str) -> None:
    """Every app in the server's apps table, with its stages where the ledger keeps them."""
    rows = [(f"app-{n}", f"https://git.example/app-{n}.git", "2025-06-01 00:00:00", "bench") for n in range(APPS)]
    marks = ", ".join([placeholder] * 4)
    conn.executemany(f"INSERT INTO apps (name, repo_url, created_at, created_by) VALUES ({marks})", rows)  # type: ignore[attr-defined]


def fill(url: str, count: int) -> None:
    from conveyor.ledger import open_ledger

    open_ledger(url).close()  # the schema, migrated as conveyor migrates it
    started = time.perf_counter()
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        with conn:
            conn.execute(sqlite_sql(count))
            registered_apps(conn, "?")
        stages_column(conn)
        conn.execute("ANALYZE")
        conn.close()
    else:
        import psycopg

        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            conn.execute(postgres_sql(count))
            registered_apps(conn.cursor(), "%s")
            conn.commit()
            stages_column(conn)
            conn.execute("SELECT setval(pg_get_serial_sequence('releases', 'id'), (SELECT max(id) FROM releases))")
            conn.commit()
            conn.autocommit = True
            conn.execute("ANALYZE")
    print(f"  filled {count:,} releases of {APPS} apps × {len(ENVS)} envs in {time.perf_counter() - started:.0f}s")


def stages_column(conn: object) -> None:
    """apps.stages (migration 0008) holds each app's stage order, where this conveyor has that column."""
    try:
        conn.execute(f"UPDATE apps SET stages = '{json.dumps(list(ENVS))}'")  # type: ignore[attr-defined]
        conn.commit()  # type: ignore[attr-defined]
    except Exception:  # no such column: a conveyor without delivery metrics
        conn.rollback()  # type: ignore[attr-defined]


def scrape(url: str, token: str) -> tuple[float, int]:
    request = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        body = response.read()
    return time.perf_counter() - started, body.count(b"\n")


def measure(name: str, url: str, home: Path, scrapes: int) -> None:
    env = {**os.environ, "CONVEYOR_HOME": str(home), "CONVEYOR_DATABASE_URL": url}
    token = subprocess.run([CONVEYOR, "server", "token", "create", "prometheus", "--scope", "read"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    server = subprocess.Popen([CONVEYOR, "server", "--bind", "127.0.0.1:0", "--workers", "1"], env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        first = server.stderr.readline()
        base = first.split("listening on ", 1)[1].split()[0]
        cold, lines = scrape(base, token)
        times = [scrape(base, token)[0] for _ in range(scrapes)]
        p50 = statistics.median(times) * 1000
        p95 = sorted(times)[max(0, round(0.95 * len(times)) - 1)] * 1000
        print(f"  {name}: first scrape {cold * 1000:.0f} ms ({lines:,} lines); next {scrapes}: "
              f"p50 {p50:.1f} ms, p95 {p95:.1f} ms over HTTP (target p95 <= 50 ms); load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        server.terminate()
        server.wait(timeout=60)
    in_process(name, url, scrapes)


def in_process(name: str, url: str, scrapes: int) -> None:
    """The ledger's share, in this process: the same snapshot and render /metrics makes, warm."""
    from conveyor.ledger import open_ledger
    from conveyor.pipeline.metrics import LedgerMetrics, Lines, render

    ledger = open_ledger(url)
    metrics, lines = LedgerMetrics(ledger, background=True), Lines()
    render(metrics.snapshot(), lines)
    times = []
    for _ in range(scrapes):
        started = time.perf_counter()
        render(metrics.snapshot(), lines)
        times.append(time.perf_counter() - started)
    ledger.close()
    p95 = sorted(times)[max(0, round(0.95 * len(times)) - 1)] * 1000
    print(f"  {name}: the ledger's share in-process (snapshot + render): p50 {statistics.median(times) * 1000:.1f} ms,"
          f" p95 {p95:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--releases", type=int, default=1_000_000)
    parser.add_argument("--scrapes", type=int, default=100)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--keep", type=Path, default=None, help="keep the SQLite ledger in this directory, "
                        "and reuse it when it is there")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="conveyor-metrics-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if args.backend in ("sqlite", "both"):
            print("sqlite:")
            url = f"sqlite:///{root / 'ledger.db'}"
            if not (root / "ledger.db").exists():
                fill(url, args.releases)
            measure("sqlite", url, root / "home", args.scrapes)
        if args.backend in ("postgres", "both"):
            print("postgres:")
            pg = Postgres(Path(tempfile.mkdtemp(prefix="conveyor-metrics-pg-"))).start()
            try:
                url = pg.url.replace("postgresql://", "postgresql+psycopg://")
                fill(url, args.releases)
                measure("postgres", url, root / "pg-home", args.scrapes)
            finally:
                pg.stop()
                shutil.rmtree(pg.root, ignore_errors=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
