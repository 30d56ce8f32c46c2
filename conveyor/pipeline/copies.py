"""Images that move between registries by digest: where an environment pulls its artifact from, and the
copy step that puts it there before the release applies it (registry/copy.py does the moving).

A spec lists its copies under "copies": the digest, the source repository (its credentials are the ones
the config gives that repository: the app's registry, or an environment's `registry:`) and the
destination with the names of the env vars holding its credentials, never their values.
"""

from __future__ import annotations

from typing import Any

from conveyor.config.models import Environment, RegistrySettings
from conveyor.pipeline.workspace import Workspace
from conveyor.targets.base import Artifact, Reporter

COPY_STEP = "copy"


def registry_fields(repository: str, settings: RegistrySettings | None) -> dict[str, Any]:
    """A copy's end as the spec stores it: the repository and how to log in (names, not secrets)."""
    if settings is None:
        return {"repository": repository}
    return {"repository": repository, "insecure": settings.insecure, "username_env": settings.username_env,
            "password_env": settings.password_env}


def place(ws: Workspace, env: Environment, artifact: Artifact) -> tuple[Artifact, list[dict[str, Any]]]:
    """The artifact as `env` pulls it, and the copy that puts it there (none when it is there already)."""
    if env.registry is None or env.registry.image == artifact.repository:
        return artifact, []
    copy = {"digest": artifact.digest, "tag": artifact.sha, "from": artifact.repository,
            "to": registry_fields(env.registry.image, env.registry)}
    return Artifact(env.registry.image, artifact.sha, artifact.digest), [copy]


def render(ws: Workspace, env: Environment, artifact: Artifact) -> tuple[Artifact, dict[str, Any]]:
    """The environment's spec for the artifact, with every copy it needs first: the environment's own
    registry's and the target's (a Heroku app's registry)."""
    placed, copies = place(ws, env, artifact)
    spec = ws.target(env.target.type).render(ws.config, env, placed)
    spec["copies"] = copies + list(spec.get("copies", []))
    if not spec["copies"]:
        del spec["copies"]
    return placed, spec


def source_settings(ws: Workspace, repository: str) -> RegistrySettings | None:
    """How conveyor logs in to a repository it copies from: the config's settings for it, if any."""
    if repository == ws.config.image:
        return ws.config.registry
    for env in ws.config.environments:
        if env.registry is not None and env.registry.image == repository:
            return env.registry
    return None


def run_copy(ws: Workspace, copy: dict[str, Any], report: Reporter) -> str:
    """Copy one image as a spec's copy says; returns the summary. A digest that arrives different fails."""
    from conveyor.registry.copy import UploadJournal, copy_image
    from conveyor.settings import conveyor_home, copy_chunk_bytes

    source = _registry(registry_fields(copy["from"], source_settings(ws, copy["from"])), ws)
    destination = _registry(copy["to"], ws)
    try:
        result = copy_image(source, destination, copy["digest"], tag=copy.get("tag"),
                            journal=UploadJournal(conveyor_home() / "uploads"),
                            progress=lambda line: report(COPY_STEP, line), chunk_bytes=copy_chunk_bytes())
    finally:
        source.close()
        destination.close()
    return result.summary()


def _registry(fields: dict[str, Any], ws: Workspace) -> Any:
    from conveyor.registry.client import Registry

    return Registry(fields["repository"], insecure=bool(fields.get("insecure")), username=fields.get("username"),
                    username_env=fields.get("username_env"), password_env=fields.get("password_env"),
                    say=ws.say, timeout=60.0)


def describe(copy: dict[str, Any]) -> str:
    return f"copy {copy['digest']} from {copy['from']} to {copy['to']['repository']} (only missing blobs)"
