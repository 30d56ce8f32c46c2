"""Local stand-ins for the infrastructure a team already has: an OCI registry, PostgreSQL, and the
container-engine settings this sandbox needs.

This is demo and test set-up, not product code: conveyor itself never writes engine settings. The
sandbox-only podman settings (ulimits, runc, cgroupfs, host networking, vfs storage, a plain-HTTP
registry) are passed the documented way, through the engine's own config files named by
CONTAINERS_CONF, CONTAINERS_STORAGE_CONF and CONTAINERS_REGISTRIES_CONF.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Registry:
    """A Distribution registry (Debian's docker-registry) on a loopback port with storage in a temp dir."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Registry:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "registry.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        log = open(self.root / "registry.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=log, stderr=log, start_new_session=True
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def engine_environment(root: Path, registry_hosts: list[str]) -> dict[str, str]:
    """Write the podman/buildah config files this sandbox needs and return the env vars naming them."""
    root.mkdir(parents=True, exist_ok=True)
    containers_conf = root / "containers.conf"
    containers_conf.write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
        'netns = "host"\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'tmp_dir = "{root / "tmp"}"\n'
    )
    storage_conf = root / "storage.conf"
    storage_conf.write_text(
        f'[storage]\ndriver = "vfs"\nrunroot = "{root / "run"}"\ngraphroot = "{root / "graph"}"\n'
    )
    registries_conf = root / "registries.conf"
    registries_conf.write_text(
        "".join(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n' for host in registry_hosts)
    )
    return {
        "CONTAINERS_CONF": str(containers_conf),
        "CONTAINERS_STORAGE_CONF": str(storage_conf),
        "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
        "BUILDAH_ISOLATION": "chroot",
    }


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster on a loopback port (trust auth, fsync off)."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def bin_dir() -> Path | None:
        base = Path("/usr/lib/postgresql")
        versions = sorted(base.iterdir(), key=lambda p: int(p.name)) if base.is_dir() else []
        return versions[-1] / "bin" if versions else None

    def start(self) -> Postgres:
        bin_dir = self.bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres")
        data = self.root / "data"
        as_postgres = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
            check=True, capture_output=True,
        )
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(self.root / "pg.log"),
             "-o", options, "start"],
            check=True, capture_output=True,
        )
        return self

    def stop(self) -> None:
        bin_dir = self.bin_dir()
        if bin_dir and (self.root / "data").exists():
            subprocess.run(
                ["runuser", "-u", "postgres", "--", str(bin_dir / "pg_ctl"), "-D", str(self.root / "data"),
                 "-m", "immediate", "stop"],
                capture_output=True,
            )


def apply_environment(values: dict[str, str]) -> None:
    os.environ.update(values)


SAMPLE_APP = Path(__file__).resolve().parents[1] / "examples" / "hello"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def stop_proxy(conveyor_home: Path) -> None:
    """Stop the HAProxy a conveyor state dir started (the container-host target's proxy), if any."""
    from conveyor.targets.container_host.proxy import HAProxy

    HAProxy(conveyor_home / "proxy").stop()


def make_sample_repo(dest: Path, values: dict[str, str], version: str = "v1") -> Path:
    """Create a git repo holding the sample app (examples/hello) with its busybox and rendered config.

    `values` fills conveyor.yml.in: REGISTRY, STAGING_PORT, PRODUCTION_PORT.
    """
    from string import Template

    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox is not installed (apt-get install busybox-static)")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE_APP / "Dockerfile", dest / "Dockerfile")
    shutil.copytree(SAMPLE_APP / "www", dest / "www", dirs_exist_ok=True)
    shutil.copy(busybox, dest / "busybox")
    template = Template((SAMPLE_APP / "conveyor.yml.in").read_text())
    (dest / "conveyor.yml").write_text(template.substitute(values))
    git(dest, "init", "-q", "-b", "main")
    git(dest, "config", "user.email", "dev@example.com")
    git(dest, "config", "user.name", "Sample Dev")
    set_sample_version(dest, version)
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", f"hello {version}")
    return dest


def set_sample_version(repo: Path, version: str) -> None:
    page = repo / "www" / "index.html"
    text = (SAMPLE_APP / "www" / "index.html").read_text()
    page.write_text(text.replace('id="version">v1<', f'id="version">{version}<'))


def commit_sample_version(repo: Path, version: str) -> str:
    set_sample_version(repo, version)
    git(repo, "commit", "-q", "-am", f"hello {version}")
    return git(repo, "rev-parse", "HEAD")
