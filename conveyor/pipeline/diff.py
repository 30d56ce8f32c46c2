"""Commits between stages: what the later stage lacks, from the two live releases' SHAs in the ledger
(never from mutable tags), with a compare URL for GitHub and GitLab remotes and migration flags."""

from __future__ import annotations

import re
from typing import Any

from conveyor.errors import BadInput
from conveyor.pipeline.workspace import Workspace
from conveyor.vcs.git import History

_SCP_LIKE = re.compile(r"^(?:[\w.-]+@)?(?P<host>[\w.-]+):(?P<path>[^/].*)$")
_URL = re.compile(r"^(?:https?|ssh|git)://(?:[^@/]+@)?(?P<host>[\w.-]+)(?::\d+)?/(?P<path>.+)$")


def compare_url(remote_url: str, older: str, newer: str) -> str | None:
    """A web compare link when the remote is on GitHub or GitLab, else None."""
    match = _URL.match(remote_url) or _SCP_LIKE.match(remote_url)
    if not match:
        return None
    host, path = match.group("host"), match.group("path").removesuffix("/").removesuffix(".git")
    if host == "github.com" or host.startswith("github."):
        return f"https://{host}/{path}/compare/{older}...{newer}"
    if host == "gitlab.com" or host.startswith("gitlab."):
        return f"https://{host}/{path}/-/compare/{older}...{newer}"
    return None


def stage_pair(ws: Workspace, source: str | None, target: str | None) -> tuple[str, str]:
    if (source is None) != (target is None):
        raise BadInput("diff takes both FROM and TO, or neither (then the first two stages)")
    if source is None or target is None:
        from conveyor.pipeline.operations import default_stages

        return default_stages(ws)
    return ws.config.environment(source).name, ws.config.environment(target).name


def diff(ws: Workspace, source: str | None, target: str | None) -> dict[str, Any]:
    source, target = stage_pair(ws, source, target)
    app = ws.config.app
    newer = ws.ledger.live_release(app, source)
    older = ws.ledger.live_release(app, target)
    result: dict[str, Any] = {
        "from": source, "to": target,
        "from_sha": newer.sha if newer else None, "to_sha": older.sha if older else None,
        "commits": [], "compare_url": None,
    }
    if newer is None:
        return result
    history = History(ws.repo)
    older_sha = older.sha if older else None
    commits = history.commits(older_sha, newer.sha)
    flagged = history.touching(older_sha, newer.sha, ws.config.migrations) if commits else set()
    result["commits"] = [
        {"sha": c.sha, "author": c.author, "date": c.date, "subject": c.subject, "migration": c.sha in flagged}
        for c in commits
    ]
    if older_sha:
        result["compare_url"] = compare_url(history.remote_url(ws.config.release_refs.remote), older_sha, newer.sha)
    return result
