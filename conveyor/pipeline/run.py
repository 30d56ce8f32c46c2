"""`conveyor run ENV -- COMMAND…`: a one-off command with the image and settings of ENV's live release.

It uses the ledger's live release (its stored spec), never today's config or a tag, so the command runs
exactly what serves. It takes no lease: it changes no release. Who ran what, where and with which exit
code is appended to the event log (the command's output is not: it may hold data).
"""

from __future__ import annotations

from collections.abc import Callable

from conveyor.errors import BadInput
from conveyor.pipeline.workspace import Workspace

Output = Callable[[str], None]


def run_command(ws: Workspace, env_name: str, command: list[str], output: Output) -> int:
    """Run `command`; its output lines go to `output`, conveyor's own progress to ws.say. Returns the
    command's exit code."""
    if not command:
        raise BadInput("run needs a command: conveyor run ENV -- COMMAND [ARGS…]")
    env = ws.config.environment(env_name)
    app = ws.config.app
    live = ws.ledger.live_release(app, env.name)
    if live is None:
        raise BadInput(f"{env.name} has no live release to run a command with; deploy one first")
    label = f"{env.name}#{live.number}"
    target = ws.target(live.spec["target"])
    data = {"command": command, "release": label, "image": live.image, "actor": ws.identity.actor}
    ws.ledger.append_event(app=app, env=env.name, release_id=None, step="run", status="started",
                           message=f"{ws.identity.actor} runs {command[0]} with {label} ({live.image})", data=data)
    ws.say(f"running with {label} ({live.image})")

    def report(step: str, message: str) -> None:
        if step == "output":
            output(message)
        else:
            ws.say(f"  {step}: {message}")

    code = -1
    try:
        code = int(target.run_command(live.spec, list(command), report))
    finally:
        status = "ok" if code == 0 else "failed"
        ws.ledger.append_event(app=app, env=env.name, release_id=None, step="run", status=status,
                               message=f"{command[0]} with {label} exited with {code}"
                               if code >= 0 else f"{command[0]} with {label} did not finish",
                               data={**data, "exit_code": code})
    return code
