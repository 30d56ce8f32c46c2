"""The poll behind the webhooks: a missed or late CI event must not leave a green push undeployed, and a
release PR's auto-merge is due at a time, not at an event.

One pass (`poll_once`) looks at every push still waiting for CI (asking the forge for its verdict again),
gives up on those older than their CI timeout, and merges the release PRs whose `auto_merge_after` has
passed. The server runs a pass every CONVEYOR_TRIGGER_POLL seconds (default 60; 0 turns it off) on its own
thread, and `POST /api/triggers/poll` runs one at once (the tests drive it that way, never by the clock).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from conveyor.errors import BadInput, ConveyorError

if TYPE_CHECKING:
    from conveyor.pipeline.worker import Server

log = logging.getLogger("conveyor.server")
DEFAULT_INTERVAL = 60.0
_one_pass = threading.Lock()  # the thread and the API never run a pass at the same time in one process


def poll_interval() -> float:
    raw = os.environ.get("CONVEYOR_TRIGGER_POLL", "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_INTERVAL
    except ValueError:
        raise BadInput(f"CONVEYOR_TRIGGER_POLL={raw!r}: give seconds between polls (0 turns polling off)") from None
    if value < 0:
        raise BadInput(f"CONVEYOR_TRIGGER_POLL={raw!r}: give seconds between polls (0 turns polling off)")
    return value


def poll_once(server: Server) -> dict[str, Any]:
    """One pass; what it did, for the API's answer and the log."""
    from conveyor.ledger.hooks_store import HooksStore
    from conveyor.pipeline.release_pr import merge_due
    from conveyor.pipeline.triggers import evaluate, expire_waiting

    with _one_pass:
        expired = expire_waiting(server)
        decided = []
        for pending in HooksStore(server.ledger).waiting():
            ws = server.workspace(pending.app)
            try:
                ws.ship(pending.sha)
                decided.append({"app": pending.app, "env": pending.env, "sha": pending.sha,
                                "outcome": evaluate(server, ws, pending)})
            except ConveyorError as exc:
                decided.append({"app": pending.app, "env": pending.env, "sha": pending.sha,
                                "outcome": f"not evaluated: {exc.message}"})
            finally:
                ws.close()
        merges = merge_due(server)
    return {"pushes": decided, "expired": expired, "release_prs": merges}


def start_poller(server: Server, stop: threading.Event) -> threading.Thread | None:
    """The server's poll thread (None when CONVEYOR_TRIGGER_POLL is 0)."""
    interval = poll_interval()
    if interval == 0:
        return None

    def loop() -> None:
        while not stop.wait(interval):
            try:
                poll_once(server)
            except Exception:  # the poll outlives any one bad pass; the next one tries again
                log.exception("trigger poll failed")

    thread = threading.Thread(target=loop, name="trigger-poll", daemon=True)
    thread.start()
    return thread
