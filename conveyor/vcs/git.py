"""The app's git repository, through the git CLI (argument lists only)."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

from conveyor.errors import BadInput, InfrastructureMissing


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def discover(cls, start: Path) -> Repo:
        if shutil.which("git") is None:
            raise InfrastructureMissing("git is not installed")
        result = subprocess.run(
            ["git", "-C", str(start), "rev-parse", "--show-toplevel"], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise BadInput(f"{start} is not inside a git repository (conveyor runs from the app's repo)")
        return cls(Path(result.stdout.strip()))

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["git", "-C", str(self.path), *args], capture_output=True, text=True)
        if check and result.returncode != 0:
            raise BadInput(f"git {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def resolve(self, ref: str) -> str:
        """The full SHA of the commit REF names, or a BadInput that says so."""
        if ref.startswith("-"):
            raise BadInput(f"unknown ref '{ref}'")
        result = self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        if result.returncode != 0:
            raise BadInput(f"unknown ref '{ref}': no such commit, branch or tag in {self.path}")
        return result.stdout.strip()

    def export(self, sha: str, dest: Path) -> None:
        """Write the committed tree of SHA into dest: never the working tree's uncommitted files."""
        dest.mkdir(parents=True, exist_ok=True)
        with subprocess.Popen(
            ["git", "-C", str(self.path), "archive", "--format=tar", sha], stdout=subprocess.PIPE
        ) as proc:
            assert proc.stdout is not None
            with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
                archive.extractall(dest, filter="tar")
        if proc.returncode != 0:
            raise BadInput(f"git archive {sha} failed")

    def commits_between(self, older: str, newer: str) -> int:
        """How many commits `newer` has that `older` lacks."""
        result = self._git("rev-list", "--count", f"{older}..{newer}", check=False)
        return int(result.stdout.strip()) if result.returncode == 0 else 0

    def config_value(self, key: str) -> str:
        result = self._git("config", "--get", key, check=False)
        return result.stdout.strip()
