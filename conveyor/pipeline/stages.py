"""Which two stages a command means: FROM and TO as named, or the first two environments.

Kept apart from operations so `conveyor diff` can use it without loading the release machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.errors import BadInput

if TYPE_CHECKING:
    from conveyor.pipeline.workspace import Workspace


def stage_pair(ws: Workspace, source: str | None, target: str | None, verb: str) -> tuple[str, str]:
    """FROM and TO as named, or the first two stages when neither is; both must be known and different."""
    if (source is None) != (target is None):
        raise BadInput(f"{verb} takes both FROM and TO, or neither (then the first two stages)")
    if source is None or target is None:
        return default_stages(ws, verb)
    pair = ws.config.environment(source).name, ws.config.environment(target).name
    if pair[0] == pair[1]:
        raise BadInput(f"{verb} FROM and TO must be different environments")
    return pair


def default_stages(ws: Workspace, verb: str = "promote") -> tuple[str, str]:
    names = [e.name for e in ws.config.environments]
    if len(names) < 2:
        raise BadInput(f"{verb} needs two environments; this app has one. Name them: {verb} FROM TO")
    return names[0], names[1]
