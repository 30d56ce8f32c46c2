"""Deploy targets behind one small interface (targets.base.Target), found by their type through one table.

Each target is imported only when a spec or config names it, so each pulls in its own libraries (the
Kubernetes client, say) only when used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conveyor.errors import BadInput
from conveyor.targets.base import Target


def _container_host(state_dir: Path, repo_dir: Path) -> Target:
    from conveyor.targets.container_host import ContainerHost

    return ContainerHost(state_dir / "proxy")


def _kubernetes(state_dir: Path, repo_dir: Path) -> Target:
    from conveyor.targets.kubernetes.target import Kubernetes

    return Kubernetes(state_dir, repo_dir)


def _heroku(state_dir: Path, repo_dir: Path) -> Target:
    from conveyor.targets.heroku.target import Heroku

    return Heroku(state_dir)


def _ssh_hosts(state_dir: Path, repo_dir: Path) -> Target:
    from conveyor.targets.ssh_hosts.target import SSHHosts

    return SSHHosts(state_dir, repo_dir)


TARGETS: dict[str, Callable[[Path, Path], Target]] = {
    "container-host": _container_host,
    "kubernetes": _kubernetes,
    "heroku": _heroku,
    "ssh-hosts": _ssh_hosts,
}


def target_for(kind: str, state_dir: Path, repo_dir: Path) -> Target:
    """The target adapter for a spec's or config's target type. repo_dir is the app repo's root
    (config-relative paths start there)."""
    make = TARGETS.get(kind)
    if make is None:
        raise BadInput(f"unknown target type '{kind}' (known: {', '.join(TARGETS)})")
    return make(state_dir, repo_dir)
