"""One-off dynos: a pre-deploy task or `conveyor run` on Heroku.

Heroku's `POST /apps/{app}/dynos` takes a command, a process type, a size, a time to live and extra
environment, not an image: the dyno runs the image the app's current release gives that process type. It
is created detached (`attach: false`); its output is read from a log session on that dyno (`tail: true`,
with the backlog, so nothing printed before the session opened is lost). Heroku says how a one-off dyno
ended only in its log: `heroku[run.N]: Process exited with status N`, then `State changed from up to
complete`. A tailing session never ends by itself, so reading stops at that line.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conveyor.errors import ConveyorError, TargetError

BACKLOG_LINES = 1500  # the most a log session replays: every line the dyno printed before it opened
STREAM_GRACE = 60.0  # seconds of silence past the dyno's time to live before the stream is given up
TAIL_LINES = 20
# 2026-12-01T00:00:00.000000+00:00 app[run.1234]: text
LOG_LINE = re.compile(r"^\S+ (?P<source>[\w.-]+)\[(?P<dyno>[^\]]+)\]: ?(?P<text>.*)$")
EXITED = re.compile(r"^Process exited with status (\d+)$")
STATE_CHANGED = re.compile(r"^State changed from \w+ to (\w+)$")
ENDED_STATES = {"complete", "crashed", "down"}


@dataclass(frozen=True)
class OneOff:
    command: list[str]
    process_type: str  # whose image the dyno runs
    time_to_live: float
    size: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # on top of the app's config vars; never recorded

    def body(self) -> dict[str, Any]:
        """`POST /apps/{app}/dynos`'s body. Heroku runs `command` through a shell: each argument is quoted
        so the shell gives the program exactly the argv conveyor was given."""
        body: dict[str, Any] = {"command": shlex.join(self.command), "type": self.process_type, "attach": False,
                                "time_to_live": int(self.time_to_live)}
        if self.size:
            body["size"] = self.size
        if self.env:
            body["env"] = dict(self.env)
        return body


@dataclass
class LogReading:
    """What a one-off dyno's log said so far: its output lines (shown as they come) and how it ended."""

    dyno: str
    show: Callable[[str], None]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    exit_code: int | None = None
    ended_as: str | None = None  # the state it went to without an exit status (crashed, down)

    def take(self, line: str) -> bool:
        """One line of the stream; True once the dyno has ended."""
        parsed = LOG_LINE.match(line)
        if parsed is None or parsed["dyno"] != self.dyno:
            return False
        text = parsed["text"]
        if parsed["source"] != "heroku":
            self.tail.append(text)
            self.show(text)
            return False
        exited, changed = EXITED.match(text), STATE_CHANGED.match(text)
        if exited:
            self.exit_code = int(exited[1])
            return True
        if changed and changed[1] in ENDED_STATES:
            self.ended_as = changed[1]
            return True
        return False


def run_one_off(api: Any, app: str, one_off: OneOff, show: Callable[[str], None],
                announce: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run `one_off` on `app`: its output lines go to `show`; returns its exit status and its last lines.
    Stopped on Heroku when conveyor is stopped before it ends (a detached dyno would run on)."""
    dyno = api.call("POST", f"/apps/{app}/dynos", body=one_off.body())
    announce(f"{app}: one-off dyno {dyno['name']} runs {shlex.join(one_off.command)} "
             f"({one_off.process_type}'s image)")
    reading = LogReading(dyno["name"], show)
    ended = False
    try:
        session = api.call("POST", f"/apps/{app}/log-sessions",
                           body={"dyno": dyno["name"], "tail": True, "lines": BACKLOG_LINES})
        ended = api.follow(session["logplex_url"], reading.take, read_timeout=one_off.time_to_live + STREAM_GRACE)
    finally:
        if not ended:
            with contextlib.suppress(ConveyorError):
                api.call("POST", f"/apps/{app}/dynos/{dyno['id']}/actions/stop")
    if reading.exit_code is None:
        how = f"went {reading.ended_as}" if reading.ended_as else "its log stream ended"
        raise TargetError(f"one-off dyno {dyno['name']} of {app} {how} before reporting an exit status",
                          logs=list(reading.tail))
    return reading.exit_code, list(reading.tail)
