"""`conveyor diff` between stages 100,000 commits apart (target: ≤ 1.2 × `git log` on the same range).

Generates a linear repo with `git fast-import`, records production's live release at the first commit and
staging's at the last in a fresh ledger, then times, alternately in the same run, `conveyor diff` and
`git log --format='%H %an %s' A..B` (both writing to /dev/null) and prints the medians and their ratio.

    .venv/bin/python bench/diff_speed.py [--commits N] [--runs N]
"""

from __future__ import annotations

import argparse
import os
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


def generate(repo: Path, commits: int) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    lines = []
    for n in range(1, commits + 1):
        message = f"change {n}\n".encode()
        body = f"line {n}\n".encode()
        lines.append(b"commit refs/heads/main\n")
        lines.append(f"mark :{n}\n".encode())
        lines.append(f"author Dev {n % 50} <dev{n % 50}@example.com> {1_700_000_000 + n} +0000\n".encode())
        lines.append(f"committer Dev <dev@example.com> {1_700_000_000 + n} +0000\n".encode())
        lines.append(f"data {len(message)}\n".encode() + message)
        if n > 1:
            lines.append(f"from :{n - 1}\n".encode())
        lines.append(f"M 644 inline file{n % 100}.txt\ndata {len(body)}\n".encode() + body + b"\n")
    subprocess.run(["git", "-C", str(repo), "fast-import", "--quiet"], input=b"".join(lines), check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "main"], check=True)
    (repo / "conveyor.yml").write_text(CONFIG)  # committed after the range: conveyor reads HEAD's config
    subprocess.run(["git", "-C", str(repo), "add", "conveyor.yml"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit",
                    "-q", "-m", "conveyor.yml"], check=True)


def record_live(home: Path, env: str, sha: str) -> None:
    from conveyor.ledger import open_ledger

    ledger = open_ledger(f"sqlite:///{home / 'ledger.db'}")
    release = ledger.create_release(
        app="bench", env=env, kind="deploy", sha=sha, digest="sha256:" + "0" * 64, image="x@sha256:0",
        spec={}, config_digest="", actor="bench", origin="bench", reason="", forced=False,
        previous_number=None, source_release_id=None,
    )
    ledger.update_release(release.id, status="succeeded", finished=True)
    ledger.close()


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commits", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="conveyor-diff-bench-"))
    repo, home = root / "repo", root / "home"
    home.mkdir()
    started = time.perf_counter()
    generate(repo, args.commits)
    print(f"generated {args.commits} commits in {time.perf_counter() - started:.1f}s")
    first = subprocess.run(["git", "-C", str(repo), "rev-list", "--max-parents=0", "HEAD"], capture_output=True,
                           text=True, check=True).stdout.strip()
    last = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    record_live(home, "production", first)
    record_live(home, "staging", last)
    env = {**os.environ, "CONVEYOR_HOME": str(home)}
    env.pop("CONVEYOR_DATABASE_URL", None)
    git_log = ["git", "log", "--format=%H %an %s", f"{first}..{last}"]
    ours, theirs = [], []
    timed([CONVEYOR, "diff"], repo, env)  # warm caches for both
    for _ in range(args.runs):
        theirs.append(timed(git_log, repo, env))
        ours.append(timed([CONVEYOR, "diff"], repo, env))
    count = subprocess.run([CONVEYOR, "diff", "--json"], cwd=repo, env=env, capture_output=True, text=True,
                           check=True).stdout.count('"sha"')
    a, b = statistics.median(theirs), statistics.median(ours)
    print(f"commits listed by conveyor diff: {count}")
    print(f"git log A..B      median {a * 1000:7.1f} ms over {args.runs} runs")
    print(f"conveyor diff     median {b * 1000:7.1f} ms over {args.runs} runs  ({b / a:.2f}x git log)")
    print(f"target: ≤ 1.2x -> {'met' if b / a <= 1.2 else 'MISSED'}")


if __name__ == "__main__":
    main()
