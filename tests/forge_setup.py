"""Test helpers for the forge: the in-repo GitHub server wired into an app's config.

The forge and CI settings go in a `--config` file beside the repo (recorded on each release as its config
source), so a test gates and records deployments without committing and building a new image."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e import App, Result
from tests.fakes.github import FakeGitHub

GITHUB_TOKEN = "ghp_forgeTestToken0123456789abcdefABCD"
REPO = "acme/hello"


@dataclass
class Forged:
    app: App
    github: FakeGitHub
    config: Path

    def run(self, *args: str, **env: str) -> Result:
        return self.app.run("--config", str(self.config), *args, **env)

    def ok(self, *args: str, **env: str) -> Result:
        result = self.run(*args, **env)
        assert result.code == 0, f"conveyor {' '.join(args)} exited {result.code}:\n{result.err}\n{result.out}"
        return result

    def sha(self, ref: str) -> str:
        return self.app.git("rev-parse", f"{ref}^{{commit}}")

    def events(self, step: str) -> list[dict[str, Any]]:
        """The ledger's events of `step`, oldest first (read from its SQLite file)."""
        with sqlite3.connect(self.app.home / "ledger.db") as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute("SELECT * FROM events WHERE step = ? ORDER BY id", (step,))]


def forge_yaml(github: FakeGitHub, ci: str | None = "{}", extra: str = "") -> str:
    lines = ["forge:", "  github:", f"    repo: {REPO}", f'    api_url: "{github.api_url}"',
             "    token_env: GITHUB_TOKEN"]
    if extra:
        lines.append(extra)
    if ci is not None:
        lines.append(f"ci: {ci}")
    return "\n".join(lines) + "\n"


def forged(app: App, tmp_path: Path, ci: str | None = "{}", extra: str = "", yaml_more: str = "") -> Forged:
    github = FakeGitHub(REPO, GITHUB_TOKEN)
    config = tmp_path / "conveyor-forge.yml"
    config.write_text((app.repo / "conveyor.yml").read_text() + forge_yaml(github, ci, extra) + yaml_more)
    app.extra_env.update({"GITHUB_TOKEN": GITHUB_TOKEN, "CONVEYOR_CI_POLL": "0.1"})
    return Forged(app, github, config)
