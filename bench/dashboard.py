"""The dashboard on an organisation-sized ledger: 500 apps x 3 stages and 1,000,000 releases.

Set-up: one real git repo (40 commits by 5 authors, conveyor.yml committed) whose bare clone every app's
server mirror points at (a symlink per app: the server reads mirrors only, and 500 clones would only cost
disk); the apps registered in the ledger; 1,000,000 releases spread over the 1,500 app+envs by bulk INSERTs
(each stage's latest releases on older commits than the stage before it, so every app has commits waiting),
with a few events for each app's latest releases. Then a real `conveyor server` on that ledger.

Printed (no assertions):
- overview `GET /`: the first after the start, how long until the background has asked git about every stage
  pair and checked every target, and then p50/p95 of the server
  time (the round trip on localhost through a keep-alive client) and the page size. Target p95 <= 100 ms,
  <= 300 KB.
- release page `GET /apps/{app}/releases/{env}/{n}`: p50/p95. Target p95 <= 50 ms.
- event -> shown: Chromium (Playwright) keeps the overview open; the bench records a progress event of a
  running operation in the ledger (from this process, as another replica would) and a MutationObserver in
  the page stamps the moment its text appears. Both clocks are this machine's wall clock (time.time() and
  Date.now()), so the difference is the latency. Median, and p95. Target median <= 250 ms.
- the overview's query plan on SQLite (EXPLAIN QUERY PLAN) and, with --postgres, on PostgreSQL (EXPLAIN
  ANALYZE over the same number of releases, filled by one INSERT ... SELECT).

    .venv/bin/python bench/dashboard.py [--apps 500] [--releases 1000000] [--runs 40] [--events 20]
                                        [--postgres]

`--releases 100000 --runs 10` is a quick run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_harness import ServerProcess, create_token, percentile, server_env  # noqa: E402

STAGES = ("dev", "staging", "production")
AUTHORS = ("Ada", "Brian", "Chen", "Dana", "Eli")
CONFIG = """app: {name}
image: 127.0.0.1:5000/bench
environments:
""" + "".join(f"  - name: {s}\n    target: {{{{type: container-host, port: {9100 + n}}}}}\n"
              for n, s in enumerate(STAGES))
SPEC = json.dumps({"target": "container-host", "app": "bench", "env": "production", "port": 9102,
                   "env_vars": {"APP_VERSION": "1", "PORT": "8080"}, "tasks": [], "copies": []})
DIGEST = "sha256:" + "ab" * 32


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def make_repo(root: Path, commits: int = 40) -> tuple[Path, list[str]]:
    """A bare repo with `commits` commits by five authors; returns it and the SHAs, oldest first."""
    import os

    work = root / "work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "conveyor.yml").write_text(CONFIG.format(name="app-0000"))
    shas = []
    for n in range(commits):
        (work / "CHANGES").write_text(f"change {n}\n")
        git(work, "add", "-A")
        author = AUTHORS[n % len(AUTHORS)]
        env = {**os.environ, "GIT_AUTHOR_NAME": author, "GIT_AUTHOR_EMAIL": f"{author.lower()}@example.com",
               "GIT_COMMITTER_NAME": author, "GIT_COMMITTER_EMAIL": f"{author.lower()}@example.com",
               "GIT_COMMITTER_DATE": f"{1764000000 + n * 3600} +0000", "GIT_AUTHOR_DATE": f"{1764000000 + n * 3600}"}
        git(work, "commit", "-qm", f"change number {n}", env=env)
        shas.append(git(work, "rev-parse", "HEAD"))
    bare = root / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare, shas


def fill(db: Path, home: Path, origin: Path, shas: list[str], apps: int, total: int) -> None:
    """Apps, their mirrors, and `total` releases by bulk INSERTs (numbers 1..n per app+env)."""
    names = [f"app-{n:04d}" for n in range(apps)]
    mirrors = home / "server" / "mirrors"
    mirrors.mkdir(parents=True, exist_ok=True)
    for name in names:
        (mirrors / f"{name}.git").symlink_to(origin)
    per_env = total // (apps * len(STAGES))
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    conn = sqlite3.connect(db)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(apps)")]
    stages_json = json.dumps(list(STAGES))
    with conn:
        for name in names:
            conn.execute("INSERT INTO apps (name, repo_url, created_at, created_by"
                         + (", stages" if "stages" in columns else "") + ") VALUES (?, ?, ?, ?"
                         + (", ?" if "stages" in columns else "") + ")",
                         (name, str(origin), "2026-01-01 00:00:00.000000", "bench",
                          *([stages_json] if "stages" in columns else [])))
        conn.executemany("INSERT INTO release_counters (app, env, last_number) VALUES (?, ?, ?)",
                         [(name, env, per_env) for name in names for env in STAGES])

        def rows() -> Any:
            rid = 0
            for n, name in enumerate(names):
                for stage_index, env in enumerate(STAGES):
                    # the latest live SHA: dev newest, each later stage a few commits behind (varies per app)
                    head = len(shas) - 1 - stage_index * (2 + n % 7)
                    for number in range(1, per_env + 1):
                        rid += 1
                        sha = shas[max(0, head - (per_env - number) // 50)]
                        status = "failed" if number % 23 == 0 and number != per_env else "succeeded"
                        at = (t0 + timedelta(minutes=number)).strftime("%Y-%m-%d %H:%M:%S.%f")
                        yield (rid, name, env, number, "deploy" if stage_index == 0 else "promote", status, sha,
                               DIGEST, f"127.0.0.1:5000/bench@{DIGEST}", SPEC.replace('"1"', f'"{number}"'),
                               "sha256:conf", "", "ci-bot", "ci", "nightly", False, "done", "",
                               number - 1 if number > 1 else None, None, at, at, at)

        conn.executemany(
            "INSERT INTO releases (id, app, env, number, kind, status, sha, digest, image, spec, config_digest,"
            " config_source, actor, origin, reason, forced, step, error, previous_number, promoted_from_id,"
            " created_at, started_at, finished_at) VALUES (" + ", ".join("?" * 23) + ")", rows())
    conn.execute("ANALYZE")
    conn.close()


def add_events(url: str, app: str, env: str, number: int) -> None:
    """A release page's timeline: the steps of the one the bench opens, through the Ledger API."""
    from conveyor.ledger import open_ledger

    ledger = open_ledger(url)
    release = ledger.get_release(app, env, number)
    assert release is not None
    for step in ("recorded", "pull", "start", "health", "switch", "drain", "refs"):
        ledger.append_event(app=app, env=env, release_id=release.id, step=step, status="started", message=step)
        ledger.append_event(app=app, env=env, release_id=release.id, step=step, status="ok", message=f"{step} ok")
    ledger.close()


def signed_in_client(url: str, token: str) -> Any:
    import httpx

    http = httpx.Client(base_url=url, timeout=120)
    form = http.get("/signin")
    check = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    done = http.post("/signin", data={"csrf": check, "token": token, "next": "/"})
    if "conveyor_session" not in http.cookies:
        raise SystemExit(f"sign-in failed: HTTP {done.status_code}")
    return http


def timed_gets(http: Any, path: str, runs: int, between: Any = None) -> tuple[list[float], int, int]:
    """Server times of `runs` GETs, the page's size and the bytes that crossed the wire (gzip).
    `between()` runs before each GET, untimed (a change to the ledger, so nothing cached is shown)."""
    times, size, sent = [], 0, 0
    for _ in range(runs):
        if between is not None:
            between()
        started = time.perf_counter()
        response = http.get(path)
        times.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise SystemExit(f"GET {path}: HTTP {response.status_code} {response.text[:300]}")
        size, sent = len(response.content), response.num_bytes_downloaded
    return times, size, sent


def settle(http: Any, started: float) -> tuple[float, float]:
    """Seconds until the overview no longer says "counting commits" and then "not checked yet" (it is
    looked at every 0.2 s, so each figure is up to 0.2 s late)."""
    counted = checked = None
    while counted is None or checked is None:
        page = http.get("/").text
        now = time.perf_counter() - started
        if counted is None and "counting commits" not in page:
            counted = now
        if checked is None and "not checked yet" not in page:
            checked = now
        time.sleep(0.2)
    return counted, checked


def ledger_changer(url: str) -> Any:
    """A change the overview shows: a lock on one app's environment, then its lifting, by turns."""
    from conveyor.ledger import open_ledger

    ledger = open_ledger(url)
    state = {"locked": False}

    def change() -> None:
        if state["locked"]:
            ledger.lift_blocks(scope="env", app="app-0002", env="dev", actor="bench")
        else:
            ledger.add_block(scope="env", app="app-0002", env="dev", reason="bench", actor="bench", until=None)
        state["locked"] = not state["locked"]

    return change


def ms(values: list[float]) -> str:
    return (f"p50 {statistics.median(values) * 1000:7.1f} ms   p95 {percentile(values, 0.95) * 1000:7.1f} ms   "
            f"(n={len(values)}, max {max(values) * 1000:.1f})")


def event_latency(url: str, session_cookie: str, ledger_url: str, app: str, events: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    from conveyor.ledger import open_ledger

    ledger = open_ledger(ledger_url)
    operation, _ = ledger.server.submit(app=app, lane="dev", kind="deploy", params={"env": "dev", "ref": "x"},
                                        actor="bench", origin="bench")
    # Running under a lease no replica will ever let lapse (nothing claims it: it is already running).
    with ledger._write() as conn:
        from sqlalchemy import update

        from conveyor.ledger.schema import operations

        conn.execute(update(operations).where(operations.c.id == operation.id).values(
            state="running", holder="bench", lease_until=datetime.now(UTC) + timedelta(days=1),
            started_at=datetime.now(UTC), attempts=1))
    latencies = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        context = browser.new_context()
        context.add_cookies([{"name": "conveyor_session", "value": session_cookie, "url": url}])
        page = context.new_page()
        page.goto(url + "/")
        page.wait_for_selector(f"[data-operation='{operation.id}']", timeout=120_000)
        page.evaluate("""() => {
            window.seen = {};
            new MutationObserver(() => {
                for (const m of document.querySelectorAll('[data-testid=last-message]')) {
                    const t = m.textContent;
                    if (t.startsWith('bench-event-') && !(t in window.seen)) window.seen[t] = Date.now();
                }
            }).observe(document.body, {subtree: true, childList: true, characterData: true});
        }""")
        for n in range(events):
            label = f"bench-event-{n}"
            recorded = time.time()
            ledger.server.append_event(operation.id, {"step": "note", "status": "info", "message": label,
                                                      "data": {}, "release": None, "shown": True})
            page.wait_for_function(f"() => '{label}' in window.seen", timeout=120_000)
            latencies.append(page.evaluate(f"() => window.seen['{label}']") / 1000 - recorded)
        browser.close()
    with ledger._write() as conn:
        conn.execute(update(operations).where(operations.c.id == operation.id).values(
            state="cancelled", finished_at=datetime.now(UTC), lease_until=None))
    ledger.close()
    return latencies


def sqlite_plans(db: Path) -> None:
    from sqlalchemy.dialects import sqlite

    from conveyor.ledger.dashboard import heads_query

    sql = str(heads_query().compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    conn = sqlite3.connect(db)
    print("EXPLAIN QUERY PLAN (SQLite), live release and latest attempt of every app+env:")
    for row in conn.execute("EXPLAIN QUERY PLAN " + sql):
        print("    ", row[-1])
    conn.close()


PG_FILL = """
INSERT INTO releases (app, env, number, kind, status, sha, digest, image, spec, config_digest, config_source,
                      actor, origin, reason, forced, step, error, created_at)
SELECT 'app-' || lpad((k %% %(apps)s)::text, 4, '0'), (ARRAY['dev','staging','production'])[(k / %(apps)s) %% 3 + 1],
       k / (%(apps)s * 3) + 1, 'deploy', CASE WHEN k %% 23 = 0 THEN 'failed' ELSE 'succeeded' END,
       md5(k::text), 'sha256:x', 'img', '{}', '', '', 'ci', 'ci', '', false, 'done', '', now()
FROM generate_series(0, %(releases)s - 1) AS k
"""


def postgres_plans(apps: int, releases: int) -> None:
    """The same query's plan on PostgreSQL, over `releases` rows filled by one INSERT ... SELECT."""
    import psycopg
    from sqlalchemy.dialects import postgresql

    from conveyor.ledger import open_ledger
    from conveyor.ledger.dashboard import heads_query
    from devstack import Postgres

    pg = Postgres(Path(tempfile.mkdtemp(prefix="conveyor-dash-pg-"))).start()
    try:
        url = pg.url.replace("postgresql://", "postgresql+psycopg://")
        open_ledger(url).close()
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(PG_FILL, {"apps": apps, "releases": releases})
            conn.execute("INSERT INTO release_counters SELECT app, env, max(number) FROM releases GROUP BY 1, 2")
            conn.execute("ANALYZE")
            sql = str(heads_query().compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
            print(f"EXPLAIN ANALYZE (PostgreSQL, {releases:,} releases), the same query:")
            for (line,) in conn.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + sql):
                print("    ", line)
    finally:
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--apps", type=int, default=500)
    parser.add_argument("--releases", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--postgres", action="store_true", help="also print the query's plan on PostgreSQL")
    args = parser.parse_args()
    if args.postgres:
        postgres_plans(args.apps, args.releases)

    root = Path(tempfile.mkdtemp(prefix="conveyor-dash-bench-"))
    server = None
    try:
        home, db = root / "home", root / "ledger.db"
        url = f"sqlite:///{db}"
        env = server_env(home, url)
        from conveyor.ledger import open_ledger

        open_ledger(url).close()  # the schema, migrated
        origin, shas = make_repo(root)
        started = time.perf_counter()
        fill(db, home, origin, shas, args.apps, args.releases)
        count = sqlite3.connect(db).execute("SELECT count(*) FROM releases").fetchone()[0]
        print(f"ledger: {args.apps} apps x {len(STAGES)} stages, {count:,} releases (SQLite), filled in "
              f"{time.perf_counter() - started:.0f} s")
        per_env = args.releases // (args.apps * len(STAGES))
        add_events(url, "app-0000", "production", per_env)
        sqlite_plans(db)

        token = create_token(env, "bench-viewer", "read")
        server = ServerProcess.start(env, root / "server.log", workers=1)
        http = signed_in_client(server.url, token)
        floor, _, _ = timed_gets(http, "/api/health", args.runs)
        print(f"floor: GET /api/health (no ledger, no template) on this machine now:\n    {ms(floor)}")
        cold, _, _ = timed_gets(http, "/", 1)
        print(f"overview, first request after the start (git is asked in the background): {cold[0] * 1000:.0f} ms")
        counted, checked = settle(http, started := time.perf_counter())
        print(f"    every stage pair's waiting commits known {counted:.1f} s after that request, every target "
              f"checked {checked:.1f} s after it")
        flagged = http.get("/").text
        print(f"    tiles flagged by the checks: {flagged.count('<b>outage</b>')} outage, "
              f"{flagged.count('<b>drift</b>')} drift (no bench app has a running target)")
        times, size, sent = timed_gets(http, "/", args.runs, ledger_changer(url))
        print(f"overview GET /, each after a change to the ledger (rendered anew):\n    {ms(times)}   page "
              f"{size / 1024:.0f} KB, {sent / 1024:.0f} KB gzipped on the wire   (target p95 <= 100 ms, <= 300 KB)")
        times, size, sent = timed_gets(http, "/", args.runs)
        print(f"overview GET /, ledger unchanged since the last view (the shared rendering):\n    {ms(times)}")
        page = f"/apps/app-0000/releases/production/{per_env}"
        cold, _, _ = timed_gets(http, page, 1)
        times, size, _ = timed_gets(http, page, args.runs)
        print(f"release page {page}: first {cold[0] * 1000:.0f} ms, then\n    {ms(times)}   page {size / 1024:.0f} KB"
              "   (target p95 <= 50 ms)")
        latencies = event_latency(server.url, http.cookies["conveyor_session"], url, "app-0001", args.events)
        print(f"event recorded -> shown in the open overview (Chromium): median "
              f"{statistics.median(latencies) * 1000:.0f} ms, p95 {percentile(latencies, 0.95) * 1000:.0f} ms "
              f"(n={len(latencies)}; target median <= 250 ms)")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
