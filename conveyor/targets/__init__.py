"""Deploy targets behind one small interface (targets.base.Target)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conveyor.errors import BadInput


def target_for(kind: str, state_dir: Path, repo_dir: Path) -> Any:
    """The target adapter for a spec's or config's target type. Imported lazily: each pulls in its own
    libraries only when used. repo_dir is the app repo's root (config-relative paths start there)."""
    if kind == "container-host":
        from conveyor.targets.container_host import ContainerHost

        return ContainerHost(state_dir / "proxy")
    if kind == "kubernetes":
        from conveyor.targets.kubernetes.target import Kubernetes

        return Kubernetes(state_dir, repo_dir)
    raise BadInput(f"unknown target type '{kind}'")
