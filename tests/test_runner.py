"""The Runner seam: commands are argument lists built apart from running them. The recording fake asserts the
exact argv without running anything; the local runner is checked against real programs."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.builder.builders import build_and_push
from conveyor.errors import InfrastructureMissing, OperationFailed
from conveyor.runner import CommandTimedOut, Completed, LocalRunner, RecordingRunner


def test_a_build_is_a_build_then_a_push_with_exactly_these_arguments(tmp_path: Path) -> None:
    runner = RecordingRunner()
    lines: list[str] = []
    build_and_push("buildah", tmp_path, tmp_path / "Dockerfile", "reg.example/app:abc", build_args={"V": "1"},
                   labels={"org.opencontainers.image.revision": "abc"}, insecure=True, log=lines.append,
                   runner=runner)
    assert runner.calls == [
        ("buildah", "bud", "-f", str(tmp_path / "Dockerfile"), "-t", "reg.example/app:abc", "--build-arg", "V=1",
         "--label", "org.opencontainers.image.revision=abc", str(tmp_path)),
        ("buildah", "push", "--tls-verify=false", "reg.example/app:abc"),
    ]


def test_a_failed_build_stops_before_the_push_and_repeats_its_last_lines(tmp_path: Path) -> None:
    def answer(argv: tuple[str, ...]) -> Completed | None:
        if argv[1] == "build":
            return Completed(argv, 125, "STEP 1/2: FROM scratch\nError: no such file: www\n", "")
        return None

    runner = RecordingRunner(answer)
    shown: list[str] = []
    with pytest.raises(OperationFailed, match=r"building app:1 failed \(exit 125\)") as failure:
        build_and_push("docker", tmp_path, tmp_path / "Dockerfile", "app:1", build_args={}, labels={},
                       insecure=True, log=shown.append, runner=runner)
    assert "Error: no such file: www" in failure.value.message
    assert shown == ["STEP 1/2: FROM scratch", "Error: no such file: www"]
    assert [call[1] for call in runner.calls] == ["build"]  # docker never gets --tls-verify, and no push ran


def test_the_local_runner_runs_argv_as_given_and_maps_outside_failures() -> None:
    runner = LocalRunner()
    done = runner.run(["printf", "%s|", "a b", "$HOME", ";rm -rf /"])  # no shell: nothing is interpreted
    assert done.ok and done.stdout == "a b|$HOME|;rm -rf /|"
    streamed = runner.stream(["sh", "-c", "echo one; echo two >&2; exit 3", "--"])
    assert list(streamed.lines()) == ["one", "two"] and streamed.wait() == 3
    with pytest.raises(InfrastructureMissing, match="no-such-program-here is not installed"):
        runner.run(["no-such-program-here"])
    with pytest.raises(CommandTimedOut):
        runner.run(["sleep", "60"], timeout=0.5)  # sleep cannot end before its 60 s
