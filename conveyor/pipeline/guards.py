"""Blocks and policies: what may run on an environment, checked before anything changes."""

from __future__ import annotations

from datetime import UTC

from conveyor.config.models import Environment
from conveyor.errors import Refused
from conveyor.ledger.models import Block
from conveyor.pipeline.workspace import Workspace


def describe_block(block: Block) -> str:
    where = {"org": "the whole organisation", "app": f"app {block.app}", "env": f"{block.app}/{block.env}",
             "triggers": f"{block.app}/{block.env}'s automatic triggers"}
    since = block.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    until = f" until {block.until.astimezone(UTC):%Y-%m-%d %H:%M UTC}" if block.until else ""
    return f"{where[block.scope]} is blocked by {block.actor} since {since}{until}: {block.reason}"


def check_blocks(ws: Workspace, env: Environment, *, overridden: bool) -> list[Block]:
    """Refuse when a block holds, unless overridden (--force or --hotfix): then return the blocks ignored
    so the release can record them."""
    blocks = ws.ledger.active_blocks(ws.config.app, env.name)
    if blocks and not overridden:
        lines = "; ".join(describe_block(b) for b in blocks)
        raise Refused(f"{lines}. Pass --force --reason TEXT (or --hotfix --reason TEXT) to override.")
    return blocks


def check_promotion_policy(env: Environment, *, kind: str, source_env: str | None, forced: bool) -> None:
    """An environment that requires promotions from a stage accepts only those, a hotfix, a rollback
    to one of its own releases, or a forced run (recorded as ignoring safeties)."""
    required = env.policy.require_promotion_from
    if required is None or forced or kind in ("hotfix", "rollback"):
        return
    if kind == "promote" and source_env == required:
        return
    attempted = f"a promotion from {source_env}" if kind == "promote" else "a direct deploy"
    raise Refused(
        f"{env.name} only accepts promotions from {required}, not {attempted}. "
        f"Run `conveyor promote {required} {env.name}`, or `conveyor deploy {env.name} REF --hotfix "
        "--reason TEXT` for an emergency fix (recorded as a hotfix)."
    )
