"""Manual blocks (`conveyor lock` / `unlock`): a stop with a reason and optional expiry, per environment,
per app, or org-wide (a freeze)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from conveyor.errors import BadInput
from conveyor.ledger.models import Block
from conveyor.pipeline.announce import block_items, unblock_items
from conveyor.pipeline.guards import describe_block
from conveyor.pipeline.outbox import deliver
from conveyor.pipeline.workspace import Workspace

# A duration is units in this order, each at most once: 90s, 30m, 2h30m, 1d12h, 1w.
_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNIT_SECONDS = (7 * 86400, 86400, 3600, 60, 1)
# Farther than this is a typo (99999999999h), and would overflow the calendar before it mattered.
MAX_BLOCK = timedelta(days=3660)
UNTIL_HELP = ("an ISO time (2026-12-28T09:00, UTC unless it gives an offset) or a duration from now "
              "(90s, 30m, 2h30m, 1d, 1w), at most 10 years away")


def parse_until(text: str | None, now: datetime | None = None) -> datetime | None:
    """When a block expires: UNTIL_HELP. A time that has passed, now, or one beyond MAX_BLOCK is refused."""
    if not text:
        return None
    now = now or datetime.now(UTC)
    spoken = "".join(text.split())
    match = _DURATION.match(spoken) if spoken else None
    moment = _after(now, match, text) if match else _iso_moment(text)
    if moment < now:
        raise BadInput(f"--until '{_one_line(text)}' is in the past")
    if moment == now:
        raise BadInput(f"--until '{_one_line(text)}' ends at once; a block that ends at once stops nothing")
    if moment - now > MAX_BLOCK:
        raise BadInput(f"--until '{_one_line(text)}' is more than 10 years away; give {UNTIL_HELP}")
    return moment


def _after(now: datetime, match: re.Match[str], text: str) -> datetime:
    parts = [group or "0" for group in match.groups()]
    if any(len(part) > 12 for part in parts):
        raise BadInput(f"--until '{_one_line(text)}' is more than 10 years away; give {UNTIL_HELP}")
    seconds = sum(int(part) * unit for part, unit in zip(parts, _UNIT_SECONDS, strict=True))
    return now + timedelta(seconds=min(seconds, int(MAX_BLOCK.total_seconds()) + 1))


def _iso_moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(f"--until '{_one_line(text[:80])}': give {UNTIL_HELP}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _one_line(text: str) -> str:
    """Text typed by a user, safe inside a one-line message: control characters shown escaped (\\n)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _scope(ws: Workspace, env: str | None, scope: str) -> tuple[str, str]:
    if scope in ("env", "triggers"):
        if env is None:
            raise BadInput("name the environment to lock, or use --app-wide / --org")
        return ws.config.app, ws.config.environment(env).name
    if env is not None:
        raise BadInput(f"a {scope}-wide block takes no environment")
    return (ws.config.app if scope == "app" else ""), ""


def add_block(ws: Workspace, env: str | None, scope: str, reason: str, until: str | None) -> Block:
    if not reason.strip():
        raise BadInput("lock needs --reason TEXT: everyone it stops will read it")
    expires = parse_until(until)
    app, env_name = _scope(ws, env, scope)
    block = ws.ledger.add_block(scope=scope, app=app, env=env_name, reason=reason, actor=ws.identity.actor,
                                until=expires, announce=lambda added: block_items(ws, added))
    deliver(ws)
    return block


@dataclass(frozen=True)
class Lifted:
    """What `unlock` did: how many blocks it lifted, and the wider blocks that still stop the same target."""

    count: int
    target: str
    still_blocking: list[Block]

    def summary(self) -> str:
        done = f"lifted {self.count} block(s)"
        return f"{done}; {_still_blocked(self.target, self.still_blocking)}" if self.still_blocking else done


_WIDER = {"env": ("app", "org"), "app": ("org",), "org": (), "triggers": ("app", "org")}
_UNLOCK_HINT = {"app": "conveyor unlock --app-wide", "org": "conveyor unlock --org"}


def lift_block(ws: Workspace, env: str | None, scope: str) -> Lifted:
    """Lift the blocks of exactly this scope. Lifting nothing is bad input (exit 2): the block the user
    meant is not there, most often because it has a wider scope, which the message then names."""
    app, env_name = _scope(ws, env, scope)
    count = ws.ledger.lift_blocks(scope=scope, app=app, env=env_name, actor=ws.identity.actor,
                                  announce=lambda lifted: unblock_items(ws, lifted))
    if count:
        deliver(ws)
    wider = [b for b in ws.ledger.active_blocks(app, env_name) if b.scope in _WIDER[scope]] if app else []
    target = _target_name(scope, app, env_name)
    if count == 0:
        detail = f"; {_still_blocked(target, wider)}" if wider else ""
        raise BadInput(f"no {scope} block on {target} to lift{detail}")
    return Lifted(count, target, wider)


def _target_name(scope: str, app: str, env: str) -> str:
    return {"env": f"{app}/{env}", "app": f"app {app}", "org": "the organisation",
            "triggers": f"{app}/{env}'s automatic triggers"}[scope]


def _still_blocked(target: str, blocks: list[Block]) -> str:
    why = "; ".join(f"{_one_line(describe_block(b))} (lift it with `{_UNLOCK_HINT[b.scope]}`)" for b in blocks)
    return f"{target} is still blocked: {why}"
