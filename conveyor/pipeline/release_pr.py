"""The release pull request (`release_pr:` in conveyor.yml): after each succeeded release of the source
stage, open or update the PR from the stage's branch (release_refs moves it) into the release branch, whose
merge promotes exactly what the stage ran (pipeline/triggers.py).

The PR says what a reviewer needs: the commits it carries over what the next stage runs (authors,
subjects), the staged image digest, the commits flagged as migrations, and the config diff; the author
with the most commits in it is assigned. It is an outbox item queued with the release's success, so a
forge outage delays it and loses nothing. `auto_merge_after` merges a PR that old, checked by the poll at
merge time, never while a block, a freeze or a trigger pause holds the stage it promotes to.
"""

from __future__ import annotations

import difflib
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from conveyor.config import CONFIG_NAME
from conveyor.errors import ConveyorError
from conveyor.ledger.models import OutboxItem, Release

if TYPE_CHECKING:
    from conveyor.config.models import AppConfig
    from conveyor.forge.base import Forge
    from conveyor.pipeline.worker import Server
    from conveyor.pipeline.workspace import Workspace

RELEASE_PR = "release-pr"
PR_COMMENT = "pr-comment"
SHOWN_COMMITS = 50
CONFIG_DIFF_LINES = 200


def forge_of(ws: Workspace, frozen: dict[str, Any] | None = None) -> Forge:
    """The app's forge: from the settings an outbox item froze when it was queued (so a flush on another
    commit delivers it the same way), else from the config in force."""
    from conveyor.config.forge import GitHub
    from conveyor.errors import ForgeRefused
    from conveyor.forge import github_for

    settings = GitHub.model_validate(frozen) if frozen else ws.config.forge.github
    if settings is None:
        raise ForgeRefused(f"{CONFIG_NAME} has no forge: section")
    return github_for(settings, os.environ, ws.say)


def frozen_forge(config: AppConfig) -> dict[str, Any] | None:
    """The forge settings an outbox item carries: env var names, never a token."""
    return config.forge.github.model_dump(mode="json") if config.forge.github else None


def source_branch(config: AppConfig) -> str:
    settings = config.release_pr
    assert settings is not None
    return settings.source or f"{config.release_refs.prefix}{settings.stage}"


def promoted_stage(config: AppConfig) -> str | None:
    """The stage a merge into the release branch promotes to: the trigger's, else the stage after the source."""
    settings = config.release_pr
    if settings is None:
        return None
    for trigger in config.triggers:
        if trigger.on == "pull_request_merged" and trigger.base == settings.target and trigger.promote:
            return trigger.promote
    names = [e.name for e in config.environments]
    index = names.index(settings.stage) if settings.stage in names else -1
    return names[index + 1] if 0 <= index < len(names) - 1 else None


# ---------------------------------------------------------------------------------------------- content


def pull_content(ws: Workspace, release: Release) -> dict[str, Any]:
    """Title, body and the top committer of the PR carrying `release` (of the source stage) onwards."""
    from conveyor.vcs.git import CommitLog

    config = ws.config
    target_env = promoted_stage(config)
    live = ws.ledger.live_release(config.app, target_env) if target_env else None
    older = live.sha if live else None
    rows = ws.repo.commit_authors(older, release.sha, 10_000)
    flagged = CommitLog(ws.repo, older, release.sha, fmt="shas", paths=config.migrations).shas() \
        if config.migrations else set()
    authors = Counter((email, name) for _, name, email, _ in rows)
    top = authors.most_common(1)[0][0] if authors else None
    top_sha = next((sha for sha, _, email, _ in rows if top and email == top[0]), None)
    settings = config.release_pr
    assert settings is not None
    title = (f"Release {release.env}#{release.number} ({release.sha[:12]}) to {target_env or settings.target}: "
             f"{len(rows)} commit(s)")
    body = _body(ws, release, target_env, live, rows, flagged)
    return {"title": title, "body": body, "source": source_branch(config), "target": settings.target,
            "forge": frozen_forge(config),
            "head_sha": release.sha, "digest": release.digest, "release": f"{release.env}#{release.number}",
            "top_committer": {"name": top[1], "email": top[0], "sha": top_sha} if top else None}


def _body(ws: Workspace, release: Release, target_env: str | None, live: Release | None,
          rows: list[list[str]], flagged: set[str]) -> str:
    where = f"{target_env}#{live.number} ({live.sha[:12]})" if live and target_env else "nothing yet"
    lines = [f"Merging this promotes exactly what {release.env}#{release.number} runs to {target_env}.", "",
             f"- commit: `{release.sha}`", f"- staged image: `{release.image}`",
             f"- digest: `{release.digest}`", f"- {target_env} runs: {where}", "",
             f"### Commits ({len(rows)})", ""]
    for sha, name, _email, subject in rows[:SHOWN_COMMITS]:
        mark = " **(migration)**" if sha in flagged else ""
        lines.append(f"- {sha[:12]} {subject} ({name}){mark}")
    if len(rows) > SHOWN_COMMITS:
        lines.append(f"- … and {len(rows) - SHOWN_COMMITS} more")
    lines += ["", f"### Migrations ({len(flagged)})", ""]
    lines += [f"- {sha[:12]}" for sha, *_ in rows if sha in flagged] or ["- none"]
    lines += ["", f"### Config diff ({CONFIG_NAME})", "", "```diff", *config_diff(ws, live, release), "```"]
    return "\n".join(lines)


def config_diff(ws: Workspace, live: Release | None, release: Release) -> list[str]:
    before = ws.repo.show_file(live.sha, CONFIG_NAME) if live else b""
    after = ws.repo.show_file(release.sha, CONFIG_NAME) or b""
    lines = list(difflib.unified_diff((before or b"").decode(errors="replace").splitlines(),
                                      after.decode(errors="replace").splitlines(),
                                      f"a/{CONFIG_NAME}", f"b/{CONFIG_NAME}", lineterm=""))
    if len(lines) > CONFIG_DIFF_LINES:
        lines = [*lines[:CONFIG_DIFF_LINES], f"… {len(lines) - CONFIG_DIFF_LINES} more lines"]
    return lines or ["(no change)"]


# ------------------------------------------------------------------------------------- outbox handlers


class ReleasePullRequests:
    """Open or update the release PR for a succeeded release of the source stage."""

    retry_delays: tuple[float, ...] = ()  # one attempt per run: a release never waits on the forge

    def lane(self, item: OutboxItem) -> str:
        return RELEASE_PR

    def owed(self, ws: Workspace, release: Release, finished_at: datetime) -> list[dict[str, Any]]:
        settings = ws.config.release_pr
        if release.status != "succeeded" or settings is None or release.env != settings.stage:
            return []
        try:
            return [pull_content(ws, release)]
        except ConveyorError as exc:  # asked while the release's outcome is recorded: never break that
            ws.say(f"warning: the release PR cannot be written for {release.env}#{release.number}: "
                   f"{exc.message}")
            return []

    def deliver(self, ws: Workspace, item: OutboxItem) -> None:
        from conveyor.errors import PullRequestExists
        from conveyor.ledger.hooks_store import HooksStore

        payload = item.payload
        forge = forge_of(ws, payload.get("forge"))
        try:
            pull = forge.open_pull(head=payload["source"], base=payload["target"], title=payload["title"],
                                   body=payload["body"])
        except PullRequestExists:
            found = forge.find_pull(head=payload["source"], base=payload["target"])
            if found is None:
                raise
            pull = forge.update_pull(found.number, title=payload["title"], body=payload["body"])
        top = payload.get("top_committer")
        if top and top.get("sha"):
            login = forge.commit(top["sha"]).author_login
            if login and login not in pull.assignees:
                forge.assign(pull.number, [login])
        HooksStore(ws.ledger).save_pull(app=ws.config.app, number=pull.number, source=payload["source"],
                                        target=payload["target"], head_sha=payload["head_sha"],
                                        digest=payload["digest"], opened_at=pull.created_at or datetime.now(UTC))

    def describe(self, item: OutboxItem) -> str:
        payload = item.payload
        return f"open or update the release PR {payload['source']} -> {payload['target']} for {payload['release']}"


class PullRequestComments:
    """A comment on a pull request: why conveyor did not act on its merge."""

    retry_delays: tuple[float, ...] = ()

    def lane(self, item: OutboxItem) -> str:
        return PR_COMMENT

    def owed(self, ws: Workspace, release: Release, finished_at: datetime) -> list[dict[str, Any]]:
        return []

    def deliver(self, ws: Workspace, item: OutboxItem) -> None:
        forge_of(ws, item.payload.get("forge")).comment(int(item.payload["number"]), item.payload["body"])

    def describe(self, item: OutboxItem) -> str:
        return f"comment on PR #{item.payload['number']}"


# ------------------------------------------------------------------------------------------- auto-merge


def merge_due(server: Server, now: datetime | None = None) -> list[dict[str, Any]]:
    """Merge each open release PR whose auto_merge_after has passed, unless something holds its stage."""
    from conveyor.ledger.hooks_store import HooksStore

    now = now or datetime.now(UTC)
    done = []
    for pull in HooksStore(server.ledger).open_pulls():
        ws = server.workspace(pull.app)
        try:
            ws.ship(pull.head_sha)
            done.append({"app": pull.app, "number": pull.number, "outcome": _merge_if_due(ws, pull, now)})
        except ConveyorError as exc:
            done.append({"app": pull.app, "number": pull.number, "outcome": f"not merged: {exc.message}"})
        finally:
            ws.close()
    return done


def _merge_if_due(ws: Workspace, pull: Any, now: datetime) -> str:
    from conveyor.ledger.hooks_store import HooksStore
    from conveyor.pipeline.triggers import pauses

    settings = ws.config.release_pr
    if settings is None or settings.auto_merge_after is None:
        return "no auto_merge_after"
    due = pull.opened_at + timedelta(seconds=settings.auto_merge_after)
    if now < due:
        return f"due at {due:%Y-%m-%d %H:%M UTC}"
    target_env = promoted_stage(ws.config)
    held = pauses(ws, ws.config.app, target_env) if target_env else ""
    if held:
        return f"not merged: {held}"
    forge = forge_of(ws)
    current = forge.get_pull(pull.number)
    if current.state != "open":
        HooksStore(ws.ledger).pull_merged(ws.config.app, pull.number)
        return f"PR #{pull.number} is {'merged' if current.merged else 'closed'} already"
    sha = forge.merge_pull(pull.number, sha=pull.head_sha)
    HooksStore(ws.ledger).pull_merged(ws.config.app, pull.number)
    return f"merged as {sha[:12]}"
