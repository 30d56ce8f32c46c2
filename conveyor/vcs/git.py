"""The app's git repository, through the git CLI (argument lists only)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from conveyor.errors import BadInput, InfrastructureMissing, OperationFailed


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def discover(cls, start: Path) -> Repo:
        import shutil

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
        import tarfile  # only builds export; `conveyor diff` starts git before loading more than it needs

        dest.mkdir(parents=True, exist_ok=True)
        with subprocess.Popen(
            ["git", "-C", str(self.path), "archive", "--format=tar", sha], stdout=subprocess.PIPE
        ) as proc:
            assert proc.stdout is not None
            with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
                archive.extractall(dest, filter="tar")
        if proc.returncode != 0:
            raise BadInput(f"git archive {sha} failed")

    def show_file(self, sha: str, path: str) -> bytes | None:
        """The bytes of PATH as committed in SHA (never the working tree's copy), or None if SHA lacks it."""
        result = subprocess.run(
            ["git", "-C", str(self.path), "cat-file", "blob", f"{sha}:{path}"], capture_output=True
        )
        return result.stdout if result.returncode == 0 else None

    def commits_between(self, older: str, newer: str) -> int:
        """How many commits `newer` has that `older` lacks."""
        result = self._git("rev-list", "--count", f"{older}..{newer}", check=False)
        return int(result.stdout.strip()) if result.returncode == 0 else 0

    def commit_authors(self, older: str | None, newer: str, limit: int) -> list[list[str]]:
        """[sha, author name, author email, subject] of up to `limit` commits `newer` has that `older` lacks,
        newest first; [] when git cannot tell (a commit this clone lacks)."""
        spec = f"{older}..{newer}" if older else newer
        fmt = _FIELD.join(["%H", "%an", "%ae", "%s"])
        result = self._git("log", f"--max-count={limit}", f"--format={fmt}", spec, "--", check=False)
        if result.returncode != 0:
            return []
        return [line.split(_FIELD, 3) for line in result.stdout.splitlines()]

    def commit_count(self, older: str | None, newer: str) -> int:
        """How many commits `newer` has that `older` lacks (all of its history without `older`)."""
        spec = f"{older}..{newer}" if older else newer
        result = self._git("rev-list", "--count", spec, "--", check=False)
        return int(result.stdout.strip()) if result.returncode == 0 else 0

    def commit_time(self, sha: str) -> datetime | None:
        """When SHA was committed (its committer date), or None when this clone lacks it."""
        result = self._git("show", "-s", "--format=%ct", sha, "--", check=False)
        stamp = result.stdout.strip()
        return datetime.fromtimestamp(int(stamp), UTC) if result.returncode == 0 and stamp.isdigit() else None

    def config_value(self, key: str) -> str:
        result = self._git("config", "--get", key, check=False)
        return result.stdout.strip()


_FIELD = "\x1f"


def _log_format() -> str:
    return _FIELD.join(["%H", "%an", "%aI", "%s"])


HUMAN_LOG_FORMAT = "%H  %ad  %an: %s"  # with --date=short: one line a person reads


class CommitLog:
    """`git log` of a range, started now and collected later, so callers can work while git runs.

    git writes to a temporary file rather than a pipe: a pipe would stall git whenever this process is busy
    (loading its modules), and git is most of the work on a large range. (Splitting a range across two git
    processes was measured slower: with conveyor loading on the other core, two cores are already busy.)
    """

    def __init__(self, repo: Repo, older: str | None, newer: str, *, fmt: str = "records",
                 paths: list[str] | None = None) -> None:
        """fmt: "records" (parse with rows()), "human" (HUMAN_LOG_FORMAT, read with output()), or "shas"."""
        spec = f"{older}..{newer}" if older else newer
        formats = {"records": _log_format(), "human": HUMAN_LOG_FORMAT, "shas": "%H"}
        command = ["git", "-C", str(repo.path), "log", f"--format={formats[fmt]}", "--date=short", spec]
        if paths:
            command += ["--", *paths]
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 - closed by text() or discard()
        self._process = subprocess.Popen(command, stdout=self._out, stderr=subprocess.PIPE)

    def output(self) -> bytes:
        """git's output as it wrote it (the human listing is passed through to the terminal untouched)."""
        _, err = self._process.communicate()
        if self._process.returncode != 0:
            raise BadInput(f"git log failed: {err.decode(errors='replace').strip()}")
        self._out.seek(0)
        content = self._out.read()
        self._out.close()
        return content

    def text(self) -> str:
        return self.output().decode(errors="replace")

    def rows(self) -> list[list[str]]:
        """[sha, author, author date (ISO 8601), subject] per commit, newest first. Plain lists: a range
        can hold 100,000 commits and this is the hot path of `conveyor diff --json`."""
        return [line.split(_FIELD, 3) for line in self.text().splitlines()]

    def shas(self) -> set[str]:
        return set(self.text().split())

    def discard(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.communicate()
        self._out.close()


class History:
    """Read-only questions about commits, answered by one git process each."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo

    def parents(self, sha: str) -> list[str]:
        out = self.repo._git("rev-list", "--parents", "-n", "1", sha).stdout.split()
        return out[1:]

    def trees(self, shas: list[str]) -> dict[str, str]:
        """The tree id of each commit this repo has (commits it lacks are left out)."""
        if not shas:
            return {}
        result = subprocess.run(
            ["git", "-C", str(self.repo.path), "cat-file", "--batch-check=%(objectname) %(objecttype)"],
            input="".join(f"{sha}^{{tree}}\n" for sha in shas), capture_output=True, text=True,
        )
        trees = {}
        for sha, line in zip(shas, result.stdout.splitlines(), strict=False):
            parts = line.split()
            if len(parts) == 2 and parts[1] == "tree":
                trees[sha] = parts[0]
        return trees

    def remote_url(self, remote: str) -> str:
        return self.repo.config_value(f"remote.{remote}.url")


class RemoteMissing(OperationFailed):
    """The remote to push to is neither a remote of the repo nor a URL or path: no retry can help."""


def push_refs(repo: Repo, remote: str, refspecs: list[str], timeout: float = 60) -> None:
    """Push refspecs without running any of the user's hooks and without prompting for credentials.

    `--` keeps a remote named like an option ("-f", "--mirror") a repository name (git 2.39 accepts it)."""
    command = ["git", "-c", "core.hooksPath=/dev/null", "-C", str(repo.path), "push", "--no-verify",
               "--porcelain", "--", remote, *refspecs]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"git push to {remote} timed out after {timeout:.0f}s") from None
    if result.returncode != 0:
        if not _names_a_remote(repo, remote):
            raise RemoteMissing(
                f"this repo has no git remote '{remote}': add it, or set `release_refs: false` (or "
                "`release_refs: {remote: NAME}`) in conveyor.yml"
            )
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        # What the remote said (a hook's message) matters most, then git's own words: every fatal or
        # error line (the first says why; the last is often only "Could not read from remote repository").
        said = [line.removeprefix("remote:").strip() for line in lines if line.startswith("remote:")]
        verdict = [line for line in lines if line.startswith(("fatal:", "error:", "!"))] or lines[-1:]
        raise OperationFailed(f"git push to {remote} failed: {' | '.join([*said[-3:], *verdict[-3:]])}")


def _names_a_remote(repo: Repo, remote: str) -> bool:
    """A configured remote, or a URL or path git can push to directly."""
    if "/" in remote or ":" in remote:
        return True
    result = subprocess.run(["git", "-C", str(repo.path), "remote"], capture_output=True, text=True)
    return result.returncode != 0 or remote in result.stdout.split()


def _remote_git(repo: Repo, args: list[str], what: str, timeout: float, stdin: str | None = None) -> str:
    """A git call that may talk to a remote: no hooks, no credential prompts, bounded in time."""
    command = ["git", "-c", "core.hooksPath=/dev/null", "-C", str(repo.path), *args]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"{what} timed out after {timeout:.0f}s") from None
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        raise OperationFailed(f"{what} failed: {(lines or ['no error output'])[-1]}")
    return result.stdout


def write_blob(repo: Repo, content: str) -> str:
    """Store content as a blob in the repo's object database; returns its object id."""
    return _remote_git(repo, ["hash-object", "-w", "--stdin"], "git hash-object", 30, stdin=content).strip()


def read_remote_blob(repo: Repo, remote: str, ref: str, timeout: float = 60) -> str | None:
    """The content of the blob `ref` names on `remote`, or None when the remote has no such ref."""
    listed = _remote_git(repo, ["ls-remote", "--", remote, ref], f"git ls-remote {remote}", timeout)
    oids = [line.split("\t")[0] for line in listed.splitlines() if line.endswith(f"\t{ref}")]
    if not oids:
        return None
    _remote_git(repo, ["fetch", "-q", "--no-tags", "--no-write-fetch-head", "--", remote, oids[0]],
                f"git fetch {ref} from {remote}", timeout)
    return _remote_git(repo, ["cat-file", "blob", oids[0]], f"git cat-file {oids[0]}", 30)
