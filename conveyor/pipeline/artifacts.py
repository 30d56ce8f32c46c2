"""Artifacts: the image built once per commit, tagged with the full SHA, always used by digest."""

from __future__ import annotations

import tempfile
from pathlib import Path

from conveyor.errors import BadInput
from conveyor.pipeline.workspace import Workspace
from conveyor.targets.base import Artifact


def find_artifact(ws: Workspace, sha: str) -> Artifact | None:
    digest = ws.registry.digest_for_tag(sha)
    return Artifact(ws.config.image, sha, digest) if digest else None


def require_artifact(ws: Workspace, sha: str) -> Artifact:
    artifact = find_artifact(ws, sha)
    if artifact is None:
        raise BadInput(
            f"commit {sha[:12]} was never built: {ws.config.image}:{sha} is not in the registry. "
            f"Run `conveyor build {sha[:12]}` first."
        )
    return artifact


def build(ws: Workspace, ref: str) -> tuple[Artifact, bool]:
    """Build and push the image for REF's commit unless the registry has it. Returns (artifact, built)."""
    from conveyor.builder.builders import build_and_push, detect_builder

    sha = ws.repo.resolve(ref)
    ws.ship(sha)  # image repository and build settings as committed in what is built
    existing = find_artifact(ws, sha)
    if existing is not None:
        ws.say(f"{ws.config.image}:{sha[:12]} is already in the registry ({existing.digest}); not building")
        return existing, False
    settings = ws.config.build
    builder = detect_builder(settings.builder)
    image = f"{ws.config.image}:{sha}"
    with tempfile.TemporaryDirectory(prefix="conveyor-build-") as tmp:
        tree = Path(tmp)
        ws.repo.export(sha, tree)  # a clean export of the commit: never uncommitted files
        context = (tree / settings.context).resolve()
        dockerfile = (context / settings.dockerfile).resolve()
        if not dockerfile.is_file():
            raise BadInput(f"commit {sha[:12]} has no {settings.dockerfile} in {settings.context}")
        ws.say(f"building {image} with {builder} from a clean export of {sha[:12]}")
        build_and_push(
            builder, context, dockerfile, image, build_args=settings.args,
            labels={"org.opencontainers.image.revision": sha}, insecure=ws.config.registry.insecure,
            log=lambda line: ws.say(f"  {builder}: {line}"),  # the builder's own progress, as it comes
        )
    artifact = find_artifact(ws, sha)
    if artifact is None:
        raise BadInput(f"pushed {image} but the registry does not list it")
    ws.say(f"pushed {image}: {artifact.digest}")
    return artifact, True
