"""`conveyor run ENV -- COMMAND…`: a one-off command with the image and settings of ENV's live release.

It uses the ledger's live release (its stored spec), never today's config or a tag, so the command runs
exactly what serves. A one-off command on production is what an audit trail is for: it is held to blocks and
freezes like any operation (`--force --reason` passes, on record), and who ran what, with which release, for
how long and with which exit code is appended to the event log (the command's output is not: it may hold
data). It takes no lease: it changes no release.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from conveyor.errors import BadInput
from conveyor.pipeline.guards import check_blocks, describe_block
from conveyor.pipeline.workspace import Workspace

Output = Callable[[str], None]


def run_command(ws: Workspace, env_name: str, command: list[str], output: Output, *, force: bool = False,
                reason: str = "", stdin: bool = False, tty: bool = False, host: str | None = None) -> int:
    """Run `command`; its output lines go to `output` (or straight to the terminal with stdin/tty), conveyor's
    own progress to ws.say. Returns the command's exit code."""
    if not command:
        raise BadInput("run needs a command: conveyor run ENV -- COMMAND [ARGS…]")
    if force and not reason.strip():
        raise BadInput("--force needs --reason TEXT: it is recorded with the run")
    env = ws.config.environment(env_name)
    app = ws.config.app
    ignored = check_blocks(ws, env, overridden=force)
    live = ws.ledger.live_release(app, env.name)
    if live is None:
        raise BadInput(f"{env.name} has no live release to run a command with; deploy one first")
    label = f"{env.name}#{live.number}"
    target = ws.target(live.spec["target"])
    # Only a fleet has hosts to choose from; other targets keep their own signature.
    where: dict[str, str] = {"host": host} if host else {}
    if host and "hosts" not in live.spec:
        raise BadInput(f"--host: {env.name} is a {live.spec['target']} target, which has no hosts to choose from")
    data = {"command": command, "release": label, "image": live.image, "actor": ws.identity.actor, **where,
            "origin": ws.identity.origin, "reason": reason, "forced": bool(ignored),
            "overrode": [describe_block(b) for b in ignored], "interactive": stdin or tty}
    ws.ledger.append_event(app=app, env=env.name, release_id=None, step="run", status="started",
                           message=f"{ws.identity.actor} runs {command[0]} with {label} ({live.image})", data=data)
    ws.say(f"running with {label} ({live.image})")

    def report(step: str, message: str) -> None:
        if step == "output":
            output(message)
        else:
            ws.say(f"  {step}: {message}")

    code = -1
    started = time.monotonic()
    try:
        code = int(target.run_command(live.spec, list(command), report, stdin=stdin, tty=tty, **where))
    finally:
        took = round(time.monotonic() - started, 3)
        status = "ok" if code == 0 else "failed"
        ended = f"exited with {code}" if code >= 0 else "did not finish"
        ws.ledger.append_event(app=app, env=env.name, release_id=None, step="run", status=status,
                               message=f"{command[0]} with {label} {ended} after {took:.1f}s",
                               data={**data, "exit_code": code, "duration_s": took})
    return code
