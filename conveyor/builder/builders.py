"""Build an image from a directory and push it, through the buildah, podman or docker CLI (every command
through a Runner: argv in, result out)."""

from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Callable
from pathlib import Path

from conveyor.errors import InfrastructureMissing, OperationFailed
from conveyor.runner import LocalRunner, Runner

AUTO_ORDER = ("buildah", "podman", "docker")
TAIL_LINES = 5  # the builder's last lines a failure message repeats


def detect_builder(configured: str, runner: Runner | None = None) -> str:
    candidates = AUTO_ORDER if configured == "auto" else (configured,)
    for name in candidates:
        if shutil.which(name) and (name != "docker" or _docker_daemon_answers(runner or LocalRunner())):
            return name
    wanted = "buildah, podman or docker" if configured == "auto" else configured
    raise InfrastructureMissing(f"no image builder found: install {wanted} (build.builder in conveyor.yml)")


def _docker_daemon_answers(runner: Runner) -> bool:
    return runner.run(["docker", "info"], timeout=20).ok


def build_commands(
    builder: str, context: Path, dockerfile: Path, image: str, *, build_args: dict[str, str],
    labels: dict[str, str], insecure: bool,
) -> list[list[str]]:
    """The build and the push, as argument lists (nothing runs here)."""
    build_cmd = "bud" if builder == "buildah" else "build"
    command = [builder, build_cmd, "-f", str(dockerfile), "-t", image]
    for key, value in build_args.items():
        command += ["--build-arg", f"{key}={value}"]
    for key, value in labels.items():
        command += ["--label", f"{key}={value}"]
    push = [builder, "push"]
    if insecure and builder != "docker":
        push.append("--tls-verify=false")
    return [[*command, str(context)], [*push, image]]


def build_and_push(
    builder: str, context: Path, dockerfile: Path, image: str, *, build_args: dict[str, str],
    labels: dict[str, str], insecure: bool, log: Callable[[str], None], runner: Runner | None = None,
) -> None:
    build, push = build_commands(builder, context, dockerfile, image, build_args=build_args, labels=labels,
                                 insecure=insecure)
    runner = runner or LocalRunner()
    _run(runner, build, f"building {image}", log)
    _run(runner, push, f"pushing {image}", log)


def _run(runner: Runner, command: list[str], what: str, log: Callable[[str], None]) -> None:
    """Run a builder command, handing every output line to `log` as it comes; on failure the message
    carries the last lines (the reason is rarely the very last one)."""
    process = runner.stream(command)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    for line in process.lines():
        line = line.rstrip()
        log(line)
        if line.strip():
            tail.append(line)
    code = process.wait()
    if code != 0:
        lines = "".join(f"\n    {line}" for line in tail)
        raise OperationFailed(f"{what} failed (exit {code}); its last lines:{lines}")
