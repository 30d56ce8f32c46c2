"""Where an operation's conveyor.yml comes from: the commit it ships, read through git, or an explicit
`--config PATH` override, which every release made with it records as such.

The commit is the source of truth: a laptop, a CI job and a server given the same commit read the same
bytes, whatever their working trees hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from conveyor.config import CONFIG_NAME
from conveyor.errors import BadInput
from conveyor.vcs.git import Repo

if TYPE_CHECKING:
    from conveyor.config.models import AppConfig


class ConfigSource(Protocol):
    def load(self) -> AppConfig: ...

    @property
    def recorded_as(self) -> str:
        """What a release made with this config records: "" for the commit's own, else the override."""


@dataclass(frozen=True)
class CommitConfig:
    """conveyor.yml as committed in `sha`."""

    repo: Repo
    sha: str

    @property
    def label(self) -> str:
        return f"{self.sha[:12]}:{CONFIG_NAME}"  # git's own spelling of "this file in this commit"

    @property
    def recorded_as(self) -> str:
        return ""

    def text(self) -> bytes:
        text = self.repo.show_file(self.sha, CONFIG_NAME)
        if text is None:
            raise BadInput(f"commit {self.sha[:12]} has no {CONFIG_NAME} at the repo's root; commit one "
                           f"(or pass --config PATH, recorded as an override)")
        return text

    def load(self) -> AppConfig:
        return _parsed(self.repo.path, self.sha)


@lru_cache(maxsize=256)
def _parsed(repo_path: Path, sha: str) -> AppConfig:
    """A commit's config, parsed once per process: the commit names its bytes for good, and the model is
    frozen, so a server's every request on the same commit shares one (a failure is not kept)."""
    import conveyor.targets.settings  # noqa: F401  (registers each target type's `target:` settings)
    from conveyor.config.loader import parse_config

    source = CommitConfig(Repo(repo_path), sha)
    return parse_config(_decode(source.text(), source.label), source.label)


@dataclass(frozen=True)
class OverrideConfig:
    """`--config PATH`: a file outside the commit, used as asked and recorded on every release."""

    path: Path

    @property
    def recorded_as(self) -> str:
        return f"--config {self.path}"

    def load(self) -> AppConfig:
        import conveyor.targets.settings  # noqa: F401  (registers each target type's `target:` settings)
        from conveyor.config.loader import load_config

        return load_config(self.path)


def working_tree_note(repo: Repo, source: CommitConfig) -> str | None:
    """One line when the checkout's conveyor.yml has uncommitted changes: its author may think they ship."""
    try:
        local = (repo.path / CONFIG_NAME).read_bytes()
    except OSError:
        return None
    committed = repo.show_file("HEAD", CONFIG_NAME)
    if committed is None or local == committed:
        return None
    return (f"note: {CONFIG_NAME} has uncommitted changes, which are not used: conveyor reads "
            f"{source.label} (commit them, or pass --config {CONFIG_NAME} to use them as a recorded override)")


def _decode(data: bytes, label: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BadInput(f"{label}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x})") from None
