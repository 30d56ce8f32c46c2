"""conveyor's host agent: runs the container-host target on this host, for a fleet deploy over SSH.

`conveyor-host-agent` reads one request (JSON) on stdin — an operation, a container-host spec, the secret
values that spec names — and answers in JSON lines on stdout: {"report": [step, message]} for each progress
line, then one {"result": …} or {"error": {…}}. Every engine and HAProxy call is then the container-host
target's own, on this host: the algorithm (pull, start, health, switch, drain, retire) exists once.

The host's state (its HAProxy, deploy records) lives under its own CONVEYOR_HOME, as on a single host.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from conveyor.errors import ConveyorError, TargetError
from conveyor.targets.base import Reporter

Operation = Callable[[Any, dict[str, Any], Reporter], Any]
REGISTRY_TIMEOUT = 5.0


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _report(step: str, message: str) -> None:
    _emit({"report": [step, message]})


def _check(host: Any, request: dict[str, Any], report: Reporter) -> list[str]:
    """Everything a deploy needs on this host, before anything changes: the container-host preflight (engine,
    HAProxy, the port), the registry answering from here, and room on the engine's storage."""
    spec = request["spec"]
    checked = list(host.preflight(spec))
    checked.append(_registry_reachable(spec["repository"].split("/", 1)[0], bool(request.get("insecure"))))
    checked.append(_room(spec, int(request.get("min_free_mb", 0))))
    return checked


def _registry_reachable(registry: str, insecure: bool) -> str:
    import httpx

    url = f"{'http' if insecure else 'https'}://{registry}/v2/"
    try:
        answer = httpx.get(url, timeout=REGISTRY_TIMEOUT)
    except httpx.HTTPError as exc:
        raise TargetError(f"cannot reach the registry {registry}: {type(exc).__name__}: {exc}") from None
    if answer.status_code not in (200, 401):  # 401: it answers, and wants the engine's credentials
        raise TargetError(f"the registry {registry} answers GET /v2/ with {answer.status_code}")
    return f"registry {registry} answers"


def _room(spec: dict[str, Any], min_free_mb: int) -> str:
    from conveyor.targets.container_host.engine import Engine

    engine = Engine.detect(spec["engine"])
    done = engine.runner.run([engine.binary, "info", "--format", "{{.Store.GraphRoot}}"], timeout=30)
    root = done.stdout.strip() if done.ok and done.stdout.strip() else "/"
    free_mb = shutil.disk_usage(root if os.path.exists(root) else "/").free // 2**20
    if free_mb < min_free_mb:
        raise TargetError(f"only {free_mb} MB free under {root} (needs {min_free_mb} MB)")
    return f"{free_mb} MB free under {root}"


def _serves(host: Any, spec: dict[str, Any], label: str) -> bool:
    """Whether this host already serves `label` with the spec's image and it answers. A host whose record
    names another release (every host, in a deploy's rollout) is answered without asking the engine."""
    if host.last_applied(spec["app"], spec["env"]) != (label, spec["image"]):
        return False
    state = host.live(spec["app"], spec["env"])
    return (state is not None and state.release_label == label and state.image == spec["image"]
            and host.probe(spec) is None)


def _apply(host: Any, request: dict[str, Any], report: Reporter) -> dict[str, Any]:
    """Deploy the spec unless this host already serves exactly it (a rollback, or `up`, on a host the
    rollout never reached)."""
    spec, label = request["spec"], request["label"]
    if _serves(host, spec, label):
        report("unchanged", f"already serves {label}")
        return {"succeeded": True, "unchanged": True, "reason": "", "logs": []}
    return {**asdict(host.deploy(spec, label, report)), "unchanged": False}


def _restore(host: Any, request: dict[str, Any], report: Reporter) -> dict[str, Any]:
    """`conveyor up` on this host: the live release serves again, whatever this host serves now."""
    spec, label = request["spec"], request["label"]
    state = host.live(spec["app"], spec["env"])
    if state is not None and state.release_label == label and state.image == spec["image"]:
        return {**asdict(host.restore(spec, label, report)), "unchanged": False}
    return _apply(host, request, report)


def _live(host: Any, request: dict[str, Any], report: Reporter) -> dict[str, Any] | None:
    state = host.live(request["spec"]["app"], request["spec"]["env"])
    return asdict(state) if state is not None else None


def _run_task(host: Any, request: dict[str, Any], report: Reporter) -> None:
    host.run_task(request["spec"], request["task"], report)


def _run_command(host: Any, request: dict[str, Any], report: Reporter) -> int:
    return int(host.run_command(request["spec"], list(request["command"]), report))


OPERATIONS: dict[str, Operation] = {
    "check": _check,
    "apply": _apply,
    "restore": _restore,
    "live": _live,
    "probe": lambda host, request, report: host.probe(request["spec"]),
    "run_task": _run_task,
    "run_command": _run_command,
}


def main() -> None:
    from conveyor.settings import conveyor_home
    from conveyor.targets.container_host import ContainerHost

    try:
        request = json.loads(sys.stdin.read())
        os.environ.update(request.get("secrets") or {})  # the spec names them; the container host reads them here
        host = ContainerHost(conveyor_home() / "proxy")
        _emit({"result": OPERATIONS[request["op"]](host, request, _report)})
    except ConveyorError as exc:
        _emit({"error": {"kind": type(exc).__name__, "message": exc.message,
                         "logs": list(getattr(exc, "logs", []))}})
    except (ValueError, KeyError) as exc:
        _emit({"error": {"kind": "BadInput", "message": f"the host agent got a bad request: {exc}", "logs": []}})


if __name__ == "__main__":
    main()
