"""`conveyor --help`: median wall time over 20 runs (target ≤ 150 ms), printed beside a baseline run in
the same process: bare `python -c pass` from the same interpreter (what no CLI can beat), and hokusai's
`--help` when hokusai is installed (`pip install hokusai`: the seed's tool, ~1.3 s on this machine kind)."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = 20


def median_ms(command: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    conveyor = str(Path(sys.executable).parent / "conveyor")
    baseline = median_ms([sys.executable, "-c", "pass"])
    ours = median_ms([conveyor, "--help"])
    print(f"python -c pass      median {baseline:7.1f} ms over {RUNS} runs")
    print(f"conveyor --help     median {ours:7.1f} ms over {RUNS} runs  ({ours / baseline:.2f}x bare python)")
    hokusai = shutil.which("hokusai")
    if hokusai:
        theirs = median_ms([hokusai, "--help"])
        print(f"hokusai --help      median {theirs:7.1f} ms over {RUNS} runs  "
              f"(conveyor is {theirs / ours:.1f}x faster)")
    print(f"target: ≤ 150 ms -> {'met' if ours <= 150 else 'MISSED'}")


if __name__ == "__main__":
    main()
