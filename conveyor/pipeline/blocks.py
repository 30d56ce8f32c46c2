"""Manual blocks (`conveyor lock` / `unlock`): a stop with a reason and optional expiry, per environment,
per app, or org-wide (a freeze)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from conveyor.errors import BadInput
from conveyor.ledger.models import Block
from conveyor.pipeline.workspace import Workspace

_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_until(text: str | None, now: datetime | None = None) -> datetime | None:
    """An ISO 8601 time (UTC unless it says otherwise) or a duration from now: 30m, 2h, 1d, 1w."""
    if not text:
        return None
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text.strip())
    if match:
        return now + timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(f"--until '{text}': give an ISO time (2026-12-01T18:00) or a duration (30m, 2h, 1d)") \
            from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if moment <= now:
        raise BadInput(f"--until '{text}' is in the past")
    return moment


def _scope(ws: Workspace, env: str | None, scope: str) -> tuple[str, str]:
    if scope == "env":
        if env is None:
            raise BadInput("name the environment to lock, or use --app-wide / --org")
        return ws.config.app, ws.config.environment(env).name
    if env is not None:
        raise BadInput(f"a {scope}-wide block takes no environment")
    return (ws.config.app if scope == "app" else ""), ""


def add_block(ws: Workspace, env: str | None, scope: str, reason: str, until: str | None) -> Block:
    if not reason.strip():
        raise BadInput("lock needs --reason TEXT: everyone it stops will read it")
    app, env_name = _scope(ws, env, scope)
    return ws.ledger.add_block(
        scope=scope, app=app, env=env_name, reason=reason, actor=ws.identity.actor, until=parse_until(until)
    )


def lift_block(ws: Workspace, env: str | None, scope: str) -> int:
    app, env_name = _scope(ws, env, scope)
    return ws.ledger.lift_blocks(scope=scope, app=app, env=env_name, actor=ws.identity.actor)
