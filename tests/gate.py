"""A hold point for end-to-end tests: a pre-deploy task that waits at a gate the test opens."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.e2e import App


class Gate:
    """A hold point for a pre-deploy task: the task fetches http://127.0.0.1:PORT/ with busybox wget, and
    a held connection gets no answer until the test releases it. `hold()` holds the next task to arrive
    (later ones pass straight through); `wait_arrival` tells the test that task is at the gate (its
    connection was accepted), so the test knows where the operation is without looking at the clock."""

    def __init__(self) -> None:
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = int(self._server.getsockname()[1])
        self._lock = threading.Lock()
        self._to_hold = 0
        self._open = threading.Event()
        self._open.set()
        self._arrivals = threading.Semaphore(0)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def task_command(self) -> str:
        return f'["/bin/busybox", "sh", "-c", "/bin/busybox wget -q -O - http://127.0.0.1:{self.port}/"]'

    def hold(self) -> None:
        with self._lock:
            self._to_hold = 1
            self._open.clear()

    def release(self) -> None:
        with self._lock:
            self._to_hold = 0
            self._open.set()

    def wait_arrival(self, timeout: float = 120) -> None:
        """Block until the task to be held has connected."""
        if not self._arrivals.acquire(timeout=timeout):
            raise AssertionError("no task reached the gate")

    def close(self) -> None:
        """Stop serving. shutdown() first wakes the thread blocked in accept(), so it has ended before the socket's
        file descriptor is freed: a thread that called accept() on a freed descriptor would accept on whatever
        socket reuses its number next (seen: a later test's Kubernetes API server)."""
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)
        self._server.close()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with self._lock:
            held = self._to_hold > 0
            self._to_hold -= held
        with connection:
            if held:
                self._arrivals.release()
                self._open.wait()
            connection.recv(4096)
            connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")


@pytest.fixture(name="gate")
def gate_fixture() -> Iterator[Gate]:
    """A gate, opened again and closed at the end (import gate_fixture to use it as `gate`)."""
    the_gate = Gate()
    yield the_gate
    the_gate.release()
    the_gate.close()


def gate_tasks(app: App, gate: Gate) -> str:
    """Make the sample app's pre-deploy task pass through `gate`; commit and build it. Returns the commit."""
    config = app.repo / "conveyor.yml"
    text = config.read_text()
    start = text.index("    command:", text.index("  - name: migrate"))
    end = text.index("\n", start)
    config.write_text(text[:start] + f"    command: {gate.task_command()}" + text[end:])
    app.git("commit", "-qam", "pre-deploy task waits at the test's gate")
    app.ok("build", "HEAD")
    return app.git("rev-parse", "HEAD")


def queued(app: App, env: str) -> list[str]:
    """The operations queued with --wait on app's env, in ticket order (from the app's own ledger)."""
    import sqlalchemy as sa

    from conveyor.ledger.schema import waiters

    engine = sa.create_engine(f"sqlite:///{app.home / 'ledger.db'}", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            query = sa.select(waiters.c.operation).where(waiters.c.env == env).order_by(waiters.c.id)
            return list(conn.execute(query).scalars())
    finally:
        engine.dispose()


def await_queued(app: App, env: str, count: int, timeout: float = 120) -> list[str]:
    """Return once `count` operations are queued on env (whoever holds the lease is held at a gate, so the
    queue only grows meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = queued(app, env)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"only {len(found)} of {count} operations queued on {env}")


def wait_out_lease(app: App, env: str, *, grace: bool = True) -> None:
    """Until a dead holder's lease on env has expired (by its own record), plus the takeover grace."""
    from datetime import UTC, datetime

    from conveyor.ledger import open_ledger
    from conveyor.pipeline.lease import TAKEOVER_GRACE_TTLS

    ledger = open_ledger(f"sqlite:///{app.home / 'ledger.db'}")
    try:
        lease = ledger.get_lease("hello", env)
    finally:
        ledger.close()
    assert lease is not None
    ttl = float(app.env()["CONVEYOR_LEASE_TTL"])
    remaining = (lease.expires_at - datetime.now(UTC)).total_seconds() + (ttl * TAKEOVER_GRACE_TTLS if grace else 0)
    assert remaining <= ttl * (1 + TAKEOVER_GRACE_TTLS) + 1, f"the lease on {env} runs for {remaining:.0f}s more"
    time.sleep(max(remaining, 0) + 0.2)  # the lease's own record says when it may be taken over
