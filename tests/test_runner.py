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


def test_a_container_starts_with_exactly_these_arguments_and_secrets_go_by_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.targets.container_host.engine import SECRET_LABEL, Engine

    def answer(argv: tuple[str, ...]) -> Completed | None:
        if argv[1:3] == ("secret", "ls"):
            return Completed(argv, 0, "", "")
        if argv[1] == "run":
            return Completed(argv, 0, "f00dcafe\n", "")
        return None

    runner = RecordingRunner(answer)
    engine = Engine("podman", "/usr/bin/podman", runner)
    monkeypatch.setenv("DB_PASSWORD", "s3cret-value")
    started = engine.run_detached("reg/app@sha256:ab", name="c1", labels={"conveyor.app": "app"},
                                  env={"APP_VERSION": "v1"}, secret_names=["DB_PASSWORD"], init=True, publish=4000)
    assert started == "f00dcafe"
    create, run = runner.calls[1], runner.calls[2]
    assert create[:5] == ("/usr/bin/podman", "secret", "create", "--label", f"{SECRET_LABEL}=c1")
    secret = create[5]
    assert create[6:] == ("-",)  # podman reads the value on its stdin: it is in no argv
    assert runner.inputs[1] == "s3cret-value"
    assert not any("s3cret-value" in argument for call in runner.calls for argument in call)
    assert run == ("/usr/bin/podman", "run", "-d", "--name", "c1", "--init", "--label", "conveyor.app=app",
                   "-p", "127.0.0.1:4000:4000", "-e", "APP_VERSION=v1",
                   "--secret", f"{secret},type=env,target=DB_PASSWORD", "reg/app@sha256:ab")
    docker = Engine("docker", "/usr/bin/docker", RecordingRunner())
    args = docker.run_args("img", name="c2", labels={}, env={}, secret_names=["TOKEN"], init=False, detach=False,
                           stdin=True, tty=True, command=["sh"])
    assert args == ["run", "--rm", "--name", "c2", "-i", "-t", "-e", "TOKEN", "img", "sh"]
