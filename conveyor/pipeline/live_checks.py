"""Whether each environment's target really serves its live release, for the overview's tiles.

`conveyor status` asks the target at once (views.status). The overview cannot: 500 apps x 3 stages would
be 1,500 probes per page view. So one background thread of the server checks every environment that has
a live release, at most every CONVEYOR_SERVER_CHECK_EVERY seconds (default 30, 0 turns it off), a few at
a time, and keeps the latest verdict per environment; a page shows the cached verdict and its age (or
"not checked yet") and never waits on a target. A new live release is checked on the next wake-up (the
server's event wake-ups, or within a few seconds for writers it does not hear of). A verdict that changes
bumps `generation`, which the overview's live stream watches, so open pages see it without a reload.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.errors import BadInput

if TYPE_CHECKING:
    from conveyor.pipeline.worker import Server
    from conveyor.targets.base import Target

log = logging.getLogger("conveyor.server")

DEFAULT_EVERY = 30.0
CONCURRENCY = 4  # targets checked at once: enough to get round 1,500 in seconds, few enough to stay quiet
LOOK_AT_LEAST = 5.0  # seconds: how soon a live release recorded by a writer the server does not hear of is seen


@dataclass(frozen=True)
class Verdict:
    """One check of an environment's live release: `word` is "answering", "outage" or "drift"."""

    release_id: int
    word: str
    detail: str
    checked_at: float  # time.time()


def check_interval() -> float:
    raw = os.environ.get("CONVEYOR_SERVER_CHECK_EVERY", "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_EVERY
    except ValueError:
        value = -1.0
    if value < 0:
        raise BadInput(f"CONVEYOR_SERVER_CHECK_EVERY={raw!r}: give seconds between two checks of a target "
                       "(0 turns the overview's checks off)")
    return value


def judge(target: Target, release: Any) -> tuple[str, str]:
    """The verdict on one live release: an outage (it does not answer) outweighs drift (something else
    serves); the same two questions `conveyor status` asks, from the release's stored spec."""
    from conveyor.pipeline.views import target_outage, target_serving

    outage = target_outage(target, release)
    if outage:
        return "outage", outage
    serving, drift, _ = target_serving(target, release.app, release.env, release)
    if drift is None:  # the target could not say what serves
        return "answering", f"answers; what serves is {serving}"
    if drift:  # the label first: a tile shortens what follows
        what = "no release it knows of" if serving is None else serving
        return "drift", f"not {release.env}#{release.number}: the target serves {what}"
    return "answering", "answers, serving the live release"


class LiveChecks:
    """The cached verdicts and the thread that refreshes them."""

    def __init__(self, server: Server, every: float) -> None:
        self.server = server
        self.every = every
        self.generation = 0
        self._verdicts: dict[tuple[str, str], Verdict] = {}
        self._targets: dict[tuple[str, str], tuple[Target, threading.Lock]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._heads: Any = None  # a HeadsCache: woken often, a round re-reads only what changed

    def verdict(self, app: str, env: str, release_id: int) -> Verdict | None:
        """The latest verdict on that very release (one on an earlier release says nothing about it)."""
        found = self._verdicts.get((app, env))
        return found if found is not None and found.release_id == release_id else None

    def start(self, stop: threading.Event) -> threading.Thread:
        unsubscribe = self.server.events_woken.subscribe(self._wake.set)

        def loop() -> None:
            with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="live-check") as pool:
                while not stop.is_set():
                    try:
                        self.check_due(pool)
                    except Exception:  # a bad round (the ledger away) must not end the checks
                        log.exception("live checks failed")
                    self._wake.wait(timeout=min(self.every, LOOK_AT_LEAST))
                    self._wake.clear()
            unsubscribe()
            self._close()

        def wake_on_stop() -> None:
            stop.wait()
            self._wake.set()

        threading.Thread(target=wake_on_stop, name="live-checks-stop", daemon=True).start()
        thread = threading.Thread(target=loop, name="live-checks", daemon=True)
        thread.start()
        return thread

    def check_due(self, pool: ThreadPoolExecutor) -> None:
        """Check each live release with no verdict yet or one older than `every`, CONCURRENCY at a time."""
        from conveyor.ledger.dashboard import HeadsCache

        self._heads = self._heads or HeadsCache()
        now = time.time()
        due = []
        for (app, env), heads in self._heads.heads(self.server.ledger).items():
            if heads.live is None:
                self._verdicts.pop((app, env), None)
                continue
            known = self.verdict(app, env, heads.live.id)
            if known is None or now - known.checked_at >= self.every:
                due.append((app, env, heads.live.id))
        for _ in pool.map(lambda item: self._check(*item), due):
            pass

    def _check(self, app: str, env: str, release_id: int) -> None:
        release = self.server.ledger.get_release_by_id(release_id)
        if release is None:
            return
        target, lock = self._target(release.spec.get("target", ""), app)
        with lock:  # one adapter per app and kind, asked one question at a time
            word, detail = judge(target, release)
        fresh = Verdict(release_id, word, detail, time.time())
        with self._lock:
            before = self._verdicts.get((app, env))
            self._verdicts[(app, env)] = fresh
            if before is None or (before.release_id, before.word, before.detail) != (release_id, word, detail):
                self.generation += 1
        if before is None or before.word != word:
            self.server.events_woken.bump()  # open overviews re-render the tile now

    def _target(self, kind: str, app: str) -> tuple[Target, threading.Lock]:
        from conveyor.pipeline.apps import mirror_path
        from conveyor.settings import conveyor_home
        from conveyor.targets import target_for

        with self._lock:
            if (kind, app) not in self._targets:
                made = target_for(kind, conveyor_home(), mirror_path(self.server.home, app))
                self._targets[(kind, app)] = (made, threading.Lock())
            return self._targets[(kind, app)]

    def _close(self) -> None:
        for target, _ in self._targets.values():
            try:
                target.close()
            except Exception:  # closing is best effort at shutdown
                log.debug("closing a target failed", exc_info=True)
