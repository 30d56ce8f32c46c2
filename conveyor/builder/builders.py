"""Build an image from a directory and push it, through the buildah, podman or docker CLI."""

from __future__ import annotations

import shutil
import subprocess
from collections import deque
from collections.abc import Callable
from pathlib import Path

from conveyor.errors import InfrastructureMissing, OperationFailed

AUTO_ORDER = ("buildah", "podman", "docker")
TAIL_LINES = 5  # the builder's last lines a failure message repeats


def detect_builder(configured: str) -> str:
    candidates = AUTO_ORDER if configured == "auto" else (configured,)
    for name in candidates:
        if shutil.which(name) and (name != "docker" or _docker_daemon_answers()):
            return name
    wanted = "buildah, podman or docker" if configured == "auto" else configured
    raise InfrastructureMissing(f"no image builder found: install {wanted} (build.builder in conveyor.yml)")


def _docker_daemon_answers() -> bool:
    result = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    return result.returncode == 0


def build_and_push(
    builder: str, context: Path, dockerfile: Path, image: str, *, build_args: dict[str, str],
    labels: dict[str, str], insecure: bool, log: Callable[[str], None],
) -> None:
    build_cmd = "bud" if builder == "buildah" else "build"
    command = [builder, build_cmd, "-f", str(dockerfile), "-t", image]
    for key, value in build_args.items():
        command += ["--build-arg", f"{key}={value}"]
    for key, value in labels.items():
        command += ["--label", f"{key}={value}"]
    _run([*command, str(context)], f"building {image}", log)
    push = [builder, "push"]
    if insecure and builder != "docker":
        push.append("--tls-verify=false")
    _run([*push, image], f"pushing {image}", log)


def _run(command: list[str], what: str, log: Callable[[str], None]) -> None:
    """Run a builder command, handing every output line to `log` as it comes; on failure the message
    carries the last lines (the reason is rarely the very last one)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    for line in proc.stdout:
        line = line.rstrip()
        log(line)
        if line.strip():
            tail.append(line)
    if proc.wait() != 0:
        lines = "".join(f"\n    {line}" for line in tail)
        raise OperationFailed(f"{what} failed (exit {proc.returncode}); its last lines:{lines}")
