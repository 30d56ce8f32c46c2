"""Concurrent conveyor runs: proxy state read while it is written, FIFO `--wait` queues on both ledger
backends at a short lease TTL, and delivery leases that heartbeat.

Every operation that has to be "in the middle" is held there by a gate the test controls (see Gate), never
by a sleep."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from tests.e2e import App
from tests.gate import Gate, await_queued, gate_fixture, gate_tasks  # noqa: F401  (a fixture)


def open_ledger(app: App) -> Any:
    from conveyor.ledger import open_ledger as open_url

    return open_url(f"sqlite:///{app.home / 'ledger.db'}")


# ------------------------------------------------------------------------------ proxy state (proxy.json)


def _preflight_spec(env: str, port: int) -> dict[str, Any]:
    return {"target": "container-host", "app": "race", "env": env, "engine": "auto", "bind": "127.0.0.1",
            "port": port, "secrets": []}


def test_preflight_never_sees_a_port_taken_by_a_site_proxy_json_does_not_name_yet(
    tmp_path: Path, engine_env: dict[str, str]
) -> None:
    """A writer adds new listeners one reload after another while readers run the container host's
    preflight for each of them: every answer must be "ours or free", and proxy.json must always parse with
    no site lost."""
    from conveyor.targets.container_host.proxy import HAProxy
    from conveyor.targets.container_host.target import ContainerHost
    from devstack import free_port

    proxy = HAProxy(tmp_path / "proxy")
    proxy.ensure_running()
    envs = {f"e{index}": free_port() for index in range(6)}
    done = threading.Event()
    problems: list[str] = []

    def write() -> None:
        try:
            for env, port in envs.items():
                proxy.switch("race", env, "127.0.0.1", port, "127.0.0.1:1")
        finally:
            done.set()

    def read() -> None:
        host = ContainerHost(tmp_path / "proxy")
        seen = 0
        while not done.is_set():
            for env, port in envs.items():
                try:
                    host.preflight(_preflight_spec(env, port))
                    sites = len(HAProxy(tmp_path / "proxy").sites())
                except Exception as exc:
                    problems.append(f"{env}: {exc}")
                    return
                if sites < seen:
                    problems.append(f"proxy.json went from {seen} sites to {sites}")
                seen = max(seen, sites)

    readers = [threading.Thread(target=read) for _ in range(3)]
    writer = threading.Thread(target=write)
    try:
        for thread in (*readers, writer):
            thread.start()
        for thread in (writer, *readers):
            thread.join(timeout=120)
    finally:
        proxy.stop()
    assert problems == []
    assert set(proxy.sites()) == {f"race.{env}" for env in envs}


def test_concurrent_first_deploys_of_a_new_environment_all_succeed(app: App) -> None:
    """Issue 8: `deploy --wait` runs started at once on an environment never deployed before."""
    runs = [app.start("deploy", "staging", "v1", "--wait") for _ in range(6)]
    results = [(run.wait(timeout=300), run.stderr.read() if run.stderr else "") for run in runs]
    assert [code for code, _ in results] == [0] * 6, [err for code, err in results if code]
    assert sorted(r["number"] for r in app.history("staging")) == [1, 2, 3, 4, 5, 6]
    assert app.serves("staging") == "v1"


# ------------------------------------------------------------------------------ the --wait queue (FIFO)

LEASE_WORKER = r"""
import sys
from types import SimpleNamespace

from conveyor.ledger import open_ledger
from conveyor.pipeline.lease import LeaseKeeper

mode, url, name, hold = sys.argv[1:5]
ledger = open_ledger(url)
# The parts of a Workspace a LeaseKeeper uses; the ledger is the real one.
ws = SimpleNamespace(ledger=ledger, config=SimpleNamespace(app="web"), identity=SimpleNamespace(actor=name),
                     say=lambda line: print(line, flush=True))
with LeaseKeeper(ws, "prod", f"deploy by {name}", wait=(mode == "waiter")) as lease:
    ledger.append_event(app="web", env="prod", release_id=None, step="lease-taken", status="info", message=name)
    if mode == "holder":
        print("held", flush=True)
        with open(hold) as fifo:  # blocks until the test opens the fifo, returns when it closes it
            fifo.read()
    for step in range(5):  # a release's own writes, contending with the waiters still queued
        ledger.append_event(app="web", env="prod", release_id=None, step="work", status="info",
                            message=f"{name} {step}")
    assert not lease.lost, f"{name} lost the lease"
ledger.close()
"""


def _lease_worker(mode: str, url: str, name: str, hold: Path) -> Any:
    import os
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-c", LEASE_WORKER, mode, url, name, str(hold)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CONVEYOR_LEASE_TTL": "2", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def _await_line(proc: Any, prefix: str) -> None:
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"worker ended before printing {prefix!r}: {proc.communicate()[1]}")


def _ticket_order(url: str) -> list[str]:
    import sqlalchemy as sa

    from conveyor.ledger.schema import waiters

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            query = sa.select(waiters.c.actor).where(waiters.c.env == "prod").order_by(waiters.c.id)
            return list(conn.execute(query).scalars())
    finally:
        engine.dispose()


def _stall_writers(url: str, seconds: float) -> None:
    """Hold the ledger's write locks for longer than a TTL (2 s) and less than the takeover grace, as a
    burst of other writers would: every heartbeat waits, reads go on (SQLite WAL; PostgreSQL EXCLUSIVE)."""
    import time

    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if url.startswith("sqlite"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("LOCK TABLE waiters, leases, events IN EXCLUSIVE MODE")
            time.sleep(seconds)  # the stall itself, not a wait for something to happen
            conn.rollback()
    finally:
        engine.dispose()


def _await_tickets(url: str, count: int, timeout: float = 120) -> list[str]:
    """The queue once `count` waiters hold a ticket (the holder is held, so nobody leaves it meanwhile)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = _ticket_order(url)
        if len(queued) >= count:
            return queued
        time.sleep(0.1)
    raise AssertionError(f"only {len(queued)} of {count} waiters queued")


def test_queued_waiters_take_the_lease_in_ticket_order_at_a_short_ttl(database_url: str, tmp_path: Path) -> None:
    """Issue 8: at TTL 2 a waiter starved of the write lock missed its heartbeat, was dropped and queued
    again at the back. The holder is held at a fifo until the ledger holds every waiter's ticket, the
    ledger's writers are stalled for longer than the TTL, then the hold is released: the waiters must take
    the lease in ticket order, and none (nor the holder) may lose it."""
    import os

    from conveyor.ledger import open_ledger

    hold = tmp_path / "hold"
    os.mkfifo(hold)
    holder = _lease_worker("holder", database_url, "holder", hold)
    _await_line(holder, "held")
    waiters = [_lease_worker("waiter", database_url, f"w{index}", hold) for index in range(10)]
    try:
        queued = _await_tickets(database_url, len(waiters))
        _stall_writers(database_url, seconds=2.8)
        with open(hold, "w"):
            pass  # the holder's read returns: it finishes and lets go
        failures = []
        for proc in (holder, *waiters):
            _, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                failures.append(err.strip().splitlines()[-1])
    finally:
        for proc in (holder, *waiters):
            if proc.poll() is None:
                proc.kill()
    ledger = open_ledger(database_url)
    try:
        taken = [event.message for event in ledger.events(app="web", env="prod", step="lease-taken")]
    finally:
        ledger.close()
    assert failures == []
    assert sorted(queued) == sorted(f"w{index}" for index in range(10))
    assert taken == ["holder", *queued]


# ------------------------------------------------------------------------------ what the ledger records


def test_pre_deploy_task_output_is_in_the_ledger_events_of_its_release(app: App) -> None:
    result = app.ok("deploy", "staging", "v1")
    assert "migrating schema for staging" in result.err
    number = app.history("staging")[0]["number"]
    ledger = open_ledger(app)
    try:
        release = ledger.get_release("hello", "staging", number)
        messages = [event.message for event in ledger.events(app="hello", env="staging", release_id=release.id)]
    finally:
        ledger.close()
    assert "migrating schema for staging" in messages  # the task's own line, recorded with its release


# ------------------------------------------------------------------------------ promote pins its source


def test_a_promotion_queued_behind_a_hold_ships_the_pinned_release_not_what_staging_ran_meanwhile(
    app: App, gate: Gate
) -> None:
    """`promote --wait` pins staging's live release, then waits for production's lease; staging moves on
    meanwhile. Production must get the pinned release, not the one staging runs when the lease comes."""
    from devstack import commit_sample_version

    pinned = gate_tasks(app, gate)
    app.ok("deploy", "staging", pinned)
    newer = commit_sample_version(app.repo, "v3")
    app.ok("build", newer)
    gate.hold()
    holder = app.start("deploy", "production", pinned, "--hotfix", "--reason", "holds production's lease")
    gate.wait_arrival()
    promotion = app.start("promote", "staging", "production", "--wait")
    await_queued(app, "production", 1)  # pinned and queued behind the holder
    app.ok("deploy", "staging", newer)  # its task passes the gate: only the holder is held
    gate.release()
    assert holder.wait(timeout=120) == 0
    assert promotion.wait(timeout=120) == 0, promotion.stderr.read() if promotion.stderr else ""
    promoted = app.history("production")[0]
    assert (promoted["kind"], promoted["sha"]) == ("promote", pinned)
    assert app.history("staging")[0]["sha"] == newer
    assert app.serves("production") == "v2" and app.serves("staging") == "v3"
