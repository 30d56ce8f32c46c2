"""deploy, promote and rollback: each turns its inputs into a ReleasePlan and runs release.execute."""

from __future__ import annotations

from conveyor.errors import BadInput, Refused
from conveyor.ledger.models import Release
from conveyor.pipeline.artifacts import require_artifact
from conveyor.pipeline.copies import render as render_placed
from conveyor.pipeline.guards import check_promotion_policy
from conveyor.pipeline.release import DryRun, ReleasePlan, execute
from conveyor.pipeline.stages import stage_pair
from conveyor.pipeline.workspace import Workspace
from conveyor.targets.base import Artifact


def _require_reason(reason: str, flag: str) -> None:
    if not reason.strip():
        raise BadInput(f"{flag} needs --reason TEXT: it is recorded with the release")


def _refuse_going_backwards(ws: Workspace, source: str, target: str, *, forced: bool) -> None:
    stages = [e.name for e in ws.config.environments]
    if stages.index(source) > stages.index(target) and not forced:
        raise Refused(f"promote {source} {target} goes backwards down the pipeline ({' -> '.join(stages)}); "
                      "pass --force --reason TEXT if that is what you mean")


def deploy(
    ws: Workspace, env_name: str, ref: str, *, reason: str = "", hotfix: bool = False, force: bool = False,
    wait: bool = False, dry_run: bool = False, wait_for_ci: bool = False,
) -> Release | DryRun:
    if hotfix:
        _require_reason(reason, "--hotfix")
    if force:
        _require_reason(reason, "--force")
    sha = ws.repo.resolve(ref)
    ws.ship(sha)  # the config, tasks and settings are the ones committed in what ships
    env = ws.config.environment(env_name)
    kind = "hotfix" if hotfix else "deploy"
    check_promotion_policy(env, kind=kind, source_env=None, forced=force)
    artifact, spec = render_placed(ws, env, require_artifact(ws, sha))
    plan = ReleasePlan(env=env, kind=kind, artifact=artifact, spec=spec, reason=reason, forced=force,
                       wait_for_ci=wait_for_ci)
    return execute(ws, plan, wait=wait, dry_run=dry_run)


def promote(
    ws: Workspace, source_env: str | None, target_env: str | None, *, only: str | None = None, reason: str = "",
    force: bool = False, wait: bool = False, dry_run: bool = False, wait_for_ci: bool = False,
) -> Release | DryRun:
    source_env, target_env = stage_pair(ws, source_env, target_env, "promote")
    source_cfg = ws.config.environment(source_env)
    ws.config.environment(target_env)
    if force:
        _require_reason(reason, "--force")
    _refuse_going_backwards(ws, source_env, target_env, forced=force)
    # Pin the source release once, here; every later step uses only this record, never "what runs now".
    notes = []
    if only is not None:
        from conveyor.pipeline.only import resolve_only

        match = resolve_only(ws, source_cfg.name, only)
        pinned = match.release
        notes.append(f"--only: {match.how}")
    else:
        live = ws.ledger.live_release(ws.config.app, source_cfg.name)
        if live is None:
            raise BadInput(f"{source_cfg.name} has no succeeded release to promote; deploy to it first")
        pinned = live
    # The promoted commit's own config renders the target stage, so what staging ran and what production
    # gets come from one commit.
    ws.ship(pinned.sha)
    env = ws.config.environment(target_env)
    check_promotion_policy(env, kind="promote", source_env=source_cfg.name, forced=force)
    artifact, spec = render_placed(ws, env, Artifact(pinned.image.split("@")[0], pinned.sha, pinned.digest))
    plan = ReleasePlan(
        env=env, kind="promote", artifact=artifact, spec=spec,
        reason=reason or f"promote {source_cfg.name}#{pinned.number}", forced=force, source=pinned,
        wait_for_ci=wait_for_ci,
        notes=[*notes, f"pinned source: {source_cfg.name}#{pinned.number} {pinned.sha[:12]} {pinned.digest}"],
    )
    return execute(ws, plan, wait=wait, dry_run=dry_run)


def rollback_target(ws: Workspace, env_name: str, to: int | None) -> Release:
    app = ws.config.app
    live = ws.ledger.live_release(app, env_name)
    if to is not None:
        chosen = ws.ledger.get_release(app, env_name, to)
        if chosen is None:
            raise BadInput(f"{env_name} has no release #{to}")
        if chosen.status != "succeeded":
            raise BadInput(f"{env_name}#{to} {chosen.status}; only a release that succeeded can be re-applied")
        return chosen
    if live is None:
        raise BadInput(f"{env_name} has no live release to roll back from")
    earlier = ws.ledger.live_release(app, env_name, before_number=live.number)  # one index seek at any size
    if earlier is None:
        raise BadInput(f"{env_name} has no succeeded release before #{live.number} to roll back to")
    return earlier


def tasks_not_undone(ws: Workspace, env_name: str, target: Release, live: Release | None) -> list[str]:
    """Pre-deploy tasks that ran after the release we go back to: a rollback does not reverse them."""
    if live is None or live.number <= target.number:
        return []
    lines = []
    for release in ws.ledger.releases_between(ws.config.app, env_name, target.number, live.number):
        for event in ws.ledger.events(release_id=release.id, step="task"):
            if event.status == "ok":
                lines.append(f"task '{event.data.get('task')}' ran in {env_name}#{release.number} "
                             f"({release.sha[:12]})")
    return lines


def rollback(
    ws: Workspace, env_name: str, *, to: int | None = None, reason: str = "", force: bool = False,
    wait: bool = False, dry_run: bool = False,
) -> tuple[Release | DryRun, list[str]]:
    env = ws.config.environment(env_name)
    if force:
        _require_reason(reason, "--force")
    chosen = rollback_target(ws, env.name, to)
    live = ws.ledger.live_release(ws.config.app, env.name)
    not_undone = tasks_not_undone(ws, env.name, chosen, live)
    artifact = Artifact(chosen.image.split("@")[0], chosen.sha, chosen.digest)
    notes = [f"re-apply {env.name}#{chosen.number} exactly: {chosen.image} with the spec it ran with"]
    notes += [f"not undone by this rollback: {line}" for line in not_undone]
    plan = ReleasePlan(
        env=env, kind="rollback", artifact=artifact, spec=chosen.spec,
        reason=reason or f"rollback to {env.name}#{chosen.number}", forced=force, source=chosen,
        run_tasks=False, notes=notes,
    )
    return execute(ws, plan, wait=wait, dry_run=dry_run), not_undone
