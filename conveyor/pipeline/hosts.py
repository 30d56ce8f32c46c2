"""`conveyor hosts check ENV`: the fleet preflight on its own — every host of ENV answers over SSH with
the key known_hosts names, and has a working engine, its proxy, the port, the registry and room.

It checks the hosts the checked-out commit's config lists, with the live release's image (or, before the
first deploy, the app's image repository), exactly as a deploy's preflight would.
"""

from __future__ import annotations

from conveyor.errors import BadInput
from conveyor.pipeline.workspace import Workspace
from conveyor.targets.base import Artifact

FLEET_TARGET = "ssh-hosts"


def check_hosts(ws: Workspace, env_name: str) -> list[str]:
    """One line per host, as the preflight reports them; raises naming each failing host and why."""
    env = ws.config.environment(env_name)
    if env.target.type != FLEET_TARGET:
        raise BadInput(f"{env.name} is a {env.target.type} target; `hosts check` is for {FLEET_TARGET} targets")
    live = ws.ledger.live_release(ws.config.app, env.name)
    if live is not None:
        artifact = Artifact(live.image.split("@")[0], live.sha, live.digest)
    else:
        artifact = Artifact(ws.config.image, ws.repo.resolve("HEAD"), "")
    target = ws.target(FLEET_TARGET)
    return list(target.preflight(target.render(ws.config, env, artifact)) or [])
