"""The `git log` of `conveyor diff`, started before conveyor has finished loading.

On a large range `git log` is most of diff's time, so it is started on a hint: the app and stage names
from a plain YAML read of conveyor.yml (config.raw) and the live SHAs from a stdlib read of a SQLite ledger
(ledger.peek). The `conveyor` executable does this before the CLI framework loads (prefetch); diff() does
it itself otherwise. diff() then confirms the range against the ledger proper and throws the early log
away if they differ, so a wrong hint costs time, never correctness.

Everything here sits on the path to git's start, so it imports little: no dataclasses, no typing.
"""

from __future__ import annotations

import os
from pathlib import Path

from conveyor.vcs.git import CommitLog, Repo


class EarlyLogs:
    """The range's commit listing and, when migration paths are configured, the SHAs that touch them."""

    def __init__(self, repo: Repo, older: str | None, newer: str, paths: list[str], human: bool) -> None:
        self.repo, self.older, self.newer, self.paths, self.human = repo.path, older, newer, paths, human
        self.commits = CommitLog(repo, older, newer, fmt="human" if human else "records")
        self.migrations = CommitLog(repo, older, newer, fmt="shas", paths=paths) if paths else None

    def matches(self, repo: Path, older: str | None, newer: str, paths: list[str], human: bool) -> bool:
        return (self.repo, self.older, self.newer, self.paths, self.human) == (repo, older, newer, paths, human)

    def discard(self) -> None:
        self.commits.discard()
        if self.migrations is not None:
            self.migrations.discard()


def start_early(repo: Repo, config_path: Path, source: str | None, target: str | None,
                human: bool) -> EarlyLogs | None:
    """git log for the range the hint names, or None when there is no usable hint."""
    from conveyor.config.raw import peek_raw
    from conveyor.ledger import default_database_url
    from conveyor.ledger.peek import live_sha_hint

    raw = peek_raw(config_path)
    try:
        names = [str(e["name"]) for e in raw["environments"]]
        pair = (source, target) if source and target else (names[0], names[1])
        app = str(raw["app"])
        paths = [str(p) for p in raw.get("migrations") or []]
    except (KeyError, IndexError, TypeError):
        return None
    hint = live_sha_hint(default_database_url(), app, list(pair))
    newer, older = hint.get(pair[0]), hint.get(pair[1])
    return EarlyLogs(repo, older, newer, paths, human) if newer else None


_prefetched: list[EarlyLogs] = []  # at most one: started by prefetch(), taken by the next diff()


def prefetch(cwd: str, source: str | None, target: str | None, *, human: bool) -> None:
    """Start the `git log` that `conveyor diff` will most likely need, before the rest of conveyor loads.

    Called by the `conveyor` executable when its arguments look like a diff. The repository is found by
    looking for `.git` upwards (no git process: this is on the critical path); a wrong guess is discarded.
    """
    from conveyor.config.raw import CONFIG_NAME

    top = _repo_top(os.path.realpath(cwd))
    if top is None:
        return  # diff() reports it, through the usual path
    early = start_early(Repo(Path(top)), Path(top) / CONFIG_NAME, source, target, human)
    if early is not None:
        import atexit

        _prefetched.append(early)
        atexit.register(_discard_untaken)  # the command failed before diff() took it: stop git


def _discard_untaken() -> None:
    while _prefetched:
        _prefetched.pop().discard()


def take_prefetched() -> EarlyLogs | None:
    return _prefetched.pop() if _prefetched else None


def _repo_top(path: str) -> str | None:
    while True:
        if os.path.exists(os.path.join(path, ".git")):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
