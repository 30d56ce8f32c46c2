"""The small interface every deploy target implements.

A target renders a spec from config + artifact, runs one-off tasks with an artifact, deploys a spec
(apply + verify), and reads what is live. Specs are plain JSON-able dicts so the ledger can store them
and a rollback can re-apply one exactly. Specs name secrets, never hold their values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# report(step, message): progress lines the pipeline prints and appends to the ledger as events.
Reporter = Callable[[str, str], None]
# The step a target reports at the instant the new version takes the traffic. From then on the release
# serves: the pipeline records it as succeeded even when what follows (a drain, clean-up) is interrupted.
SWITCHED = "switch"


@dataclass(frozen=True)
class Artifact:
    repository: str  # e.g. 127.0.0.1:5000/hello
    sha: str  # full git SHA the image was built from
    digest: str  # sha256:...

    @property
    def image(self) -> str:
        return f"{self.repository}@{self.digest}"


def release_values(target_type: str, app: str, env: str, artifact: Artifact) -> dict[str, Any]:
    """The head every target's spec starts with: what is released where."""
    return {
        "target": target_type,
        "app": app,
        "env": env,
        "image": artifact.image,
        "repository": artifact.repository,
        "sha": artifact.sha,
        "digest": artifact.digest,
    }


@dataclass
class Outcome:
    succeeded: bool
    reason: str = ""
    logs: list[str] = field(default_factory=list)
    # False when a failed deploy may have changed what serves, so the pipeline must re-apply the
    # previous release's stored spec. The container host never switches before health passes: True.
    previous_still_serving: bool = True
    # A fleet's targets: per host, what was applied there and its outcome (the ledger records them).
    hosts: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class LiveState:
    image: str  # repository@digest actually serving
    release_label: str  # what the target was told when it applied (e.g. "staging#4")
    detail: str = ""
    hosts: list[dict[str, Any]] | None = None  # a fleet: what each host serves


class Target(Protocol):
    def render(self, app: Any, env: Any, artifact: Artifact) -> dict[str, Any]: ...

    def preflight(self, spec: dict[str, Any]) -> list[str] | None:
        """Raise a ConveyorError when the spec cannot be applied here (engine missing, port taken). Runs
        before the first side effect, also for --dry-run; may return what it checked, to show there."""

    def run_task(self, spec: dict[str, Any], task: dict[str, Any], report: Reporter) -> None:
        """Run one pre-deploy task with the spec's image; raise TargetError when it fails."""

    def deploy(self, spec: dict[str, Any], release_label: str, report: Reporter) -> Outcome: ...

    def live(self, app: str, env: str, spec: dict[str, Any] | None = None) -> LiveState | None:
        """What really serves app/env now. spec is the ledger's live release's spec, when there is one
        (a target that needs connection settings, such as Kubernetes, reads them from it)."""

    def close(self) -> None:
        """Let go of whatever the target holds open (API sessions); called when the command ends."""

    def run_command(self, spec: dict[str, Any], command: list[str], report: Reporter, *,
                    stdin: bool = False, tty: bool = False) -> int:
        """`conveyor run`: a one-off workload with the spec's image and settings; returns its exit code.
        stdin/tty attach the caller's terminal instead of streaming output through report."""

    def probe(self, spec: dict[str, Any]) -> str | None:
        """Whether the release `spec` describes really answers (quickly, through its stable address):
        None when it does, else the outage in one line."""

    def restore(self, spec: dict[str, Any], release_label: str, report: Reporter) -> Outcome:
        """`conveyor up`: make the stored spec serve again (restart the proxy, re-apply the spec if its
        workload is gone) without it being a new release."""

    def retire(self, app: str, env: str, report: Reporter, spec: dict[str, Any] | None = None) -> None:
        """`conveyor retire`: stop and remove everything that serves app/env here. spec is the ledger's live
        release's spec (a target that needs connection settings, such as Heroku, reads them from it)."""
