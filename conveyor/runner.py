"""The Runner: the one way conveyor's adapters run another program — an argument list in, a result out.

Every container-engine, builder and HAProxy command goes through a Runner. `LocalRunner` runs it on this
machine; an SSH runner (for fleets of hosts) will run the same argument lists on another one; and
`RecordingRunner` is the fake beside it, for unit tests that assert the exact argv without running anything.
Outside failures are mapped once, here: a program that is not installed is InfrastructureMissing, a
program that outlives its timeout is CommandTimedOut.

Never a shell: argv is passed to the program as it is, so nothing a user typed is ever interpreted.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator, Sequence
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
    def run(self, argv: Sequence[str], *, timeout: float | None = None, input: str | None = None) -> Completed:
        """Run argv to completion, capturing its output (text)."""

    def stream(self, argv: Sequence[str]) -> Stream:
        """Start argv with its output (stdout and stderr together) readable line by line as it comes."""

    def attached(self, argv: Sequence[str]) -> int:
        """Run argv on the caller's own terminal (stdin, stdout and stderr inherited); its exit code."""


class LocalRunner:
    """Runs programs on this machine."""

    def run(self, argv: Sequence[str], *, timeout: float | None = None, input: str | None = None) -> Completed:
        command = list(argv)
        try:
            done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout,
                                  input=input, stdin=None if input is not None else subprocess.DEVNULL)
        except FileNotFoundError:
            raise InfrastructureMissing(f"{command[0]} is not installed (not found on PATH)") from None
        except subprocess.TimeoutExpired:
            raise CommandTimedOut(command, timeout or 0) from None
        return Completed(tuple(command), done.returncode, done.stdout or "", done.stderr or "")

    def stream(self, argv: Sequence[str]) -> Stream:
        command = list(argv)
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, errors="replace")
        except FileNotFoundError:
            raise InfrastructureMissing(f"{command[0]} is not installed (not found on PATH)") from None
        return _LocalStream(command, process)

    def attached(self, argv: Sequence[str]) -> int:
        command = list(argv)
        try:
            return subprocess.run(command).returncode
        except FileNotFoundError:
            raise InfrastructureMissing(f"{command[0]} is not installed (not found on PATH)") from None


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

    def _reply(self, argv: Sequence[str]) -> Completed:
        key = tuple(argv)
        self.calls.append(key)
        return self.answer(key) or Completed(key, 0, "", "")

    def run(self, argv: Sequence[str], *, timeout: float | None = None, input: str | None = None) -> Completed:
        return self._reply(argv)

    def stream(self, argv: Sequence[str]) -> Stream:
        return _RecordedStream(self._reply(argv))

    def attached(self, argv: Sequence[str]) -> int:
        return self._reply(argv).returncode


@dataclass
class _RecordedStream:
    done: Completed

    def lines(self) -> Iterator[str]:
        yield from self.done.stdout.splitlines()

    def wait(self, timeout: float | None = None) -> int:
        return self.done.returncode

    def kill(self) -> None:
        return None
