"""Commits between stages: what the later stage lacks, from the two live releases' SHAs in the ledger
(never from mutable tags), with a compare URL for GitHub and GitLab remotes and migration flags.

On a large range `git log` is most of the work, so it is started before conveyor has finished loading,
on a hint read straight from a SQLite ledger (ledger.peek); the hint is then checked against the
ledger proper and the early log thrown away if they differ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from conveyor.pipeline.operations import stage_pair
from conveyor.pipeline.workspace import Workspace
from conveyor.vcs.git import CommitLog, History

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
class _EarlyLogs:
    older: str | None
    newer: str
    human: bool
    commits: CommitLog
    migrations: CommitLog | None

    @classmethod
    def start(cls, ws: Workspace, older: str | None, newer: str, paths: list[str], human: bool) -> _EarlyLogs:
        commits = CommitLog(ws.repo, older, newer, fmt="human" if human else "records")
        migrations = CommitLog(ws.repo, older, newer, fmt="shas", paths=paths) if paths else None
        return cls(older, newer, human, commits, migrations)

    def matches(self, older: str | None, newer: str, paths: list[str]) -> bool:
        return (self.older, self.newer) == (older, newer) and (self.migrations is not None) == bool(paths)

    def discard(self) -> None:
        self.commits.discard()
        if self.migrations is not None:
            self.migrations.discard()


def _start_early(ws: Workspace, source: str | None, target: str | None, human: bool) -> _EarlyLogs | None:
    from conveyor.config.raw import peek_raw
    from conveyor.ledger import default_database_url
    from conveyor.ledger.peek import live_sha_hint

    raw = peek_raw(ws.config_path)
    try:
        names = [str(e["name"]) for e in raw["environments"]]
        pair = (source, target) if source and target else (names[0], names[1])
        app = str(raw["app"])
        paths = [str(p) for p in raw.get("migrations") or []]
    except (KeyError, IndexError, TypeError):
        return None
    hint = live_sha_hint(default_database_url(), app, list(pair))
    newer, older = hint.get(pair[0]), hint.get(pair[1])
    return _EarlyLogs.start(ws, older, newer, paths, human) if newer else None


@dataclass
class StageDiff:
    source: str
    target: str
    source_sha: str | None
    target_sha: str | None
    rows: list[list[str]]  # [sha, author, date, subject], newest first (when asked for data)
    text: str  # git's own one-line-per-commit listing (when asked for humans)
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
    early = _start_early(ws, source, target, human)
    try:
        return _diff(ws, source, target, early, human)
    except BaseException:
        if early is not None:
            early.discard()
        raise


def _diff(
    ws: Workspace, source: str | None, target: str | None, early: _EarlyLogs | None, human: bool
) -> StageDiff:
    source, target = stage_pair(ws, source, target, "diff")
    app = ws.config.app
    newer = ws.ledger.live_release(app, source)
    older = ws.ledger.live_release(app, target)
    older_sha = older.sha if older else None
    paths = ws.config.migrations
    if early is not None and (newer is None or not early.matches(older_sha, newer.sha, paths)):
        early.discard()  # the hint was wrong: the ledger's answer is the only one used
        early = None
    if newer is None:
        return StageDiff(source, target, None, older_sha, [], "", set(), None)
    logs = early or _EarlyLogs.start(ws, older_sha, newer.sha, paths, human)
    url = None
    if older_sha:
        url = compare_url(History(ws.repo).remote_url(ws.config.release_refs.remote), older_sha, newer.sha)
    flagged = logs.migrations.shas() if logs.migrations else set()
    rows, text = ([], logs.commits.text()) if human else (logs.commits.rows(), "")
    return StageDiff(source, target, newer.sha, older_sha, rows, text, flagged, url)
