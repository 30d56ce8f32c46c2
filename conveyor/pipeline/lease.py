"""Hold the per app+env lease for a whole operation: fail fast or queue, heartbeat, take over the
lease of a holder that died, and always let go."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType

from conveyor.errors import Refused
from conveyor.ledger.models import Lease, Release
from conveyor.pipeline.workspace import Workspace
from conveyor.settings import lease_ttl


def describe_lease(lease: Lease) -> str:
    since = lease.acquired_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{lease.actor} is running '{lease.operation}' since {since}"


# A holder or waiter heartbeats every ttl / BEATS_PER_TTL seconds, so it can miss BEATS_PER_TTL - 1 beats
# (a ledger busy with other writers) before its lease expires.
BEATS_PER_TTL = 4
# A waiter's ticket is skipped once silent for this many TTLs: far more than a late heartbeat, so only a
# waiter that died loses its turn; one that was only late keeps its place.
WAITER_SILENT_TTLS = 3
# An expired lease is taken over only once it has been expired for this many TTLs more: a holder that is
# alive but whose heartbeats waited behind other writers longer than a TTL keeps its lease.
TAKEOVER_GRACE_TTLS = 1
POLL_INTERVAL = 0.2  # seconds between a waiter's looks at the queue (reads only)


class Heartbeat:
    """Calls `beat` every `interval` seconds in its own thread, so the caller's own work (a deploy step, a
    waiter's polling) never makes a heartbeat late. `beat` returning False means the thing it keeps alive
    is gone: the thread stops and `lost` is set. A transient ledger error is retried at the next beat."""

    def __init__(self, name: str, interval: float, beat: Callable[[], bool]) -> None:
        self.lost = False
        self._beat = beat
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self._beat():
                    self.lost = True
                    return
            except Exception:  # a transient ledger error must not end the heartbeat
                continue


class LeaseKeeper:
    """Context manager: acquires on enter, heartbeats in a thread, releases on exit."""

    def __init__(self, ws: Workspace, env: str, operation: str, *, wait: bool, seize: bool = False,
                 at_expiry: bool = False) -> None:
        """seize: take the lease even from a holder that still looks alive (`recover --force`). at_expiry: take
        an expired lease at once, without the grace an ordinary operation leaves a late heartbeat
        (`recover`: a person has judged the holder gone)."""
        self.ws = ws
        self.seize = seize
        self.interrupted: list[Release] = []  # releases of dead holders this keeper marked interrupted
        self.app = ws.config.app
        self.env = env
        self.operation = operation
        self.wait = wait
        self.holder = uuid.uuid4().hex
        self.ttl = lease_ttl()
        self._grace = 0.0 if at_expiry else self.ttl * TAKEOVER_GRACE_TTLS
        self._current: Lease | None = None  # the lease that refused us, to name its holder
        self._heartbeat: Heartbeat | None = None

    @property
    def lost(self) -> bool:
        return self._heartbeat is not None and self._heartbeat.lost

    def confirm(self) -> bool:
        """Whether this keeper still holds the lease, asked of the ledger now (a renewal), not read from the
        heartbeat's last answer: a decision to change the target must not rest on a beat up to a third of a
        TTL old, when `recover --force` may have taken the lease since."""
        if self.lost:
            return False
        try:
            return self._beat()
        except Exception:  # the ledger did not answer this once: the heartbeat's own verdict stands
            return not self.lost

    def __enter__(self) -> LeaseKeeper:
        if self.wait:
            self._acquire_in_turn()
        else:
            self._acquire_or_refuse()
        self._heartbeat = Heartbeat("lease-heartbeat", self.ttl / BEATS_PER_TTL, self._beat).__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._heartbeat is not None:
            self._heartbeat.__exit__()
        self.ws.ledger.release_lease(app=self.app, env=self.env, holder=self.holder)

    def _try(self) -> bool:
        attempt = self.ws.ledger.try_acquire_lease(
            app=self.app, env=self.env, holder=self.holder, actor=self.ws.identity.actor,
            operation=self.operation, ttl=self.ttl, grace=self._grace,
        )
        if attempt.taken_over is not None:
            self._recover_from(attempt.taken_over)
        if not attempt.acquired and attempt.holder is not None:
            self._current = attempt.holder
        return attempt.acquired

    def _acquire_or_refuse(self) -> None:
        if self._try():
            return
        if self.seize:
            self._seize()
            return
        assert self._current is not None
        raise Refused(
            f"{self.app}/{self.env} is busy (its lease is held): {describe_lease(self._current)}. "
            "Try again when it finishes, or pass --wait to queue behind it."
        )

    def _seize(self) -> None:
        replaced = self.ws.ledger.seize_lease(
            app=self.app, env=self.env, holder=self.holder, actor=self.ws.identity.actor,
            operation=self.operation, ttl=self.ttl,
        )
        if replaced is not None:
            self._recover_from(replaced, f"took over the lease of {replaced.actor} ('{replaced.operation}'), "
                                         "declared stuck")

    def _acquire_in_turn(self) -> None:
        """First come, first served: only the oldest live waiter may take the lease when it frees up.

        The ticket is kept alive by its own heartbeat thread; the loop here only reads (the queue's head,
        the lease) and writes only when this ticket heads the queue and the lease is free or expired."""
        ticket = self._enqueue()
        silent_after = self.ttl * WAITER_SILENT_TTLS
        try:
            with Heartbeat("waiter-heartbeat", self.ttl / BEATS_PER_TTL, lambda: self._touch(ticket)):
                self._wait_for_turn(ticket, silent_after)
        finally:
            self.ws.ledger.remove_waiter(ticket, forget_silent_after=silent_after)

    def _enqueue(self, ticket: int | None = None) -> int:
        return self.ws.ledger.enqueue_waiter(
            app=self.app, env=self.env, holder=self.holder, actor=self.ws.identity.actor,
            operation=self.operation, ticket=ticket,
        )

    def _touch(self, ticket: int) -> bool:
        """Heartbeat the ticket; one forgotten while this waiter was late goes back to its own place."""
        if not self.ws.ledger.touch_waiter(ticket):
            self._enqueue(ticket)
        return True

    def _wait_for_turn(self, ticket: int, silent_after: float) -> None:
        ledger = self.ws.ledger
        announced = False
        while True:
            first = ledger.first_waiter(app=self.app, env=self.env, stale_after=silent_after)
            lease = ledger.get_lease(self.app, self.env)
            free = lease is None or lease.expires_at + timedelta(seconds=self._grace) < datetime.now(UTC)
            if first == ticket and free and self._try():
                return
            self._current = lease or self._current
            if not announced and self._current is not None:
                self.ws.say(f"waiting: {describe_lease(self._current)}")
                announced = True
            time.sleep(POLL_INTERVAL)

    def _recover_from(self, dead: Lease, message: str = "") -> None:
        """The previous holder stopped heartbeating (killed): mark its release interrupted, in the record."""
        message = message or f"took over an expired lease from {dead.actor} ('{dead.operation}')"
        self.ws.say(message)
        if dead.release_id is not None:
            release = self.ws.ledger.get_release_by_id(dead.release_id)
            if release is not None and release.status in ("pending", "running"):
                self.mark_interrupted(release, message)

    def mark_interrupted(self, release: Release, message: str) -> None:
        """Record a release whose holder is gone as interrupted at the step it reached, queueing what that
        outcome owes (its announcements) in the same transaction."""
        from dataclasses import replace
        from datetime import UTC, datetime

        from conveyor.pipeline.outbox import owed

        ledger = self.ws.ledger
        error = f"holder stopped heartbeating during step '{release.step}'"
        finished_at = datetime.now(UTC)
        final = replace(release, status="interrupted", error=error, finished_at=finished_at)
        recorded = ledger.update_release(
            release.id, status="interrupted", finished=True, error=error, finished_at=finished_at,
            outbox_items=owed(self.ws, final, finished_at),
        )
        ledger.append_event(
            app=self.app, env=self.env, release_id=release.id, step="interrupted", status="failed",
            message=f"interrupted at step '{release.step}'; {message}",
        )
        self.interrupted.append(recorded)  # as recorded now (recover --json shows it)
        self.ws.say(f"release {self.env}#{release.number} was interrupted at step '{release.step}'")

    def _beat(self) -> bool:
        """Push the lease's expiry ahead; False once someone else holds it (we were taken over)."""
        return self.ws.ledger.heartbeat(app=self.app, env=self.env, holder=self.holder, ttl=self.ttl)
