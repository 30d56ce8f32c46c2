"""Shared set-up for the deploy benchmarks: a real registry, the sandbox's podman settings, the sample
app in a git repo with a bare remote, v1 and v2 built and pushed. Everything is torn down afterwards."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack import (  # noqa: E402
    Registry,
    commit_sample_version,
    engine_environment,
    free_port,
    git,
    make_sample_repo,
    stop_proxy,
)

CONVEYOR = str(Path(sys.executable).parent / "conveyor")


@dataclass
class BenchApp:
    repo: Path
    v1: str
    v2: str

    def conveyor(self, *args: str) -> float:
        """Run one conveyor command; return its wall time in seconds."""
        start = time.perf_counter()
        subprocess.run([CONVEYOR, *args], cwd=self.repo, check=True, capture_output=True)
        return time.perf_counter() - start


@contextmanager
def sample_app() -> Iterator[BenchApp]:
    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    registry = Registry(root / "registry").start()
    saved = dict(os.environ)
    os.environ.update(engine_environment(root / "engine", [registry.host]))
    os.environ["CONVEYOR_HOME"] = str(root / "home")
    os.environ.pop("CONVEYOR_DATABASE_URL", None)
    values = {"REGISTRY": registry.host, "STAGING_PORT": str(free_port()), "PRODUCTION_PORT": str(free_port())}
    repo = make_sample_repo(root / "hello", values)
    subprocess.run(["git", "init", "-q", "--bare", str(root / "remote.git")], check=True)
    git(repo, "remote", "add", "origin", str(root / "remote.git"))
    config = repo / "conveyor.yml"
    text = re.sub(r"tasks:\n  - name: migrate\n    command: .*\n", "", config.read_text())
    no_drain = "      type: container-host\n      drain_seconds: 0\n"
    config.write_text(text.replace("      type: container-host\n", no_drain))
    git(repo, "commit", "-qam", "bench config: no tasks, no drain")
    app = BenchApp(repo, git(repo, "rev-parse", "HEAD"), commit_sample_version(repo, "v2"))
    try:
        app.conveyor("build", app.v1)
        app.conveyor("build", app.v2)
        app.conveyor("deploy", "staging", app.v1)  # warm: proxy started, image pulled once
        yield app
    finally:
        ids = subprocess.run(["podman", "ps", "-aq", "--filter", "label=conveyor.app=hello"], capture_output=True,
                             text=True).stdout.split()
        if ids:
            subprocess.run(["podman", "rm", "-f", "-t", "0", *ids], capture_output=True)
        stop_proxy(root / "home")
        registry.stop()
        os.environ.clear()
        os.environ.update(saved)
