"""The queue under load: many operations across many apps submitted at once to two replicas.

Two `conveyor server` processes (4 workers each) on one PostgreSQL ledger (a throwaway cluster,
devstack.Postgres) and one CONVEYOR_HOME (shared mirrors). APPS apps, each a one-commit git repo on its own
bare remote naming its own app in conveyor.yml (environments staging and production), all sharing one image
repository in a real registry (devstack.Registry) where each app's commit is tagged. The operation is a
dry-run deploy (`dry_run: true`): the worker fetches the app's mirror, reads the committed config, finds the
image in the registry, checks blocks and the target's preflight, and records the plan; no container starts.

OPERATIONS operations are submitted by 16 client threads at once, alternating between the replicas, each app
getting OPERATIONS / APPS deploys alternating staging and production. The bench waits for every one to
finish, then checks and prints:
- lost: submitted ids that never finished;
- run twice: attempts != 1, or events recording a takeover or a requeue;
- overlap: two operations of one app and environment running at the same time (started_at/finished_at);
- FIFO: within each app and environment, start order != id order;
- total wall time (first submit → last finish) and how the operations split between the replicas.

    .venv/bin/python bench/queue_load.py [--apps N] [--operations N]

Defaults are the issue's sizes (200 operations across 50 apps); `--apps 5 --operations 20` is a quick run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from server_harness import (
    AppRepo,
    ServerProcess,
    client,
    create_token,
    free_ports,
    make_app_repo,
    push_image,
    register,
    server_env,
)

from devstack import Postgres, Registry

TAKEN_OVER = ("taking over operation", "stopped renewing its lease")


def make_apps(root: Path, registry: str, count: int) -> list[AppRepo]:
    ports = free_ports(2 * count)
    apps = [make_app_repo(root, f"app-{n:02d}", registry, "load", (ports[2 * n], ports[2 * n + 1]))
            for n in range(count)]
    push_image(registry, "load", [app.sha for app in apps])
    return apps


def submit_all(urls: list[str], token: str, plan: list[tuple[str, str]]) -> list[int]:
    """Submit every (app, env) dry-run deploy at once from 16 threads, alternating replicas; the ids."""
    clients = [client(url, token) for url in urls]

    def submit(index: int) -> int:
        app, env = plan[index]
        response = clients[index % len(clients)].post(f"/api/apps/{app}/deploy",
                                                      json={"env": env, "ref": "main", "dry_run": True})
        if response.status_code != 202:
            raise SystemExit(f"submit {app} {env}: HTTP {response.status_code} {response.text}")
        return int(response.json()["id"])

    try:
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(submit, range(len(plan))))
    finally:
        for each in clients:
            each.close()


def wait_for_all(api: Any, ids: list[int], timeout: float) -> dict[int, dict[str, Any]]:
    """Poll GET /api/operations until every submitted id has finished (or the timeout: the rest are lost)."""
    wanted, deadline = set(ids), time.monotonic() + timeout
    while True:
        seen: dict[int, dict[str, Any]] = {}
        before = None
        while True:
            page = api.get("/api/operations", params={"limit": 500, **({"before": before} if before else {})})
            page.raise_for_status()
            body = page.json()
            seen.update({op["id"]: op for op in body["operations"] if op["id"] in wanted})
            before = body["next_before"]
            if before is None:
                break
        finished = {n: op for n, op in seen.items() if op["finished_at"] is not None}
        if len(finished) == len(wanted) or time.monotonic() > deadline:
            return finished
        time.sleep(0.2)


def check(operations: dict[int, dict[str, Any]], ids: list[int], database_url: str) -> list[str]:
    """The problems found (each one line); prints the per-check figures."""
    from datetime import datetime

    from conveyor.ledger import open_ledger

    problems: list[str] = []
    lost = sorted(set(ids) - set(operations))
    states = Counter(op["state"] for op in operations.values())
    twice = [n for n, op in operations.items() if op["attempts"] != 1]
    ledger = open_ledger(database_url)
    try:
        for number in ids:
            notes = [e.payload.get("message", "") for e in ledger.server.events_after(number, 0, limit=10_000)]
            if any(marker in note for note in notes for marker in TAKEN_OVER):
                twice.append(number)
    finally:
        ledger.close()
    lanes: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for op in operations.values():
        lanes[(op["app"], op["env"] or "(build)")].append(op)
    overlaps, unordered = 0, 0
    for lane in lanes.values():
        by_start = sorted(lane, key=lambda op: datetime.fromisoformat(op["started_at"]))
        if [op["id"] for op in by_start] != sorted(op["id"] for op in lane):
            unordered += 1
        for earlier, later in zip(by_start, by_start[1:], strict=False):
            if datetime.fromisoformat(later["started_at"]) < datetime.fromisoformat(earlier["finished_at"]):
                overlaps += 1
    print(f"  finished: {len(operations)} of {len(ids)}; states {dict(states)}")
    print(f"  lost (never finished): {len(lost)}")
    print(f"  run twice (attempts != 1 or a takeover/requeue event): {len(set(twice))}")
    print(f"  lanes (app+env): {len(lanes)}; overlapping runs within a lane: {overlaps}; "
          f"lanes whose start order != id order: {unordered}")
    if lost:
        problems.append(f"lost: {lost[:10]}")
    if twice:
        problems.append(f"run twice: {sorted(set(twice))[:10]}")
    if overlaps or unordered:
        problems.append(f"{overlaps} overlaps, {unordered} lanes out of FIFO order")
    failed = [op for op in operations.values() if op["state"] != "succeeded"]
    if failed:
        problems.append(f"{len(failed)} did not succeed, e.g. #{failed[0]['id']}: {failed[0]['result']}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--apps", type=int, default=50)
    parser.add_argument("--operations", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4, help="per replica")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="conveyor-queue-load-"))
    registry = Registry(root / "registry").start()
    postgres = Postgres(Path(tempfile.mkdtemp(prefix="conveyor-load-pg-"))).start()
    servers: list[ServerProcess] = []
    try:
        apps = make_apps(root / "repos", registry.host, args.apps)
        env = server_env(root / "home", postgres.url)
        admin = create_token(env, "admin", "admin")
        ci = create_token(env, "ci", "operate:*", "read")
        servers = [ServerProcess.start(env, root / f"replica-{n}.log", workers=args.workers) for n in (1, 2)]
        with client(servers[0].url, admin) as api:
            for app in apps:
                register(api, app)
        plan = [(apps[n % len(apps)].name, ("staging", "production")[(n // len(apps)) % 2])
                for n in range(args.operations)]
        started = time.perf_counter()
        ids = submit_all([s.url for s in servers], ci, plan)
        submitted = time.perf_counter()
        with client(servers[0].url, ci) as api:
            operations = wait_for_all(api, ids, timeout=600)
        took = time.perf_counter() - started
        print(f"\n{args.operations} dry-run deploys across {args.apps} apps ({len(set(plan))} app+env lanes), "
              f"2 replicas x {args.workers} workers, PostgreSQL")
        print(f"  submitted all in {submitted - started:.2f} s; all finished {took:.2f} s after the first submit")
        problems = check(operations, ids, postgres.url)
        replicas = Counter(op["replica"] for op in operations.values())
        names = {s.log.read_text().split("(replica ", 1)[1].split(",", 1)[0]: s.log.stem for s in servers}
        print("  split: " + ", ".join(f"{names.get(r, r)} ({r}) ran {n}" for r, n in replicas.most_common()))
        print("  verdict: " + ("0 lost, 0 run twice, FIFO held per lane" if not problems else "; ".join(problems)))
    finally:
        for server in servers:
            server.stop()
        postgres.stop()
        registry.stop()
        shutil.rmtree(postgres.root, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
