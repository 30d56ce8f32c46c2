"""`conveyor status` and `conveyor history`: median wall time as a ratio to `python -c pass`.

A two-commit repo with a two-stage conveyor.yml and a fresh SQLite ledger holding five releases per stage
(recorded through the Ledger API). The three commands are run interleaved (one of each per round, so load
on the machine hits them alike) through the real executable, output to /dev/null.

    .venv/bin/python bench/cli_speed.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONVEYOR = str(Path(sys.executable).parent / "conveyor")
CONFIG = """app: bench
image: 127.0.0.1:5000/bench
environments:
  - name: staging
    target: {type: container-host, port: 18001}
  - name: production
    target: {type: container-host, port: 18002}
"""


def make_repo(repo: Path) -> list[str]:
    """A repo with conveyor.yml committed and two commits; returns their SHAs, oldest first."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    git("config", "user.name", "Bench")
    git("config", "user.email", "bench@example.com")
    (repo / "conveyor.yml").write_text(CONFIG)
    git("add", "conveyor.yml")
    git("commit", "-qm", "first")
    first = git("rev-parse", "HEAD")
    git("commit", "-q", "--allow-empty", "-m", "second")
    return [first, git("rev-parse", "HEAD")]


def record_releases(url: str, shas: list[str], per_env: int) -> None:
    from conveyor.ledger import open_ledger

    ledger = open_ledger(url)
    for env, sha in (("production", shas[0]), ("staging", shas[1])):
        for _ in range(per_env):
            release = ledger.create_release(
                app="bench", env=env, kind="deploy", sha=sha, digest="sha256:" + "0" * 64,
                image="127.0.0.1:5000/bench@sha256:" + "0" * 64, spec={"env": {"PORT": "8080"}},
                config_digest="", actor="bench", origin="bench", reason="", forced=False,
                previous_number=None, source_release_id=None,
            )
            ledger.append_event(app="bench", env=env, release_id=release.id, step="recorded", status="ok",
                                message="recorded")
            ledger.update_release(release.id, status="succeeded", finished=True)
    ledger.close()


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall time of one run. Nothing serves the bench's releases, so `status` probes them, reports the outage
    and exits 1: that is its whole normal path; any other failure stops the bench."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - start
    if done.returncode not in (0, 1) or (done.returncode == 1 and "status" not in command):
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    root = Path(tempfile.mkdtemp(prefix="conveyor-cli-bench-"))
    try:
        repo, home = root / "repo", root / "home"
        home.mkdir()
        record_releases(f"sqlite:///{home / 'ledger.db'}", make_repo(repo), per_env=5)
        env = {**os.environ, "CONVEYOR_HOME": str(home)}
        env.pop("CONVEYOR_DATABASE_URL", None)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "conveyor status": [CONVEYOR, "status"],
            "conveyor history": [CONVEYOR, "history"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for command in commands.values():
            timed(command, repo, env)  # warm the page cache for each
        for _ in range(runs):
            for name, command in commands.items():
                times[name].append(timed(command, repo, env))
        base = statistics.median(times["python -c pass"])
        for name, samples in times.items():
            ours = statistics.median(samples)
            print(f"{name:18} median {ours * 1000:7.1f} ms over {runs} runs  ({ours / base:5.1f}x python -c pass)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
