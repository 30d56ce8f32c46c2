"""The SSH transport: the Runner seam over OpenSSH, one multiplexed connection per host per operation.

Why OpenSSH (the `ssh` client) rather than asyncssh or paramiko: it is already on every machine that
deploys to hosts, honours the operator's own ~/.ssh/config (ProxyJump, agents, certificates, hardware
keys), verifies host keys against a known_hosts file exactly as a person's `ssh` would, and its
ControlMaster multiplexing makes every command after the first a new channel on the same connection
(milliseconds, no new handshake). A library would be a new runtime dependency with its own asyncio loop
and its own idea of ssh config.

Host keys are never trusted on first use: StrictHostKeyChecking=yes against the environment's
known_hosts file only (not ~/.ssh/known_hosts), so an unknown or changed key refuses the connection.
A silent host is timed out by ConnectTimeout (connecting) and ServerAliveInterval (an open connection).

The remote side receives one command line, which OpenSSH hands to the host's shell: every argument is
quoted with shlex.join, so the argv arrives as it was, whatever it holds.

Sockets on the host (HAProxy's CLI, a container's port for its health check) are reached through the same
connection: `ssh -O forward` asks the running ControlMaster to forward a local unix socket to them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from conveyor.errors import BadInput, InfrastructureMissing
from conveyor.runner import Completed, LocalRunner, Stream, _LocalStream

SSH_FAILED = 255  # ssh's own exit code when the connection (not the remote command) failed
ALIVE_INTERVAL = 5  # seconds between keep-alive probes on an open connection; 3 unanswered ones end it
KEY_REFUSED = re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|"
                         r"No \S+ host key is known", re.IGNORECASE)


class HostKeyRefused(BadInput):
    """A host's key is not the one its known_hosts file names: nothing is sent to it."""


class HostUnreachable(InfrastructureMissing):
    """A host did not answer over SSH (down, refused, timed out, authentication failed)."""


@dataclass(frozen=True)
class HostAddress:
    """One entry of `hosts:`: user@host:port (user and port optional)."""

    text: str
    host: str
    port: int = 22
    user: str | None = None

    @classmethod
    def parse(cls, text: str) -> HostAddress:
        user, _, rest = text.rpartition("@") if "@" in text else ("", "", text)
        host, port = rest, 22
        if re.fullmatch(r".+:[0-9]+", rest) and not rest.endswith("]"):
            host, _, number = rest.rpartition(":")
            port = int(number)
        return cls(text=text, host=host.strip("[]"), port=port, user=user or None)


class SSHRunner:
    """Implements conveyor.runner.Runner on one host. The first command opens the connection (the
    ControlMaster); every later one reuses it until close()."""

    def __init__(self, address: HostAddress, known_hosts: Path, *, identity: Path | None = None,
                 connect_timeout: float = 10.0) -> None:
        self.address = address
        self.known_hosts = known_hosts
        self.identity = identity
        self.connect_timeout = connect_timeout
        # A short path: a unix socket path holds at most 107 bytes, and %C alone is 40.
        self._control_dir = Path(tempfile.mkdtemp(prefix="cv-ssh-", dir="/tmp"))
        self._local = LocalRunner()
        self._connected = False

    # -- the ssh command line -------------------------------------------------------------------------

    def options(self) -> list[str]:
        options = {
            "BatchMode": "yes",  # never prompt for a password or a key's passphrase: fail instead
            "StrictHostKeyChecking": "yes",
            "UserKnownHostsFile": str(self.known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            "ControlMaster": "auto",
            "ControlPath": str(self._control_dir / "master"),  # the directory is this runner's alone
            "ControlPersist": "300",
            "ConnectTimeout": f"{max(1, round(self.connect_timeout))}",
            "ServerAliveInterval": str(ALIVE_INTERVAL),
            "ServerAliveCountMax": "3",
            "StreamLocalBindUnlink": "yes",  # a forwarded socket's path may be reused within the operation
            "LogLevel": "ERROR",
        }
        args = [f"-o{key}={value}" for key, value in options.items()]
        if self.identity is not None:
            args += ["-i", str(self.identity), "-oIdentitiesOnly=yes"]
        if self.address.user:
            args += ["-l", self.address.user]
        return [*args, "-p", str(self.address.port)]

    def command(self, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        """The local argv that runs `argv` on the host."""
        return ["ssh", *(["-tt"] if tty else ["-T"]), *self.options(), "--", self.address.host, shlex.join(argv)]

    # -- Runner ---------------------------------------------------------------------------------------

    @property
    def control_dir(self) -> Path:
        """A directory only this process uses (0700), for the connection's socket and forwarded ones."""
        return self._control_dir

    def master_id(self) -> tuple[int, int] | None:
        """Which ControlMaster serves this runner now (its socket's inode and birth: a file system may give
        a new socket the inode of one just removed), None when none does. A master that ends takes its
        forwards with it, and the next command starts another."""
        try:
            found = (self._control_dir / "master").stat()
        except OSError:
            return None
        return found.st_ino, found.st_mtime_ns

    def run(self, argv: Sequence[str], *, timeout: float | None = None, input: str | None = None,
            merge_stderr: bool = False) -> Completed:
        done = self._local.run(self.command(argv), timeout=timeout, input=input, merge_stderr=merge_stderr)
        self.raise_for_connection(done.returncode, done.stderr if not merge_stderr else done.stdout)
        self._connected = True
        return Completed(tuple(argv), done.returncode, done.stdout, done.stderr)

    def open(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        """argv on the host with pipes for stdin, stdout and stderr, for a caller that talks to it while it
        runs (a lock held for as long as its stdin stays open)."""
        try:
            return subprocess.Popen(self.command(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, errors="replace")
        except OSError as exc:
            raise InfrastructureMissing(f"cannot run ssh: {exc}") from None

    def stream(self, argv: Sequence[str], *, input: str | None = None) -> Stream:
        """Start argv on the host, its stdout and stderr merged; `input` is written to its stdin (kept off
        every command line: it may hold secret values)."""
        command = self.command(argv)
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, errors="replace")
        except OSError as exc:
            raise InfrastructureMissing(f"cannot run ssh: {exc}") from None
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            process.stdin.write(input or "")
            process.stdin.close()
        return _LocalStream(command, process)

    def attached(self, argv: Sequence[str], *, tty: bool = False) -> int:
        code = self._local.attached(self.command(argv, tty=tty))
        self.raise_for_connection(code, "")
        return code

    def detach(self, argv: Sequence[str], *, env: Mapping[str, str], log: str) -> int:
        """Start a daemon on the host in its own session (setsid: the connection's end does not hang it up),
        with only `env`, stdin from /dev/null and its output appended to `log`; returns its pid there."""
        # A background job of a non-interactive shell leads no process group, so setsid(1) does not fork:
        # $! is the daemon's own pid once env and setsid have exec'd into it.
        script = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
        variables = [f"{key}={value}" for key, value in env.items()]
        done = self.run(["sh", "-c", script, "sh", log, "env", "-i", *variables, "setsid", *argv], timeout=30)
        pid = done.stdout.strip()
        if done.returncode != 0 or not pid.isdigit():
            raise InfrastructureMissing(f"host {self.address.text}: could not start {argv[0]}: "
                                        f"{done.stderr.strip() or done.stdout.strip() or 'no answer'}")
        return int(pid)

    # -- forwarding -----------------------------------------------------------------------------------

    def forward(self, local: Path, remote: str) -> None:
        """Connections to the unix socket `local` reach `remote` (a unix socket path, or host:port) as the
        host dials it, through the open connection."""
        self._control("forward", f"{local}:{remote}")

    def _control(self, operation: str, spec: str) -> None:
        command = ["ssh", *self.options(), "-O", operation, "-L", spec, "--", self.address.host]
        done = self._local.run(command, timeout=30) if self._connected else None
        if done is None or done.returncode != 0:
            # No ControlMaster yet, or it ended (the host restarted, a long-lived server's connection went
            # idle): a command opens a new one, then the request goes to it.
            self.run(["true"], timeout=max(30.0, self.connect_timeout * 2))
            done = self._local.run(command, timeout=30)
        if done.returncode != 0:
            raise HostUnreachable(f"host {self.address.text}: ssh could not {operation} a socket: "
                                  f"{done.stderr.strip() or 'no answer'}")

    # -- connection -----------------------------------------------------------------------------------

    def raise_for_connection(self, code: int, stderr: str) -> None:
        """ssh's own failures, named once here: a refused host key is bad input (exit 2), anything else
        about the connection is an unreachable host."""
        if code != SSH_FAILED:
            return
        last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "no answer")
        if KEY_REFUSED.search(stderr):
            raise HostKeyRefused(f"host {self.address.text}: its host key is not the one {self.known_hosts} "
                                 "names (unknown or changed); refusing to connect")
        raise HostUnreachable(f"host {self.address.text} does not answer over ssh: {last}")

    def close(self) -> None:
        """End the shared connection (if one was opened) and forget its socket."""
        if any(self._control_dir.iterdir()) if self._control_dir.exists() else False:
            with contextlib.suppress(Exception):
                self._local.run(["ssh", *self.options(), "-O", "exit", "--", self.address.host], timeout=10)
        shutil.rmtree(self._control_dir, ignore_errors=True)


def identity_file(variable: str | None, directory: Path) -> Path | None:
    """The private key held by env var `variable`, as a file only this user can read (ssh wants a file);
    None: ssh's own identities and agent."""
    if variable is None:
        return None
    key = os.environ.get(variable)
    if not key:
        raise BadInput(f"{variable} (target.identity_env) is not set in the environment: it must hold the "
                       "private ssh key")
    path = directory / "identity"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(key if key.endswith("\n") else key + "\n")
    return path
