"""The server's workers: threads that claim queued operations and perform them, one per lane at a time.

Each running operation holds a lease on its row that a heartbeat thread renews; a replica killed with
kill -9 stops renewing, and any replica's reaper puts its operations back at the head of their lanes. The
worker that claims one again first looks at what the dead attempt left: a release it finished stands (its
record becomes the operation's result, nothing runs twice); one it left unfinished is taken over by the
environment's lease (pipeline/lease.py records it `interrupted`) and the operation runs again.

Workers wake when an operation is submitted or a lane frees up: at once in this process, through
PostgreSQL's LISTEN/NOTIFY from other replicas, and by polling as the fallback.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor import tracing
from conveyor.errors import EXIT_FAILED, EXIT_REFUSED, ConveyorError
from conveyor.pipeline.events import Progress
from conveyor.pipeline.identity import Identity
from conveyor.pipeline.lease import BEATS_PER_TTL, Heartbeat
from conveyor.pipeline.outcome import error_kind, failure, release_result

if TYPE_CHECKING:
    from conveyor.ledger.server_store import Operation
    from conveyor.ledger.store import Ledger
    from conveyor.pipeline.live_checks import LiveChecks
    from conveyor.pipeline.workspace import Workspace

log = logging.getLogger("conveyor.server")


class Wakeup:
    """A generation counter threads wait on, and callbacks (an event loop's) told of every bump."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._callbacks: list[Callable[[], None]] = []

    def bump(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def wait(self, seen: int, timeout: float) -> int:
        with self._cond:
            if self._generation == seen:
                self._cond.wait(timeout)
            return self._generation

    @property
    def generation(self) -> int:
        return self._generation

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        with self._cond:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._cond:
                self._callbacks.remove(callback)

        return unsubscribe


def _log_step(operation: Operation, event: Progress, trace_id: str) -> None:
    """One JSON line per step event of an operation (server/logs.py formats it); the message is the redacted
    one the event stream carries."""
    if event.status == "info" and not event.shown:
        return  # the record's detail: the event stream has it, the log does not need it
    log.info("step", extra={"operation_id": operation.id, "trace_id": trace_id or None, "app": operation.app,
                            "env": operation.lane or None, "step": event.step, "step_status": event.status,
                            "release": event.release, "detail": event.message})


def replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Server:
    """Everything one `conveyor server` process shares: its ledger, its state directory (mirrors and the
    targets' state), its replica name, and the wake-ups of its workers and event streams."""

    def __init__(self, ledger: Ledger, home: Path, *, replica: str | None = None,
                 notify_defaults: list[Any] | None = None, public_url: str | None = None) -> None:
        self.ledger = ledger
        self.public_url = public_url
        self.notify_defaults = list(notify_defaults or [])  # org-wide announcement destinations
        self.home = home
        self.replica = replica or replica_name()
        self.queue_woken = Wakeup()
        self.events_woken = Wakeup()
        self.pool: WorkerPool | None = None
        self.checks: LiveChecks | None = None  # the overview's cached target checks (pipeline/live_checks.py)

    def running(self) -> list[int]:
        """The operations this replica's workers are performing now."""
        return self.pool.running() if self.pool is not None else []

    @property
    def store(self) -> Any:
        return self.ledger.server

    def workspace(self, app_name: str, *, identity: Identity | None = None, fetch: bool = False,
                  sink: Callable[[Progress], None] | None = None) -> Workspace:
        """A workspace on the app's mirror (fetched first when `fetch`), sharing this server's ledger."""
        from conveyor.errors import BadInput
        from conveyor.pipeline.apps import mirror, remember_stages
        from conveyor.pipeline.workspace import Workspace

        app = self.store.get_app(app_name)
        if app is None:
            raise BadInput(f"no app named '{app_name}' is registered (conveyor apps add {app_name} --repo URL)")
        repo = mirror(self.home, app, fetch=fetch)
        ws = Workspace(repo.path, repo=repo, identity=identity, ledger=self.ledger,
                       sink=sink or (lambda event: None), notify_defaults=self.notify_defaults,
                       on_config=lambda config: remember_stages(self.ledger, app, config))
        ws.public_url = self.public_url
        return ws

    def submitted(self) -> None:
        self.queue_woken.bump()


class WorkerPool:
    def __init__(self, server: Server, *, workers: int, ttl: float, poll: float = 1.0) -> None:
        self.server = server
        server.pool = self
        self.ttl = ttl
        self.poll = poll
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"worker-{n}", daemon=True)
                         for n in range(workers)]
        self._reaper = threading.Thread(target=self._reap, name="reaper", daemon=True)
        self._running: dict[int, str] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._reaper.start()

    def running(self) -> list[int]:
        with self._lock:
            return sorted(self._running)

    def drain(self, timeout: float | None = None) -> None:
        """Start nothing new; return once the operations under way have finished."""
        self._stopping.set()
        self.server.queue_woken.bump()
        for thread in self._threads:
            thread.join(timeout)

    # ------------------------------------------------------------------------------------------ loops

    def _work(self) -> None:
        seen = -1
        while not self._stopping.is_set():
            try:
                operation = self.server.store.claim(self.server.replica, self.ttl)
            except ConveyorError as exc:
                log.warning("cannot claim work: %s", exc.message)
                operation = None
            if operation is None:
                seen = self.server.queue_woken.wait(seen, self.poll)
                continue
            with self._lock:
                self._running[operation.id] = operation.app
            try:
                self.perform(operation)
            finally:
                with self._lock:
                    self._running.pop(operation.id, None)

    def _reap(self) -> None:
        """Put the operations of replicas that stopped renewing their leases back in their lanes."""
        while not self._stopping.wait(max(self.ttl / BEATS_PER_TTL, 0.05)):
            try:
                if self.server.store.requeue_lapsed():
                    self.server.queue_woken.bump()
            except ConveyorError as exc:
                log.warning("cannot check for lapsed operations: %s", exc.message)

    # ------------------------------------------------------------------------------------------ one

    def perform(self, operation: Operation) -> None:
        store, replica = self.server.store, self.server.replica
        trace_id = ""

        def record(event: Progress) -> None:
            store.append_event(operation.id, asdict(event))
            self.server.events_woken.bump()
            _log_step(operation, event, trace_id)

        beat = Heartbeat(f"operation-{operation.id}", self.ttl / BEATS_PER_TTL,
                         lambda: store.renew(operation.id, replica, self.ttl))
        # One trace per operation: the submitter's, when it sent a traceparent; the release's spans are its
        # children (pipeline/release.py).
        with beat, tracing.operation(f"operation {operation.kind}", parent=operation.traceparent,
                                     app=operation.app, env=operation.lane or None, kind=operation.kind,
                                     replica=replica, **{"operation.id": operation.id}) as span:
            trace_id = span.trace_id
            # First thing, so a follower hears at once that its turn came, before the fetch and the config
            # read that every operation starts with.
            record(Progress("note", "info", f"operation #{operation.id} started on replica {replica}; fetching "
                            f"{operation.app}'s repo"))
            state, code, result, note = self._outcome(operation, record)
            span.set(outcome=state, exit_code=code)
            if state == "failed":
                span.fail(str(((result or {}).get("error") or {}).get("message") or "failed"))
        log.info("operation finished", extra={"operation_id": operation.id, "trace_id": trace_id or None,
                                              "app": operation.app, "env": operation.lane or None,
                                              "kind": operation.kind, "state": state})
        if state == "superseded":
            return  # already set aside with its note
        store.finish(operation.id, replica, state=state, exit_code=code, result=result, note=note)
        self.server.events_woken.bump()
        self.server.queue_woken.bump()

    def _outcome(self, operation: Operation, record: Callable[[Progress], None]) -> tuple[str, int, Any, str]:
        from conveyor.pipeline.queue import perform, supersedes

        identity = Identity(operation.actor, operation.origin)
        try:
            ws = self.server.workspace(operation.app, identity=identity, fetch=True, sink=record)
        except ConveyorError as exc:
            return "failed", exc.exit_code, failure(exc.exit_code, error_kind(exc), exc.message), ""
        try:
            if operation.attempts > 1:
                finished = self._left_finished(ws, operation)
                if finished is not None:
                    record(Progress("note", "info", f"the earlier attempt's release {finished['env']}#"
                                    f"{finished['number']} had {finished['status']}: that is the outcome"))
                    return ("succeeded" if finished["status"] == "succeeded" else "failed",
                            0 if finished["status"] == "succeeded" else EXIT_FAILED, finished, operation.note)
                record(Progress("note", "info", f"taking over operation #{operation.id} on {self.server.replica} "
                                f"(attempt {operation.attempts})"))
            newer = supersedes(ws, self.server.store, operation)
            if newer is not None:
                self._supersede(operation, newer, record)
                return "superseded", EXIT_REFUSED, None, ""
            code, result = perform(ws, operation.kind, operation.params)
            return ("succeeded" if code == 0 else "failed"), code, result, ""
        except Exception as exc:  # a worker outlives any one operation; the record says what broke
            log.exception("operation #%s failed unexpectedly", operation.id)
            message = ws.redactor.text(f"{type(exc).__name__}: {exc}")
            return "failed", EXIT_FAILED, failure(EXIT_FAILED, "failed", message), ""
        finally:
            ws.close()

    def _left_finished(self, ws: Workspace, operation: Operation) -> dict[str, Any] | None:
        """The release an earlier attempt of this operation finished (succeeded or failed), if it did."""
        label = None
        for event in self.server.store.events_after(operation.id, 0, limit=100_000):
            label = event.payload.get("release") or label
        if label is None or "#" not in label:
            return None
        env, number = label.rsplit("#", 1)
        release = ws.ledger.get_release(operation.app, env, int(number))
        if release is None or release.status in ("pending", "running", "interrupted"):
            return None
        return release_result(release)

    def _supersede(self, operation: Operation, newer: Operation, record: Callable[[Progress], None]) -> None:
        store = self.server.store
        skipped = [operation] + [w for w in store.waiting_behind(operation) if w.id < newer.id]
        for waiting in skipped:
            note = f"superseded by operation #{newer.id} (deploy {newer.params['ref']}): queue: supersede"
            result = failure(EXIT_REFUSED, "superseded", f"operation #{waiting.id} was {note}")
            store.append_event(waiting.id, asdict(Progress("note", "info", note)))
            store.set_aside(waiting.id, state="superseded", note=note, exit_code=EXIT_REFUSED, result=result,
                            by_holder=self.server.replica if waiting.id == operation.id else None)
        self.server.events_woken.bump()
        self.server.queue_woken.bump()
