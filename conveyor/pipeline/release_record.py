"""The promotion record of one release: everything the ledger and the app's repo say about it.

Who, why, where from, each step's timing, the artifact and the release it was promoted or rolled back
from, the commits it added over the environment's previous release, its rendered spec's diff against that
release's (through the redactor: a spec never holds secret values, and a page must not even if one did),
its pre-deploy tasks with their output, its events as a timeline, and for a rollback what it does not undo.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import BadInput

if TYPE_CHECKING:
    from conveyor.ledger.models import Event, Release
    from conveyor.pipeline.redact import Redactor
    from conveyor.pipeline.workspace import Workspace
    from conveyor.vcs.git import Repo

COMMITS_SHOWN = 200


@dataclass
class StepTiming:
    step: str
    status: str
    seconds: float | None


@dataclass
class ReleaseRecord:
    release: Release
    previous: Release | None  # the environment's live release this one replaced
    source: Release | None  # the release a promotion pinned, or the one a rollback re-applies
    commits: list[list[str]]  # [sha, author, email, subject], newest first
    commit_count: int
    direction: str  # "adds" or, for a rollback, "removes"
    config_diff: list[str]  # unified diff lines of the rendered spec, redacted
    tasks: list[Event]
    timeline: list[Event]
    timings: list[StepTiming]
    not_undone: list[str]
    origin_url: str | None


def release_record(ws: Workspace, app: str, env: str, number: int) -> ReleaseRecord:
    release = ws.ledger.get_release(app, env, number)
    if release is None:
        raise BadInput(f"{app} has no release {env}#{number}")
    previous = ws.ledger.get_release(app, env, release.previous_number) if release.previous_number else None
    source = ws.ledger.get_release_by_id(release.source_release_id) if release.source_release_id else None
    older, newer, direction = (previous.sha if previous else None), release.sha, "adds"
    if previous is not None and release.kind == "rollback":
        older, newer, direction = release.sha, previous.sha, "removes"
    commits, count = ([], 0) if older == newer else _commits_between(ws.repo, older, newer)
    timeline = ws.ledger.events(release_id=release.id)
    return ReleaseRecord(
        release, previous, source, commits, count, direction, _config_diff(ws, release, previous),
        [e for e in timeline if e.step in ("task", "logs")], timeline, step_timings(timeline),
        _not_undone(ws, release, previous), release.origin if release.origin.startswith(("https://", "http://"))
        else None)


def _config_diff(ws: Workspace, release: Release, previous: Release | None) -> list[str]:
    def lines(spec: dict[str, Any] | None) -> list[str]:
        return json.dumps(spec, indent=2, sort_keys=True).splitlines() if spec is not None else []

    redact = _redactor(ws, release.app, release.sha).text
    before = f"{release.env}#{previous.number}" if previous else "(nothing before)"
    diff = difflib.unified_diff(lines(previous.spec if previous else None), lines(release.spec), before,
                                f"{release.env}#{release.number}", lineterm="", n=2)
    return [redact(line) for line in diff]


# Commits never change, so what git says about a pair of them, and which secrets a commit's config names,
# can be kept: a release page asks git and parses a config only the first time it shows a release.
@lru_cache(maxsize=4096)
def _cached_commits(repo_path: str, older: str | None, newer: str) -> tuple[list[list[str]], int]:
    from conveyor.vcs.git import Repo

    repo = Repo(Path(repo_path))
    return repo.commit_authors(older, newer, COMMITS_SHOWN), repo.commit_count(older, newer)


def _commits_between(repo: Repo, older: str | None, newer: str) -> tuple[list[list[str]], int]:
    rows, count = _cached_commits(str(repo.path), older, newer)
    return [list(row) for row in rows], count


_REDACTORS: dict[tuple[str, str], Redactor] = {}


def _redactor(ws: Workspace, app: str, sha: str) -> Redactor:
    """The redactor of the config committed in `sha` (the secrets it names, with this process's values)."""
    key = (app, sha)
    if key not in _REDACTORS:
        if len(_REDACTORS) > 4096:
            _REDACTORS.clear()
        ws.ship(sha)
        _REDACTORS[key] = ws.redactor
    return _REDACTORS[key]


def step_timings(timeline: list[Event]) -> list[StepTiming]:
    """Each step's duration: from its `started` event to the next event of that step that ends it."""
    started: dict[str, Event] = {}
    timings = []
    for event in timeline:
        if event.status == "started":
            started[event.step] = event
        elif event.status in ("ok", "failed") and event.step in started:
            begun = started.pop(event.step)
            timings.append(StepTiming(event.step, event.status, (event.at - begun.at).total_seconds()))
    timings += [StepTiming(step, "unfinished", None) for step in started]
    return timings


def _not_undone(ws: Workspace, release: Release, previous: Release | None) -> list[str]:
    if release.kind != "rollback" or release.source_release_id is None:
        return []
    from conveyor.pipeline.operations import tasks_not_undone

    target = ws.ledger.get_release_by_id(release.source_release_id)
    return tasks_not_undone(ws, release.env, target, previous) if target else []
