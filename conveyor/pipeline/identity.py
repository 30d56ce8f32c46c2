"""Who runs an operation and from where: CONVEYOR_ACTOR / CONVEYOR_ORIGIN when set (the pipelines
`conveyor init` writes set them), else CI variables when present, else git and the OS user."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    actor: str
    origin: str


def identify(environ: Mapping[str, str], git_user: str = "", git_email: str = "") -> Identity:
    found = _identify(environ, git_user, git_email)
    actor = environ.get("CONVEYOR_ACTOR", "").strip() or found.actor
    origin = environ.get("CONVEYOR_ORIGIN", "").strip() or found.origin
    return Identity(actor, origin)


def _identify(environ: Mapping[str, str], git_user: str, git_email: str) -> Identity:
    if environ.get("CIRCLECI") == "true":
        actor = environ.get("CIRCLE_USERNAME") or "circleci"
        origin = environ.get("CIRCLE_BUILD_URL") or f"circleci job {environ.get('CIRCLE_BUILD_NUM', '?')}"
        return Identity(actor, origin)
    if environ.get("GITHUB_ACTIONS") == "true":
        actor = environ.get("GITHUB_ACTOR") or "github-actions"
        server = environ.get("GITHUB_SERVER_URL", "https://github.com")
        repo = environ.get("GITHUB_REPOSITORY", "")
        run = environ.get("GITHUB_RUN_ID", "")
        return Identity(actor, f"{server}/{repo}/actions/runs/{run}")
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = environ.get("USER", "unknown")
    actor = f"{git_user} <{git_email}>" if git_user and git_email else (git_user or user)
    return Identity(actor, f"{user}@{socket.gethostname()}")
