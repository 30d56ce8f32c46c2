"""Helpers for end-to-end tests that drive the real `conveyor` command against real components."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONVEYOR = str(Path(sys.executable).parent / "conveyor")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class App:
    """One test's app: a clone of the sample repo, its own ledger/state dir and its own ports."""

    repo: Path
    home: Path
    ports: dict[str, int]
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {**os.environ, "CONVEYOR_HOME": str(self.home), "CONVEYOR_LEASE_TTL": "3", **self.extra_env}
        for key in ("CIRCLECI", "GITHUB_ACTIONS"):
            env.pop(key, None)
        env.update(overrides)
        return env

    def run(self, *args: str, timeout: float = 120, **env: str) -> Result:
        proc = subprocess.run(
            [CONVEYOR, *args], cwd=self.repo, env=self.env(**env), capture_output=True, text=True,
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [CONVEYOR, *args], cwd=self.repo, env=self.env(**env), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )

    def ok(self, *args: str, **env: str) -> Result:
        result = self.run(*args, **env)
        assert result.code == 0, f"conveyor {' '.join(args)} exited {result.code}:\n{result.err}\n{result.out}"
        return result

    @property
    def ledger_url(self) -> str:
        """The ledger this app's conveyor runs use: PostgreSQL when the test set one, else SQLite in its home."""
        return self.extra_env.get("CONVEYOR_DATABASE_URL") or f"sqlite:///{self.home / 'ledger.db'}"

    def url(self, env: str) -> str:
        return f"http://127.0.0.1:{self.ports[env]}/"

    def serves(self, env: str) -> str:
        with urllib.request.urlopen(self.url(env), timeout=5) as response:
            page = response.read().decode()
        start = page.index('id="version">') + len('id="version">')
        return page[start:page.index("<", start)]

    def history(self, env: str | None = None) -> list[dict[str, Any]]:
        return self.ok("history", *([env] if env else []), "--json").json()

    def status(self) -> dict[str, dict[str, Any]]:
        return {row["env"]: row for row in self.ok("status", "--json").json()["environments"]}

    def reconfigure(self, change: Callable[[str], str], *, on: str = "HEAD", build: bool = True,
                    message: str = "reconfigure") -> str:
        """Commit change(conveyor.yml) on top of `on` and return the new commit's SHA (HEAD is left there).
        conveyor reads the config from the commit it ships, so a test that wants other settings ships a commit
        that has them; `build` builds its image with `conveyor build`, as a user would."""
        self.git("checkout", "-q", "--detach", on)
        config = self.repo / "conveyor.yml"
        config.write_text(change(config.read_text()))
        self.git("commit", "-q", "-am", message)
        sha = self.git("rev-parse", "HEAD")
        if build:
            self.ok("build", sha)
        return sha

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(self.repo), *args], check=True, capture_output=True, text=True
        ).stdout.strip()
