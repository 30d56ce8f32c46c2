"""What an operation's result looks like as data: the object `--json` prints, the same whether the CLI ran
the operation itself or a `conveyor server` ran it (the server stores it on the operation, and the CLI
following it prints it unchanged)."""

from __future__ import annotations

from typing import Any

from conveyor.errors import BadInput, ConveyorError, InfrastructureMissing, Refused


def release_result(result: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A release (deploy, promote, rollback) as recorded, or for --dry-run its plan and checks."""
    from conveyor.pipeline.release import DryRun
    from conveyor.pipeline.views import release_view

    if isinstance(result, DryRun):
        return {"ok": True, "dry_run": True, "plan": result.steps, "checks": result.checks, **(extra or {})}
    return {**release_view(result), **(extra or {})}


def build_result(artifact: Any, built: bool) -> dict[str, Any]:
    return {"sha": artifact.sha, "digest": artifact.digest, "image": artifact.image, "built": built}


def failure(exit_code: int, kind: str, message: str, *, release: Any = None,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every failure: ok false, the exit code, a stable error kind, and the release as recorded when the
    failure came after one was (else null)."""
    view = None
    if release is not None:
        from conveyor.pipeline.views import release_view

        view = release_view(release)
    return {"ok": False, "exit_code": exit_code, "error": {"kind": kind, "message": message}, "release": view,
            **(extra or {})}


def error_kind(exc: ConveyorError) -> str:
    """One stable word per error class (subclasses first); `failed` covers every OperationFailed."""
    if getattr(exc.release, "status", None) == "interrupted":
        return "interrupted"
    for cls, kind in ((InfrastructureMissing, "infrastructure_missing"), (BadInput, "bad_input"),
                      (Refused, "refused")):
        if isinstance(exc, cls):
            return kind
    return "failed"


def is_failure(result: Any) -> bool:
    return isinstance(result, dict) and result.get("ok") is False
