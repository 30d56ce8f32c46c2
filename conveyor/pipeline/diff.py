"""Commits between stages: what the later stage lacks, from the two live releases' SHAs in the ledger
(never from mutable tags), with a compare URL for GitHub and GitLab remotes and migration flags.

On a large range `git log` is most of the work, so both git processes (the listing and the migration paths)
are started as soon as the ledger has named the range, and the rest is done while they run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.pipeline.stages import stage_pair
from conveyor.vcs.git import CommitLog, History

if TYPE_CHECKING:
    from conveyor.pipeline.workspace import Workspace

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


@dataclass
class StageDiff:
    source: str
    target: str
    source_sha: str | None
    target_sha: str | None
    rows: list[list[str]]  # [sha, author, date, subject], newest first (when asked for data)
    listing: bytes  # git's own one-line-per-commit listing, as git wrote it (when asked for humans)
    migrations: set[str]  # SHAs of the commits that touch a configured migration path
    compare_url: str | None

    def as_dict(self) -> dict[str, Any]:
        """The --json shape (documented in the README)."""
        return {
            "from": self.source, "to": self.target, "from_sha": self.source_sha, "to_sha": self.target_sha,
            "compare_url": self.compare_url,
            "commits": [
                {"sha": sha, "author": author, "date": date, "subject": subject, "migration": sha in self.migrations}
                for sha, author, date, subject in self.rows
            ],
        }


def diff(ws: Workspace, source: str | None, target: str | None, *, human: bool = False) -> StageDiff:
    """human=True asks git for the readable listing directly (no per-commit work in Python)."""
    source, target = stage_pair(ws, source, target, "diff")
    app = ws.config.app
    newer = ws.ledger.live_release(app, source)
    older = ws.ledger.live_release(app, target)
    older_sha = older.sha if older else None
    if newer is None:
        return StageDiff(source, target, None, older_sha, [], b"", set(), None)
    paths = ws.config.migrations
    commits = CommitLog(ws.repo, older_sha, newer.sha, fmt="human" if human else "records")
    migrations = CommitLog(ws.repo, older_sha, newer.sha, fmt="shas", paths=paths) if paths else None
    try:
        url = None
        if older_sha:
            url = compare_url(History(ws.repo).remote_url(ws.config.release_refs.remote), older_sha, newer.sha)
        flagged = migrations.shas() if migrations else set()
        rows, listing = ([], commits.output()) if human else (commits.rows(), b"")
    except BaseException:
        for log in (commits, migrations):
            if log is not None:
                log.discard()  # stop git rather than leave it writing a listing nobody reads
        raise
    return StageDiff(source, target, newer.sha, older_sha, rows, listing, flagged, url)
