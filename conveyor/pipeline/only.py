"""`promote --only REF`: find exactly the release the source stage successfully ran for REF.

REF may be the staged commit itself; a merge commit on the release branch (it resolves to the parent the
source stage ran); or a squash/rebase commit, accepted only when its tree equals the tree of a commit the
source stage ran successfully.
"""

from __future__ import annotations

from dataclasses import dataclass

from conveyor.errors import Refused
from conveyor.ledger.models import Release
from conveyor.pipeline.workspace import Workspace
from conveyor.vcs.git import History

MAX_SOURCE_RELEASES = 100_000


@dataclass(frozen=True)
class OnlyMatch:
    release: Release
    how: str  # recorded with the promotion: how REF led to this release


def succeeded_releases(ws: Workspace, env: str) -> list[Release]:
    """The source stage's succeeded releases, newest first."""
    return [r for r in ws.ledger.list_releases(ws.config.app, env, MAX_SOURCE_RELEASES) if r.status == "succeeded"]


def resolve_only(ws: Workspace, source_env: str, ref: str) -> OnlyMatch:
    sha = ws.repo.resolve(ref)
    ran = succeeded_releases(ws, source_env)
    latest_for = {}
    for release in ran:  # newest first: keep the latest release of each commit
        latest_for.setdefault(release.sha, release)
    if sha in latest_for:
        return OnlyMatch(latest_for[sha], f"{ref} is {sha[:12]}, which {source_env} ran")
    history = History(ws.repo)
    parents = history.parents(sha)
    if len(parents) > 1:
        # A release-branch merge: the merged-in side first, then the mainline side.
        for parent in [*parents[1:], parents[0]]:
            if parent in latest_for:
                return OnlyMatch(latest_for[parent],
                                 f"{ref} ({sha[:12]}) is a merge; its parent {parent[:12]} is what {source_env} ran")
    trees = history.trees([sha, *latest_for])
    tree = trees.get(sha)
    for release in ran:
        if tree is not None and trees.get(release.sha) == tree:
            return OnlyMatch(release, f"{ref} ({sha[:12]}) has the same tree as {release.sha[:12]}, which "
                                      f"{source_env} ran (a squash or rebase of it)")
    raise Refused(_never_ran(ws, source_env, ref, sha, ran))


def _never_ran(ws: Workspace, source_env: str, ref: str, sha: str, ran: list[Release]) -> str:
    message = (f"{source_env} never successfully ran {ref} ({sha[:12]}): not that commit, not a parent of it, "
               "and no commit with the same tree")
    if not ran:
        return f"{message}; {source_env} has no succeeded release at all"
    last = ran[0]
    when = last.finished_at.strftime("%Y-%m-%d %H:%M UTC") if last.finished_at else "?"
    return f"{message}. {source_env} last ran {last.sha[:12]} as {source_env}#{last.number} at {when}"
