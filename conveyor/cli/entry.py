"""The `conveyor` executable's first step, taken before the CLI framework loads.

`conveyor diff` on a large range is mostly `git log`, so when the arguments look like a diff this starts
git at once (pipeline.early_log.prefetch) and lets it run while click, pydantic and SQLAlchemy load. It is a
guess: the diff command confirms it against the ledger or throws it away. Everything else goes straight
to cli.main, which parses the arguments for real.
"""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["diff"]:
        _prefetch_diff(args[1:])
    from conveyor.cli.main import main as run_cli

    run_cli()


def _prefetch_diff(args: list[str]) -> None:
    envs = [a for a in args if not a.startswith("-")]
    flags = {a for a in args if a.startswith("-")}
    if len(envs) not in (0, 2) or flags - {"--json"}:
        return  # anything unusual: no guess, diff starts git itself
    import os

    from conveyor.pipeline.early_log import prefetch

    source, target = (envs[0], envs[1]) if envs else (None, None)
    try:
        prefetch(os.getcwd(), source, target, human="--json" not in flags)
    except Exception:  # noqa: BLE001 - a guess never fails the command: diff() redoes the work and reports
        return
