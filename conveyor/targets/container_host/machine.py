"""The machine a container host runs on: where its commands run, its files live and its sockets answer.

The container-host algorithm (engine calls, HAProxy, health checks, deploy records) is written once,
against this seam. `LocalMachine` is this machine. `SSHMachine` (targets/ssh_hosts/machine.py) is a fleet
host reached over one SSH connection, so every host of a fleet runs exactly the single-host algorithm with
nothing installed there but the engine, HAProxy and a POSIX userland.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from conveyor.errors import TargetError
from conveyor.runner import LocalRunner, Runner

if TYPE_CHECKING:  # httpx is imported where a request is made, not to start the CLI
    import httpx


class Machine(Protocol):
    name: str
    runner: Runner
    # Whether a program started here sees this process's environment: docker's `-e NAME` reads a secret's
    # value from it, which a remote host does not have.
    shares_environment: bool

    def read_text(self, path: Path) -> str | None:
        """The file's text, or None when it does not exist; TargetError when it cannot be read."""

    def write_text(self, path: Path, text: str, *, private: bool = False) -> None:
        """Replace `path` in one rename (parents made as needed): a reader sees the old file or the new one,
        never half of one. `private`: only this user may read it."""

    def remove(self, path: Path) -> None:
        """The file or directory (and what it holds) is gone; a missing one is fine."""

    def private_dir(self) -> contextlib.AbstractContextManager[Path]:
        """A fresh directory only this user can enter, removed with what it holds at the end of the block."""

    def locked(self, path: Path, timeout: float) -> contextlib.AbstractContextManager[None]:
        """An exclusive lock on `path` (made as needed) for the block, across processes; TargetError after
        `timeout` seconds of waiting. It is released when its holder dies, however it dies."""

    def unix_socket(self, path: Path) -> str:
        """A path this process connects to in order to reach the machine's unix socket `path`."""

    def http(self, host: str, port: int) -> contextlib.AbstractContextManager[httpx.Client]:
        """An HTTP client whose requests (to paths) reach host:port as the machine itself would dial it."""

    def accepts(self, host: str, port: int) -> bool:
        """Whether a TCP connection from the machine to host:port is accepted now."""

    def port_free(self, bind: str, port: int) -> bool:
        """Whether a server on the machine could listen on bind:port now."""

    def free_port(self, avoid: set[int]) -> int:
        """A loopback port nothing on the machine listens on (for a new container)."""

    def reap(self, pid: int) -> int | None:
        """The exit code of our own child `pid` once it has exited (collecting it); None otherwise."""

    def signal(self, pid: int, name: str) -> None:
        """Send signal `name` (TERM, KILL) to `pid`; a process already gone is fine."""

    def which(self, program: str) -> str | None:
        """The program's path on the machine, or None when it is not installed."""

    def free_mb(self, path: Path) -> int:
        """Free space, in MB, of the file system holding `path`."""

    def close(self) -> None:
        """Let go of whatever the machine held open for this operation."""


class LocalMachine:
    """This machine."""

    name = "localhost"
    shares_environment = True

    def __init__(self, runner: Runner | None = None) -> None:
        self.runner: Runner = runner or LocalRunner()

    def read_text(self, path: Path) -> str | None:
        try:
            return Path(path).read_text(errors="replace")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TargetError(f"cannot read {path}: {exc}") from exc

    def write_text(self, path: Path, text: str, *, private: bool = False) -> None:
        # The temporary name is unique per writer, so two writers never write into each other's file.
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(text)
            if not private:
                os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def remove(self, path: Path) -> None:
        if Path(path).is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            Path(path).unlink(missing_ok=True)

    @contextlib.contextmanager
    def private_dir(self) -> Iterator[Path]:
        directory = tempfile.mkdtemp(prefix="conveyor-")
        try:
            yield Path(directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    @contextlib.contextmanager
    def locked(self, path: Path, timeout: float) -> Iterator[None]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TargetError(f"another conveyor process held {path} for {timeout:g}s") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(descriptor)  # closing releases the lock

    def unix_socket(self, path: Path) -> str:
        return str(path)

    @contextlib.contextmanager
    def http(self, host: str, port: int) -> Iterator[httpx.Client]:
        import httpx

        with httpx.Client(base_url=f"http://{_bracketed(host)}:{port}") as client:
            yield client

    def accepts(self, host: str, port: int) -> bool:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            return False

    def port_free(self, bind: str, port: int) -> bool:
        # SO_REUSEADDR, as servers set it, ignores connections in TIME_WAIT.
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((bind.strip("[]"), port))
            except OSError:
                return False
        return True

    def free_port(self, avoid: set[int]) -> int:
        for _ in range(20):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in avoid:
                return port
        raise TargetError("could not find a free local port for the new container")

    def reap(self, pid: int) -> int | None:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None  # not our child (an HAProxy another process started): nothing to collect
        return os.waitstatus_to_exitcode(status) if done else None

    def signal(self, pid: int, name: str) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, getattr(signal, f"SIG{name}"))

    def which(self, program: str) -> str | None:
        return shutil.which(program)

    def free_mb(self, path: Path) -> int:
        return shutil.disk_usage(path if os.path.exists(path) else "/").free // 2**20

    def close(self) -> None:
        """Nothing is held open: every call is its own process or socket."""


def alive(machine: Machine, pid: int) -> bool:
    """Whether process `pid` runs on the machine. A zombie (exited, not yet collected) serves nothing."""
    stat = machine.read_text(Path(f"/proc/{pid}/stat"))
    if stat is None:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return not fields or fields[0] != "Z"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
