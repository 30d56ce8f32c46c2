"""The Runner: the one way conveyor's adapters run another program — an argument list in, a result out.

Every container-engine, builder and HAProxy command goes through a Runner. `LocalRunner` runs it on this
machine; an SSH runner (for fleets of hosts) will run the same argument lists on another one; and
`RecordingRunner` is the fake beside it, for unit tests that assert the exact argv without running anything.
Outside failures are mapped once, here: a program that is not installed is InfrastructureMissing, a
program that outlives its timeout is CommandTimedOut.

Never a shell: argv is passed to the program as it is, so nothing a user typed is ever interpreted.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Protocol

from conveyor.errors import InfrastructureMissing, OperationFailed


class CommandTimedOut(OperationFailed):
    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        super().__init__(f"{' '.join(argv[:3])} … did not finish within {timeout:g}s")
        self.argv = tuple(argv)
        self.timeout = timeout


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Stream(Protocol):
    """A running program whose output is read line by line (stderr merged into stdout)."""

    def lines(self) -> Iterator[str]: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class Runner(Protocol):
    def run(self, argv: Sequence[str], *, timeout: float | None = None, input: str | None = None,
            merge_stderr: bool = False) -> Completed:
        """Run argv to completion, capturing its output (text); merge_stderr interleaves stderr into stdout
        as the program wrote them (a container's logs)."""

    def stream(self, argv: Sequence[str]) -> Stream:
        """Start argv with its output (stdout and stderr together) readable line by line as it comes."""

    def attached(self, argv: Sequence[str], *, tty: bool = False) -> int:
        """Run argv on the caller's own terminal (stdin, stdout and stderr inherited); its exit code. `tty`:
        the program wants a terminal (a runner reaching another machine must allocate one there)."""

    def detach(self, argv: Sequence[str], *, env: Mapping[str, str], log: str) -> int:
        """Start a daemon that outlives conveyor (its own session, stdin from /dev/null, output appended to
        `log`, only `env` as its environment); returns its pid."""


def _missing(command: list[str], exc: OSError) -> InfrastructureMissing:
    if isinstance(exc, FileNotFoundError):
        return InfrastructureMissing(f"{command[0]} is not installed (not found on PATH)")
    return InfrastructureMissing(f"cannot run {command[0]}: {exc}")


class LocalRunner:
    """Runs programs on this machine."""

    def run(self, argv: Sequence[str], *, timeout: float | None = None, input: str | None = None,
            merge_stderr: bool = False) -> Completed:
        command = list(argv)
        try:
            done = subprocess.run(command, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, text=True,
                                  errors="replace", timeout=timeout, input=input,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except OSError as exc:
            raise _missing(command, exc) from None
        except subprocess.TimeoutExpired:
            raise CommandTimedOut(command, timeout or 0) from None
        return Completed(tuple(command), done.returncode, done.stdout or "", done.stderr or "")

    def stream(self, argv: Sequence[str]) -> Stream:
        command = list(argv)
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, errors="replace")
        except OSError as exc:
            raise _missing(command, exc) from None
        return _LocalStream(command, process)

    def attached(self, argv: Sequence[str], *, tty: bool = False) -> int:
        command = list(argv)
        try:
            return subprocess.run(command).returncode
        except OSError as exc:
            raise _missing(command, exc) from None

    def detach(self, argv: Sequence[str], *, env: Mapping[str, str], log: str) -> int:
        command = list(argv)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # posix_spawn rather than Popen: the daemon is meant to outlive this process, and a Popen object
            # would warn (and expect a wait) for a child it never sees end. setsid detaches it from our
            # terminal and process group, so ^C on a deploy does not take it down.
            return os.posix_spawn(
                command[0], command, dict(env), setsid=True,
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                              (os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, out, 2)],
            )
        except OSError as exc:
            raise _missing(command, exc) from None
        finally:
            os.close(out)


class _LocalStream:
    def __init__(self, argv: list[str], process: subprocess.Popen[str]) -> None:
        self._argv = argv
        self._process = process

    def lines(self) -> Iterator[str]:
        out: IO[str] | None = self._process.stdout
        if out is None:
            return
        for line in out:
            yield line.rstrip("\n")
        out.close()

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CommandTimedOut(self._argv, timeout or 0) from None

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()


Answer = Callable[[tuple[str, ...]], Completed | None]


@dataclass
class RecordingRunner:
    """The fake: records every argv and answers from `answer` (argv → Completed, or None for a plain success
    with no output). Streamed programs answer the same way, their stdout split into lines."""

    answer: Answer = field(default=lambda argv: None)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    inputs: list[str | None] = field(default_factory=list)  # what each call got on stdin

    def _reply(self, argv: Sequence[str], input: str | None = None) -> Completed:
        key = tuple(argv)
        self.calls.append(key)
        self.inputs.append(input)
        return self.answer(key) or Completed(key, 0, "", "")

    def run(self, argv: Sequence[str], *, timeout: float | None = None, input: str | None = None,
            merge_stderr: bool = False) -> Completed:
        return self._reply(argv, input)

    def stream(self, argv: Sequence[str]) -> Stream:
        return _RecordedStream(self._reply(argv))

    def attached(self, argv: Sequence[str], *, tty: bool = False) -> int:
        return self._reply(argv).returncode

    def detach(self, argv: Sequence[str], *, env: Mapping[str, str], log: str) -> int:
        self._reply(argv)
        return 0


@dataclass
class _RecordedStream:
    done: Completed

    def lines(self) -> Iterator[str]:
        yield from self.done.stdout.splitlines()

    def wait(self, timeout: float | None = None) -> int:
        return self.done.returncode

    def kill(self) -> None:
        return None
