"""Hold the per app+env lease for a whole operation: fail fast or queue, heartbeat, take over the
lease of a holder that died, and always let go."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC
from types import TracebackType

from conveyor.errors import Refused
from conveyor.ledger.models import Lease, Release
from conveyor.pipeline.workspace import Workspace
from conveyor.settings import lease_ttl


def describe_lease(lease: Lease) -> str:
    since = lease.acquired_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{lease.actor} is running '{lease.operation}' since {since}"


class LeaseKeeper:
    """Context manager: acquires on enter, heartbeats in a thread, releases on exit."""

    def __init__(self, ws: Workspace, env: str, operation: str, *, wait: bool, seize: bool = False) -> None:
        """seize: take the lease even from a holder that still looks alive (`recover --force`)."""
        self.ws = ws
        self.seize = seize
        self.interrupted: list[Release] = []  # releases of dead holders this keeper marked interrupted
        self.app = ws.config.app
        self.env = env
        self.operation = operation
        self.wait = wait
        self.holder = uuid.uuid4().hex
        self.ttl = lease_ttl()
        self.lost = False
        self._current: Lease | None = None  # the lease that refused us, to name its holder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseKeeper:
        if self.wait:
            self._acquire_in_turn()
        else:
            self._acquire_or_refuse()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.ws.ledger.release_lease(app=self.app, env=self.env, holder=self.holder)

    def _try(self) -> bool:
        attempt = self.ws.ledger.try_acquire_lease(
            app=self.app, env=self.env, holder=self.holder, actor=self.ws.identity.actor,
            operation=self.operation, ttl=self.ttl,
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
            f"{self.app}/{self.env} is locked: {describe_lease(self._current)}. "
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
        """First come, first served: only the oldest live waiter may take the lease when it frees up."""
        ledger = self.ws.ledger
        ticket = ledger.enqueue_waiter(
            app=self.app, env=self.env, holder=self.holder, actor=self.ws.identity.actor,
            operation=self.operation,
        )
        announced = False
        try:
            while True:
                if not ledger.touch_waiter(ticket):  # dropped as stale after a long pause: queue again
                    ticket = ledger.enqueue_waiter(
                        app=self.app, env=self.env, holder=self.holder, actor=self.ws.identity.actor,
                        operation=self.operation,
                    )
                first = ledger.first_waiter(app=self.app, env=self.env, stale_after=self.ttl)
                if first == ticket and self._try():
                    return
                if not announced and self._current is not None:
                    self.ws.say(f"waiting: {describe_lease(self._current)}")
                    announced = True
                time.sleep(0.2)
        finally:
            ledger.remove_waiter(ticket)

    def _recover_from(self, dead: Lease, message: str = "") -> None:
        """The previous holder stopped heartbeating (killed): mark its release interrupted, in the record."""
        message = message or f"took over an expired lease from {dead.actor} ('{dead.operation}')"
        self.ws.say(message)
        if dead.release_id is not None:
            release = self.ws.ledger.get_release_by_id(dead.release_id)
            if release is not None and release.status in ("pending", "running"):
                self.mark_interrupted(release, message)

    def mark_interrupted(self, release: Release, message: str) -> None:
        """Record a release whose holder is gone as interrupted at the step it reached."""
        ledger = self.ws.ledger
        ledger.update_release(
            release.id, status="interrupted", finished=True,
            error=f"holder stopped heartbeating during step '{release.step}'",
        )
        ledger.append_event(
            app=self.app, env=self.env, release_id=release.id, step="interrupted", status="failed",
            message=f"interrupted at step '{release.step}'; {message}",
        )
        self.interrupted.append(release)
        self.ws.say(f"release {self.env}#{release.number} was interrupted at step '{release.step}'")

    def _beat(self) -> None:
        interval = max(self.ttl / 3, 0.2)
        while not self._stop.wait(interval):
            try:
                if not self.ws.ledger.heartbeat(app=self.app, env=self.env, holder=self.holder, ttl=self.ttl):
                    self.lost = True
                    return
            except Exception:  # a transient ledger error must not kill the heartbeat thread
                continue
