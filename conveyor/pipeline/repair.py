"""Bringing the record and reality back together without a new release:

* `recover`: take over the lease of a holder that died (or is declared stuck) and record its release
  as interrupted, at once instead of at the next operation;
* `up`: restart the proxy and re-apply the live release's stored spec when nothing answers;
* `retire`: stop serving an environment that is no longer in the config.

Each is recorded as an event with the actor (and the reason, where one is asked for).
"""

from __future__ import annotations

from typing import Any

from conveyor.config import CONFIG_NAME
from conveyor.errors import BadInput, OperationFailed, Refused
from conveyor.ledger.models import Release
from conveyor.pipeline.lease import LeaseKeeper, describe_lease
from conveyor.pipeline.workspace import Workspace


def recover(ws: Workspace, env: str, reason: str, *, force: bool) -> list[Release]:
    """Take ENV's lease over now if its holder is gone (or, with force, stuck), and mark every release
    still recorded pending or running as interrupted. Returns those releases."""
    app = ws.config.app
    ws.config.environment(env)
    try:
        keeper = LeaseKeeper(ws, env, f"recover {env}", wait=False, seize=force, at_expiry=True)
        with keeper:
            for release in ws.ledger.unfinished_releases(app, env):
                if all(done.id != release.id for done in keeper.interrupted):
                    keeper.mark_interrupted(release, "no live operation holds it (recovered)")
            numbers = [f"{env}#{release.number}" for release in keeper.interrupted]
            what = ", ".join(numbers) + " marked interrupted" if numbers else "no release was left unfinished"
            ws.ledger.append_event(
                app=app, env=env, release_id=None, step="recover", status="ok",
                message=f"{ws.identity.actor} recovered {app}/{env}: {what}; reason: {reason}",
                data={"actor": ws.identity.actor, "reason": reason, "interrupted": numbers},
            )
    except Refused:
        lease = ws.ledger.get_lease(app, env)
        holder = describe_lease(lease) if lease else "another operation holds the lease"
        raise Refused(f"{app}/{env}: {holder}, and it still heartbeats. If it is stuck, "
                      f"`conveyor recover {env} --force --reason TEXT` takes the lease from it") from None
    if keeper.interrupted:
        from conveyor.pipeline.outbox import deliver

        deliver(ws)  # the interruptions' announcements
    return keeper.interrupted


def up(ws: Workspace, env: str | None) -> list[str]:
    """Make every environment (or ENV) serve its live release again; one line per environment."""
    names = [ws.config.environment(env).name] if env else [e.name for e in ws.config.environments]
    return [_up_one(ws, name) for name in names]


def _up_one(ws: Workspace, env: str) -> str:
    app = ws.config.app
    live = ws.ledger.live_release(app, env)
    if live is None:
        return f"{env}: nothing deployed"
    label = f"{env}#{live.number}"
    target = ws.target(live.spec["target"])
    other = _serving_other_than(target, live)
    if other is None and target.probe(live.spec) is None:
        return f"{env}: {label} serves"
    with LeaseKeeper(ws, env, f"up {env}", wait=False):
        report = _reporter(ws, live)
        if other is not None:
            # What serves is not what the record says (a holder killed after its switch): the record wins.
            report("restore", f"{other} serves, not {label}: re-applying {label}'s stored spec")
            outcome = target.deploy(live.spec, label, report)
        else:
            outcome = target.restore(live.spec, label, report)
        if not outcome.succeeded:
            _event(ws, live, "up", "failed", f"could not restore {label}: {outcome.reason}")
            raise OperationFailed(f"{env}: could not restore {label}: {outcome.reason}")
        _event(ws, live, "up", "ok", f"{ws.identity.actor} restored {label}: it serves again")
    return f"{env}: {label} restored and serving"


def _serving_other_than(target: Any, live: Release) -> str | None:
    """The image the target serves for live's env when it is not live's (drift), else None."""
    try:
        state = target.live(live.app, live.env, live.spec)
    except Exception:  # cannot tell: the probe decides
        return None
    return state.image if state is not None and state.image != live.image else None


def retired_envs(ws: Workspace) -> list[Release]:
    """The live release of every environment the ledger knows for this app that the config no longer
    has and that has not been retired since."""
    configured = {env.name for env in ws.config.environments}
    found = []
    for env in ws.ledger.release_envs(ws.config.app):
        if env in configured:
            continue
        live = ws.ledger.live_release(ws.config.app, env)
        if live is not None and not _retired_after(ws, live):
            found.append(live)
    return found


def retire(ws: Workspace, env: str, reason: str) -> Release:
    """Stop and remove ENV, which the config no longer has; the ledger keeps its history."""
    app = ws.config.app
    if env in {e.name for e in ws.config.environments}:
        raise BadInput(f"{env} is still in {CONFIG_NAME}: remove it from the config (and commit that) first")
    live = next((release for release in retired_envs(ws) if release.env == env), None)
    if live is None:
        raise BadInput(f"{app} has no live release in '{env}' to retire")
    with LeaseKeeper(ws, env, f"retire {env}", wait=False):
        ws.target(live.spec["target"]).retire(app, env, _reporter(ws, live), spec=live.spec)
        _event(ws, live, "retired", "ok",
               f"{ws.identity.actor} retired {app}/{env} (was serving {env}#{live.number}): {reason}",
               {"actor": ws.identity.actor, "reason": reason})
    return live


def _retired_after(ws: Workspace, live: Release) -> bool:
    retired = ws.ledger.events(app=live.app, env=live.env, step="retired")
    return any(event.release_id == live.id for event in retired)


def _reporter(ws: Workspace, release: Release) -> Any:
    def report(step: str, message: str) -> None:
        ws.say(f"  {step}: {message}")
        _event(ws, release, step, "info", message)

    return report


def _event(ws: Workspace, release: Release, step: str, status: str, message: str,
           data: dict[str, Any] | None = None) -> None:
    ws.ledger.append_event(app=release.app, env=release.env, release_id=release.id, step=step, status=status,
                           message=message, data=data)
