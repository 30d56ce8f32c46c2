"""Apps a `conveyor server` ships: registered by git URL, each with a bare mirror the server fetches before
every operation, so everything it ships is read from the commit, never from a working tree."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import BadInput, InfrastructureMissing, OperationFailed
from conveyor.vcs.git import Repo

if TYPE_CHECKING:
    from conveyor.config.models import AppConfig
    from conveyor.ledger.server_store import App
    from conveyor.ledger.store import Ledger

APP_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
FETCH_TIMEOUT = 120.0


def mirrors_dir(home: Path) -> Path:
    return home / "server" / "mirrors"


def mirror_path(home: Path, app: str) -> Path:
    return mirrors_dir(home) / f"{app}.git"


def app_view(app: App) -> dict[str, Any]:
    return {"name": app.name, "repo_url": app.repo_url, "created_at": app.created_at.isoformat(),
            "created_by": app.created_by, "stages": list(app.stages)}


def check_app_name(name: str) -> str:
    if not APP_NAME.fullmatch(name) or len(name) > 63:
        raise BadInput(f"app name '{name}': use lower-case letters, digits and dashes (the name in conveyor.yml)")
    return name


def add_app(ledger: Ledger, home: Path, name: str, repo_url: str, actor: str) -> App:
    """Register NAME: mirror its repo first (a URL that cannot be cloned is refused, nothing recorded)."""
    check_app_name(name)
    if not repo_url.strip() or repo_url.startswith("-"):
        raise BadInput(f"repo URL '{repo_url}' is not a git URL")
    if ledger.server.get_app(name) is not None:
        raise BadInput(f"app '{name}' is already registered")
    path = mirror_path(home, name)
    with _mirror_lock(path):
        if not (path / "HEAD").exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                _git(["clone", "--bare", "--quiet", "--", repo_url, str(path)], f"cannot clone {repo_url}")
            except OperationFailed as exc:
                raise BadInput(exc.message) from None  # the URL given is what is wrong
    app = ledger.server.add_app(name, repo_url, actor)
    _stages_at_head(ledger, app, Repo(path))
    return app


def remember_stages(ledger: Ledger, app: App, config: AppConfig) -> None:
    """Keep the app's stage order in the ledger as its config last said, so an org-wide view reads every
    app's stages in one query instead of a git read and a config parse per app."""
    stages = tuple(env.name for env in config.environments)
    if stages != app.stages:
        ledger.server.set_stages(app.name, list(stages))


def stages_by_app(ledger: Ledger) -> dict[str, list[str]]:
    """Every registered app's stages in config order ([] for one whose config no server has read yet)."""
    return ledger.server.stages_by_app()


def _stages_at_head(ledger: Ledger, app: App, repo: Repo) -> None:
    from contextlib import suppress

    from conveyor.errors import ConveyorError
    from conveyor.pipeline.config_source import CommitConfig

    # An empty repo, or a config that does not load yet, leaves no stages: the first operation will say why.
    with suppress(ConveyorError):
        remember_stages(ledger, app, CommitConfig(repo, repo.resolve("HEAD")).load())


def remove_app(ledger: Ledger, home: Path, name: str) -> None:
    """Forget NAME (its records stay in the ledger); its mirror is deleted."""
    import shutil

    if not ledger.server.remove_app(name):
        raise BadInput(f"no app named '{name}' is registered")
    path = mirror_path(home, name)
    with _mirror_lock(path):
        shutil.rmtree(path, ignore_errors=True)


def mirror(home: Path, app: App, *, fetch: bool) -> Repo:
    """The app's mirror, fetched from its remote first when `fetch` (every operation does)."""
    path = mirror_path(home, app.name)
    with _mirror_lock(path):
        if not (path / "HEAD").exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _git(["clone", "--bare", "--quiet", "--", app.repo_url, str(path)], f"cannot clone {app.repo_url}")
        elif fetch:
            _git(["-C", str(path), "fetch", "--quiet", "--prune", "--force", "origin",
                  "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                 f"cannot fetch {app.name}'s repo {app.repo_url}")
    return Repo(path)


@contextmanager
def _mirror_lock(path: Path) -> Iterator[None]:
    """One fetch at a time per mirror, across every worker and replica sharing this machine's state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _git(args: list[str], what: str) -> None:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # never wait for a password nobody will type
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=FETCH_TIMEOUT, env=env)
    except FileNotFoundError:
        raise InfrastructureMissing("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"{what}: git gave no answer in {FETCH_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["git failed"])[-1]
        raise OperationFailed(f"{what}: {detail}")
