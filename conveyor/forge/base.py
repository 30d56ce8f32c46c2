"""The forge interface: what the pipeline asks of the place the code is hosted (GitHub today, GitLab next).

Everything here is plain data; an adapter (forge/github.py) turns the forge's REST answers into it, and
raises only the Forge* errors of conveyor/errors.py (ForgeUnavailable: retry later; ForgeRefused: someone
must act; PullRequestExists: open_pull found one open already). Policies, such as which checks must pass,
live in pipeline/, not here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

CheckState = Literal["success", "failure", "pending"]
DeploymentState = Literal["in_progress", "success", "failure", "error", "inactive", "queued", "pending"]
WORST_FIRST: tuple[CheckState, ...] = ("failure", "pending", "success")


@dataclass(frozen=True)
class Check:
    """One CI context's verdict: a commit status context or a check run name (the same name in both
    reads as its worse state). `url` links to its details; `detail` is the forge's own word for it."""

    name: str
    state: CheckState
    url: str | None = None
    source: str = "status"  # "status", "check_run", or "status+check_run"
    detail: str = ""


@dataclass(frozen=True)
class CIState:
    """A commit's CI: its commit statuses and its check runs, merged into one verdict per context."""

    sha: str
    checks: tuple[Check, ...] = ()

    def check(self, name: str) -> Check | None:
        return next((check for check in self.checks if check.name == name), None)

    def in_state(self, state: CheckState) -> list[Check]:
        return [check for check in self.checks if check.state == state]


@dataclass(frozen=True)
class Deployment:
    id: int
    environment: str
    sha: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    url: str = ""


@dataclass(frozen=True)
class PullRequest:
    number: int
    state: str  # "open" or "closed"
    merged: bool
    head: str  # branch names, without the owner
    base: str
    head_sha: str
    title: str
    body: str
    url: str  # the page a person opens
    merge_commit_sha: str | None = None
    created_at: datetime | None = None
    assignees: tuple[str, ...] = ()


@dataclass(frozen=True)
class Commit:
    sha: str
    message: str
    author_name: str
    author_email: str
    author_login: str | None  # the forge account the author email belongs to, when the forge knows it
    parents: tuple[str, ...] = ()
    url: str = ""


class Forge(Protocol):
    """One repository on a forge. Every call is one logical request (pages and rate-limit waits included);
    errors are the Forge* types of conveyor/errors.py."""

    name: str  # e.g. "github:acme/shop": names the repository in messages and outbox lanes

    def ci_state(self, sha: str) -> CIState:
        """The commit's statuses and check runs, one Check per context (latest run of each)."""
        ...

    def create_deployment(self, *, sha: str, environment: str, payload: Mapping[str, Any], production: bool,
                          description: str = "") -> Deployment:
        """A deployment of `sha` to `environment`. The forge runs no checks of its own (conveyor gates)."""
        ...

    def find_deployment(self, *, sha: str, environment: str, payload_match: Mapping[str, Any]) -> Deployment | None:
        """The deployment of `sha` to `environment` whose payload holds every item of `payload_match` (finds
        one created by a run that died before it noted the id)."""
        ...

    def set_deployment_status(self, deployment_id: int, state: DeploymentState, *, environment_url: str | None = None,
                              log_url: str | None = None, description: str = "") -> None:
        ...

    def commit(self, sha: str) -> Commit:
        ...

    def find_pull(self, *, head: str, base: str, state: str = "open") -> PullRequest | None:
        """The newest pull request from branch `head` into `base` in `state` ("open", "closed", "all")."""
        ...

    def get_pull(self, number: int) -> PullRequest:
        ...

    def open_pull(self, *, head: str, base: str, title: str, body: str) -> PullRequest:
        """Raises PullRequestExists when one from `head` into `base` is open already."""
        ...

    def update_pull(self, number: int, *, title: str | None = None, body: str | None = None) -> PullRequest:
        ...

    def merge_pull(self, number: int, *, sha: str | None = None, method: str = "merge",
                   title: str | None = None) -> str:
        """Merge it (only if its head is still `sha`, when given); the merge commit's SHA."""
        ...

    def comment(self, number: int, body: str) -> int:
        """A comment on the pull request (or issue) `number`; the comment's id."""
        ...

    def assign(self, number: int, logins: Sequence[str]) -> None:
        ...

    def close(self) -> None:
        ...
