"""Real hosts for the ssh-hosts target, on this machine: one network namespace per host, each with its own
sshd (its own host key and authorized_keys), its own podman settings and storage, and its own HAProxy (which
conveyor starts over SSH under the host's own home directory).

Layout, for host N (1-based): namespace `cvhN`, a veth pair `cvvN` (root side, 198.18.N.1/24) and `eth0`
(inside, 198.18.N.2/24). sshd listens on 198.18.N.2:22. The namespaces share the filesystem; the key's
authorized_keys options give each host its own environment (HOME, CONTAINERS_CONF, …), as a real host's login
environment would. A host's PATH is sshd's own, with no Python environment on it: nothing of conveyor is
installed on a host.

The test registry listens on 127.0.0.1 in the root namespace; inside a namespace 127.0.0.1 is the host's
own loopback, so two relays (tests/relay.py) carry 127.0.0.1:REGISTRY_PORT inside each namespace to the
registry: hosts reach it under the same address the image references name.

Every container on host N mounts the host's `hold` directory at /hold: tests steer one host's app through
it (a fifo the health check blocks on, a file that makes the app exit at start), never with sleeps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RELAY = Path(__file__).with_name("relay.py")
PREFIX = "cvh"
ROOT_PREFIX = "cvf-"  # the fleet's directory in the temp dir


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


def wait_until_listening(host: str, port: int, timeout: float = 15.0) -> None:
    """Set-up only: a freshly started daemon accepts connections (bounded; the test itself never waits)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex((host, port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
        time.sleep(0.05)


def kill_namespace(name: str) -> None:
    """Every process in network namespace `name` (sshd, the agent, HAProxy, conmon, the containers), then
    the namespace itself: a host that dies at once."""
    pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@dataclass
class FleetHost:
    index: int
    root: Path
    registry_port: int
    client_public_key: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return f"{PREFIX}{self.index}"

    @property
    def address(self) -> str:
        return f"198.18.{self.index}.2"

    @property
    def gateway(self) -> str:
        return f"198.18.{self.index}.1"

    @property
    def ssh(self) -> str:
        return f"root@{self.address}"

    @property
    def hold(self) -> Path:
        return self.root / "hold"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    def engine_env(self) -> dict[str, str]:
        from devstack import engine_environment

        values = engine_environment(self.root / "engine", [f"127.0.0.1:{self.registry_port}"])
        conf = Path(values["CONTAINERS_CONF"])
        conf.write_text(conf.read_text().replace(
            "[containers]\n", f'[containers]\nvolumes = ["{self.hold}:/hold"]\n', 1))
        return values

    # -- lifecycle ------------------------------------------------------------------------------------

    def create(self) -> None:
        self.remove_network()
        self.root.mkdir(parents=True, exist_ok=True)
        self.hold.mkdir(exist_ok=True)
        if not self.host_key.exists():
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key))
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", f"cvv{self.index}", "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", f"cvv{self.index}")
        sh("ip", "link", "set", f"cvv{self.index}", "up")
        sh("ip", "-n", self.netns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        sh("ip", "-n", self.netns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        self.start()

    def start(self) -> None:
        """sshd and the registry relays (again, after kill())."""
        self.home.mkdir(parents=True, exist_ok=True)
        environment = {**self.engine_env(), "HOME": str(self.home)}
        options = ",".join(f'environment="{key}={value}"' for key, value in environment.items())
        (self.root / "authorized_keys").write_text(f"{options} {self.client_public_key}")
        config = self.root / "sshd_config"
        config.write_text(
            f"ListenAddress {self.address}:22\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PermitUserEnvironment yes\nPidFile {self.root / 'sshd.pid'}\nMaxSessions 100\nMaxStartups 100\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        log = open(self.root / "sshd.log", "ab")  # noqa: SIM115 - lives as long as the process
        # nsenter enters the network namespace only: `ip netns exec` also remounts /sys for it, which hides
        # the cgroup mounts runc needs to start a container.
        in_ns = ["nsenter", f"--net=/run/netns/{self.netns}", "--"]
        self.processes = [
            subprocess.Popen([*in_ns, "/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=log, stderr=log),
            subprocess.Popen([sys.executable, str(RELAY), self.gateway, str(self.registry_port), "127.0.0.1",
                              str(self.registry_port)], stdout=subprocess.DEVNULL),
            subprocess.Popen([*in_ns, sys.executable, str(RELAY), "127.0.0.1", str(self.registry_port),
                              self.gateway, str(self.registry_port)], stdout=subprocess.DEVNULL),
        ]
        wait_until_listening(self.address, 22)
        wait_until_listening(self.gateway, self.registry_port)

    def relay(self, port: int) -> None:
        """Carry 127.0.0.1:port inside the namespace to this machine's 127.0.0.1:port (another registry),
        until the host is reset or killed."""
        in_ns = ["nsenter", f"--net=/run/netns/{self.netns}", "--"]
        self.processes += [
            subprocess.Popen([sys.executable, str(RELAY), self.gateway, str(port), "127.0.0.1", str(port)],
                             stdout=subprocess.DEVNULL),
            subprocess.Popen([*in_ns, sys.executable, str(RELAY), "127.0.0.1", str(port), self.gateway, str(port)],
                             stdout=subprocess.DEVNULL),
        ]
        wait_until_listening(self.gateway, port)

    def kill(self) -> None:
        """The host dies: every process in its namespace, and its relays, at once."""
        kill_namespace(self.netns)
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
        self.processes = []

    def reset(self) -> None:
        """Between tests: no container, no HAProxy, an empty hold directory."""
        self.remove_containers()
        self.kill()
        shutil.rmtree(self.home, ignore_errors=True)
        shutil.rmtree(self.hold, ignore_errors=True)
        self.hold.mkdir()
        self.start()

    def remove_containers(self) -> None:
        """Every container of this host's podman, with the shm mounts podman made for them."""
        env = {**os.environ, **self.engine_env()}
        subprocess.run(["podman", "rm", "-f", "-t", "0", "--all"], capture_output=True, env=env)

    def remove_network(self) -> None:
        kill_namespace(self.netns)
        sh("ip", "netns", "del", self.netns, check=False)
        sh("ip", "link", "del", f"cvv{self.index}", check=False)

    def containers(self, *args: str) -> list[str]:
        env = {**os.environ, **self.engine_env()}
        done = subprocess.run(["podman", "ps", "-q", "--filter", "label=conveyor.app=hello", *args],
                              capture_output=True, text=True, env=env)
        return done.stdout.split()


@dataclass
class Fleet:
    root: Path
    hosts: list[FleetHost]
    client_key: Path

    @classmethod
    def create(cls, count: int, registry_port: int) -> Fleet:
        root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
        key = root / "client_key"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "conveyor-tests", "-f", str(key))
        public = key.with_suffix(".pub").read_text()
        hosts = [FleetHost(i, root / f"h{i}", registry_port, public) for i in range(1, count + 1)]
        fleet = cls(root, hosts, key)
        try:
            for host in hosts:
                host.create()
        except BaseException:
            fleet.destroy()
            raise
        fleet.write_known_hosts(fleet.known_hosts)
        return fleet

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def write_known_hosts(self, path: Path, hosts: list[FleetHost] | None = None) -> Path:
        lines = []
        for host in self.hosts if hosts is None else hosts:
            kind, key = host.host_key.with_suffix(".pub").read_text().split()[:2]
            lines.append(f"{host.address} {kind} {key}\n")
        path.write_text("".join(lines))
        return path

    def reset(self) -> None:
        for host in self.hosts:
            host.reset()

    def destroy(self) -> None:
        for host in self.hosts:
            host.remove_containers()
            host.kill()
            host.remove_network()
        unmount_under(str(self.root))
        shutil.rmtree(self.root, ignore_errors=True)


def unmount_under(prefix: str) -> None:
    """Mounts left under `prefix` (a killed container's shm, which podman unmounts only on removal)."""
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, reverse=True):
        sh("umount", "-l", point, check=False)


def cleanup_leftovers(limit: int = 16) -> None:
    """Namespaces, links, mounts and host directories an aborted earlier run left behind."""
    unmount_under(f"{tempfile.gettempdir()}/{ROOT_PREFIX}")
    for leftover in Path(tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for index in range(1, limit + 1):
        kill_namespace(f"{PREFIX}{index}")
        sh("ip", "netns", "del", f"{PREFIX}{index}", check=False)
        sh("ip", "link", "del", f"cvv{index}", check=False)
