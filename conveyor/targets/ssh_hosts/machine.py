"""One fleet host as a Machine: the container-host algorithm runs there through one SSH connection.

Nothing of conveyor is installed on a host. Every file, lock and process call is an argument list that a
POSIX userland answers (sh, cat, mkdir, mktemp, mv, rm, flock, kill, df, ss, bash's /dev/tcp, setsid):
each script below is a fixed text and whatever varies goes in as its positional parameters ("$1"), which
the transport quotes with shlex. HAProxy's CLI and a container's health port are reached through sockets
the connection forwards, so the HTTP and CLI code is the single host's own.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from conveyor.errors import TargetError
from conveyor.runner import Completed
from conveyor.targets.container_host.engine import summarise
from conveyor.targets.ssh_hosts.transport import SSHRunner

if TYPE_CHECKING:
    import httpx

CALL_TIMEOUT = 60.0
MISSING = 3  # the exit code our read script gives for a file that does not exist
# A new container's port is picked from this range, away from the kernel's ephemeral ports (32768-60999),
# which outgoing connections on the host take.
PORTS = range(20000, 32000)
READ = 'cat -- "$1" && exit 0; test -e "$1" || exit 3; exit 1'
WRITE = ('umask 077; mkdir -p -- "${1%/*}" && t=$(mktemp -- "$1.XXXXXX") || exit 1; '
         'if cat >"$t" && chmod "$2" -- "$t" && mv -f -- "$t" "$1"; then exit 0; fi; rm -f -- "$t"; exit 1')
LOCK = 'mkdir -p -- "${1%/*}" && exec flock -w "$2" -- "$1" sh -c "echo held; exec cat >/dev/null"'
CONNECTS = 'exec 3<>"/dev/tcp/$1/$2"'
# HAProxy is in /usr/sbin, which a login that is not root's often lacks on its PATH.
WHICH = ('command -v "$1" && exit 0; '
         'for d in /usr/local/sbin /usr/sbin /sbin; do [ -x "$d/$1" ] && echo "$d/$1" && exit 0; done; exit 1')


class SSHMachine:
    """Implements conveyor.targets.container_host.machine.Machine on one host over `runner`."""

    shares_environment = False

    def __init__(self, runner: SSHRunner) -> None:
        self.runner = runner
        self.name = runner.address.text
        # remote socket (path, or host:port) -> the local one forwarded to it, and by which connection
        self._sockets: dict[str, tuple[str, tuple[int, int] | None]] = {}
        self._programs: dict[str, str | None] = {}
        self._forwards = 0

    def home(self) -> str:
        """The login's home directory on the host (also opens the connection)."""
        done = self._sh('printf %s "$HOME"')
        if not done.ok or not done.stdout.startswith("/"):
            raise TargetError(f"host {self.name}: cannot tell its home directory: {done.stderr.strip()}")
        return done.stdout

    def _sh(self, script: str, *args: str, input: str | None = None, timeout: float = CALL_TIMEOUT) -> Completed:
        return self.runner.run(["sh", "-c", script, "sh", *args], input=input, timeout=timeout)

    def _failed(self, what: str, done: Completed) -> TargetError:
        return TargetError(f"host {self.name}: {what}: {summarise(done.stderr or done.stdout)}")

    # -- files --------------------------------------------------------------------------------------

    def read_text(self, path: Path) -> str | None:
        done = self._sh(READ, str(path))
        if done.returncode == MISSING:
            return None
        if not done.ok:
            raise self._failed(f"cannot read {path}", done)
        return done.stdout

    def write_text(self, path: Path, text: str, *, private: bool = False) -> None:
        done = self._sh(WRITE, str(path), "600" if private else "644", input=text)
        if not done.ok:
            raise self._failed(f"cannot write {path}", done)

    def remove(self, path: Path) -> None:
        done = self.runner.run(["rm", "-rf", "--", str(path)], timeout=CALL_TIMEOUT)
        if not done.ok:
            raise self._failed(f"cannot remove {path}", done)

    @contextlib.contextmanager
    def private_dir(self) -> Iterator[Path]:
        done = self.runner.run(["mktemp", "-d"], timeout=CALL_TIMEOUT)  # 0700
        if not done.ok or not done.stdout.strip().startswith("/"):
            raise self._failed("cannot make a private directory", done)
        directory = Path(done.stdout.strip())
        try:
            yield directory
        finally:
            with contextlib.suppress(TargetError):
                self.remove(directory)

    @contextlib.contextmanager
    def locked(self, path: Path, timeout: float) -> Iterator[None]:
        """flock on the host, held by a command whose stdin stays open: when this process dies, however it
        dies, the pipe closes, the command ends and the lock goes with it."""
        holder = self.runner.open(["sh", "-c", LOCK, "sh", str(path), str(max(1, round(timeout)))])
        assert holder.stdin is not None and holder.stdout is not None and holder.stderr is not None
        try:
            if holder.stdout.readline().strip() != "held":
                code = holder.wait()
                stderr = holder.stderr.read()
                self.runner.raise_for_connection(code, stderr)
                if code == 1 and not stderr.strip():
                    raise TargetError(f"host {self.name}: another conveyor process held {path} for {timeout:g}s")
                raise TargetError(f"host {self.name}: cannot lock {path}: {stderr.strip() or f'exit {code}'}")
            yield
        finally:
            with contextlib.suppress(OSError):
                holder.stdin.close()
            try:
                holder.wait(timeout=30)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()

    # -- sockets ------------------------------------------------------------------------------------

    def unix_socket(self, path: Path) -> str:
        return self._forwarded(str(path))

    @contextlib.contextmanager
    def http(self, host: str, port: int) -> Iterator[httpx.Client]:
        import httpx

        remote = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        local = self._forwarded(remote)
        with httpx.Client(transport=httpx.HTTPTransport(uds=local), base_url=f"http://{remote}") as client:
            yield client

    def _forwarded(self, remote: str) -> str:
        """The local unix socket forwarded to `remote` (a unix socket path, or host:port, on the host); made
        on first use and kept for the operation (the connection's end takes every forward with it)."""
        known = self._sockets.get(remote)
        if known is not None and known[1] == self.runner.master_id():
            return known[0]
        # New, or forwarded by a connection that has ended since (a long-lived server's checks outlive
        # connections; the next command opened another): forward anew.
        self._forwards += 1
        local = self.runner.control_dir / f"f{self._forwards}.sock"
        self.runner.forward(local, remote)
        self._sockets[remote] = (str(local), self.runner.master_id())
        return str(local)

    def accepts(self, host: str, port: int) -> bool:
        return self.runner.run(["timeout", "5", "bash", "-c", CONNECTS, "bash", host, str(port)],
                               timeout=CALL_TIMEOUT).ok

    def _listening(self) -> set[int]:
        done = self.runner.run(["ss", "-Hltn"], timeout=CALL_TIMEOUT)
        if not done.ok:
            raise self._failed("cannot list listening ports (ss)", done)
        ports: set[int] = set()
        for line in done.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[3].rpartition(":")[2].isdigit():
                ports.add(int(fields[3].rpartition(":")[2]))
        return ports

    def port_free(self, bind: str, port: int) -> bool:
        return port not in self._listening()

    def free_port(self, avoid: set[int]) -> int:
        taken = self._listening() | avoid
        free = [port for port in PORTS if port not in taken]
        if not free:
            raise TargetError(f"host {self.name}: no free port for the new container")
        return random.choice(free)

    # -- processes ----------------------------------------------------------------------------------

    def reap(self, pid: int) -> int | None:
        return None  # a host's processes are never this process's children

    def signal(self, pid: int, name: str) -> None:
        self.runner.run(["kill", "-s", name, str(pid)], timeout=CALL_TIMEOUT)  # gone already: fine

    def which(self, program: str) -> str | None:
        if program not in self._programs:
            done = self._sh(WHICH, program)
            found = done.stdout.strip()
            self._programs[program] = found if done.ok and found.startswith("/") else None
        return self._programs[program]

    def free_mb(self, path: Path) -> int:
        done = self.runner.run(["df", "-Pk", "--", str(path)], timeout=CALL_TIMEOUT)
        lines = done.stdout.splitlines()
        fields = lines[-1].split() if done.ok and len(lines) >= 2 else []
        if len(fields) < 4 or not fields[3].isdigit():
            raise self._failed(f"cannot tell the free space under {path}", done)
        return int(fields[3]) // 1024

    def close(self) -> None:
        self._sockets.clear()
        self.runner.close()
