"""Queue latency of `conveyor server`: submit → the operation's first event, with an idle worker.

A real `conveyor server` process (4 workers, free port) on PostgreSQL (a throwaway cluster, devstack.Postgres)
and on SQLite; one app registered through POST /api/apps (a one-commit git repo on a bare remote); its image
is in a real registry (devstack.Registry). The operation is a `build` of that commit, already in the
registry, so the worker fetches the app's mirror, reads the committed config, looks the tag up and records
"…is already in the registry; not building": its first event.

One run: POST /api/apps/lat/build (keep-alive httpx client) → open GET /api/operations/{id}/events → the
first SSE `progress` event arrives; the clock runs from just before the POST to that event. The bench then
reads the stream to `end`, so the next run finds the worker idle again. One warm-up run is not counted.

    .venv/bin/python bench/queue_latency.py [--runs N] [--backend sqlite|postgres|both]

Defaults are the issue's measurement (50 runs on each backend; target: median ≤ 100 ms on PostgreSQL);
`--runs 5` is a quick check.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from server_harness import (
    ServerProcess,
    all_sse_events,
    client,
    create_token,
    first_sse_event,
    free_ports,
    make_app_repo,
    push_image,
    register,
    server_env,
    summary,
)

from devstack import Postgres, Registry


def one_run(api: object, app: str) -> tuple[int, float, float, str]:
    """(operation id, submit round trip, submit → first event, the event's message) for one build."""
    started = time.perf_counter()
    response = api.post(f"/api/apps/{app}/build", json={"ref": "main"})  # type: ignore[attr-defined]
    submitted = time.perf_counter()
    if response.status_code != 202:
        raise SystemExit(f"submit: HTTP {response.status_code} {response.text}")
    number = response.json()["id"]
    name, data = first_sse_event(api, number)
    first = time.perf_counter()
    if name != "progress":
        raise SystemExit(f"operation #{number}'s first event is {name}: {data}")
    events = all_sse_events(api, number)
    final = json.loads(events[-1][1])
    if final["state"] != "succeeded":
        raise SystemExit(f"operation #{number} {final['state']}: {final['result']}")
    return number, submitted - started, first - started, json.loads(data).get("message", "")


def breakdown(database_url: str, numbers: list[int]) -> tuple[list[float], list[float]]:
    """From the ledger's own timestamps: created → claimed by a worker, and claimed → first event recorded."""
    from conveyor.ledger import open_ledger

    ledger = open_ledger(database_url)
    try:
        waits, works = [], []
        for number in numbers:
            operation = ledger.server.get_operation(number)
            first = ledger.server.events_after(number, 0, limit=1)[0]
            waits.append((operation.started_at - operation.created_at).total_seconds())
            works.append((first.at - operation.started_at).total_seconds())
        return waits, works
    finally:
        ledger.close()


def measure(label: str, root: Path, registry: str, database_url: str | None, runs: int) -> None:
    app = make_app_repo(root / "repos", "lat", registry, "lat", tuple(free_ports(2)))  # type: ignore[arg-type]
    push_image(registry, "lat", [app.sha])
    env = server_env(root / "home", database_url)
    admin = create_token(env, "admin", "admin")
    ci = create_token(env, "ci", "operate:*", "read")
    server = ServerProcess.start(env, root / "server.log")
    try:
        with client(server.url, admin) as api:
            register(api, app)
        with client(server.url, ci) as api:
            one_run(api, app.name)  # warm-up: the mirror's first fetch, connections
            numbers, submits, firsts = [], [], []
            for _ in range(runs):
                number, submit, first, message = one_run(api, app.name)
                numbers.append(number)
                submits.append(submit)
                firsts.append(first)
    finally:
        server.stop()
    waits, works = breakdown(database_url or f"sqlite:///{root / 'home' / 'ledger.db'}", numbers)
    print(f"\n{label}: {runs} builds of a commit already in the registry, one at a time (idle worker)")
    print(f"  first event: {message!r}")
    print(f"  submit (POST round trip)   {summary(submits)}")
    print(f"  submit → first SSE event   {summary(firsts)}   <- the issue's figure")
    print("  of which, by the ledger's timestamps:")
    print(f"    created → claimed        {summary(waits)}")
    print(f"    claimed → first event    {summary(works)}  (mirror fetch, config, registry lookup)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="conveyor-queue-latency-"))
    registry = Registry(root / "registry").start()
    try:
        if args.backend in ("postgres", "both"):
            postgres = Postgres(Path(tempfile.mkdtemp(prefix="conveyor-latency-pg-"))).start()
            try:
                measure("postgres", root / "pg", registry.host, postgres.url, args.runs)
            finally:
                postgres.stop()
                shutil.rmtree(postgres.root, ignore_errors=True)
        if args.backend in ("sqlite", "both"):
            measure("sqlite", root / "sqlite", registry.host, None, args.runs)
    finally:
        registry.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
