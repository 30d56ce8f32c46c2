"""What the CI gate adds to a deploy (target: ≤ 200 ms against the in-repo GitHub server).

Real deploys of the sample app, alternating v1/v2, in rounds: the same deploy with no `forge:` (off), with
`ci: {}` and the commit all green on the in-repo GitHub server (tests/fakes/github.py, real HTTP, started in
this process) and deployments off (gate), and with GitHub Deployments on as well (gate+deployments). The
configs are `--config` files, so one repo, ledger and proxy serve all; interleaving puts the machine's load
on each alike. Each deploy runs in this process through the pipeline the CLI calls (operations.deploy on a
fresh Workspace), because an interpreter's start varies by seconds on a shared machine; the forge client
cache is emptied before each, so every gated deploy pays for its first GitHub connection as a CLI does.
The figure judged is the head of each deploy, where the gate runs: from the call to the release's first
recorded event (the pending record, made after every check). The whole deploy's medians are printed too,
and the same comparison through the real CLI (noisier: it includes the interpreter's start).

    .venv/bin/python bench/ci_gate.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from sample_app import ROOT, BenchApp, sample_app

TOKEN = "ghp_benchToken0123456789abcdef"
CONFIGS = ("off", "gate", "gate+deployments")


def configs(app: BenchApp, api_url: str) -> dict[str, Path]:
    base = (app.repo / "conveyor.yml").read_text()
    forge = f'forge:\n  github:\n    repo: acme/hello\n    api_url: "{api_url}"\n    token_env: BENCH_GITHUB_TOKEN\n'
    texts = {"off": base, "gate": base + forge + "    deployments: {enabled: false}\nci: {}\n",
             "gate+deployments": base + forge + "ci: {}\n"}
    paths = {}
    for name, text in texts.items():
        paths[name] = app.repo.parent / f"bench-{name.replace('+', '-')}.yml"
        paths[name].write_text(text)
    return paths


def head_seconds(ledger: Any, started_at: float) -> float:
    """From the process's start to the release's `recorded` event: config, artifact, blocks, the CI gate,
    the target's preflight and the lease, all before anything changes."""
    release = ledger.list_releases("hello", "staging", limit=1)[0]
    if release.status != "succeeded":
        raise SystemExit(f"staging#{release.number} {release.status}: {release.error}")
    recorded = next(event for event in ledger.events(release_id=release.id) if event.step == "recorded")
    return recorded.at.timestamp() - started_at


def deploy_in_process(app: BenchApp, path: Path, sha: str) -> tuple[float, float]:
    """One deploy through the pipeline: (whole seconds, head seconds)."""
    import conveyor.forge.github as github_adapter
    from conveyor.pipeline.operations import deploy
    from conveyor.pipeline.workspace import Workspace

    github_adapter._clients.clear()  # as in a fresh CLI process: no connection or token kept
    ws = Workspace(app.repo, config_override=path, say=lambda message: None)
    started = time.time()
    try:
        release = deploy(ws, "staging", sha)
        ended = time.time()
        return ended - started, head_seconds(ws.ledger, started)
    finally:
        assert release is not None
        ws.close()


def dry_run_in_process(app: BenchApp, path: Path, sha: str) -> float:
    """A --dry-run: every check a deploy makes before it changes anything (the gate among them), nothing
    else; the least noisy view of what a check costs."""
    import conveyor.forge.github as github_adapter
    from conveyor.pipeline.operations import deploy
    from conveyor.pipeline.workspace import Workspace

    github_adapter._clients.clear()
    ws = Workspace(app.repo, config_override=path, say=lambda message: None)
    started = time.perf_counter()
    try:
        deploy(ws, "staging", sha, dry_run=True)
        return time.perf_counter() - started
    finally:
        ws.close()


def main() -> None:
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.fakes.github import FakeGitHub

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=8)
    runs = parser.parse_args().runs
    github = FakeGitHub("acme/hello", TOKEN)
    os.environ["BENCH_GITHUB_TOKEN"] = TOKEN
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    heads: dict[str, list[float]] = {name: [] for name in CONFIGS}
    cli: dict[str, list[float]] = {name: [] for name in CONFIGS}
    dry: dict[str, list[float]] = {name: [] for name in CONFIGS}
    cli_heads: dict[str, list[float]] = {name: [] for name in CONFIGS}
    try:
        with sample_app() as app:
            from conveyor.ledger import open_ledger

            for sha in (app.v1, app.v2):
                github.add_check_run(sha, "build")
                github.add_check_run(sha, "test")
                github.set_status(sha, "ci/lint", "success", target_url="https://ci.example.com/1")
            ledger = open_ledger()
            paths = configs(app, github.api_url)
            for index in range(runs):
                for name, path in paths.items():
                    sha = app.v2 if (index * len(CONFIGS) + CONFIGS.index(name)) % 2 == 0 else app.v1
                    whole, head = deploy_in_process(app, path, sha)
                    times[name].append(whole)
                    heads[name].append(head)
                    started = time.time()
                    cli[name].append(app.conveyor("--config", str(path), "deploy", "staging", sha))
                    cli_heads[name].append(head_seconds(ledger, started))
                for _ in range(5):
                    for name, path in paths.items():
                        dry[name].append(dry_run_in_process(app, path, sha))
                print(f"round {index + 1:2d}: " + "  ".join(
                    f"{k} {v[-1]:5.2f}s (head {heads[k][-1] * 1000:4.0f} ms)" for k, v in times.items()))
            ledger.close()
    finally:
        github.close()
    reads = len(github.calls("GET", "/check-runs$"))
    print(f"\nGitHub answered {reads} check-run reads and {len(github.deployments)} deployments")
    for label, values in (("whole deploy", times), ("head (start → pending record)", heads),
                          ("--dry-run", dry),
                          ("CLI: whole deploy", cli), ("CLI: head (process start → pending record)", cli_heads)):
        medians = {name: statistics.median(v) for name, v in values.items()}
        print(f"{label}, median of {len(values['off'])}: " + ", ".join(
            f"{name} {medians[name] * 1000:.0f} ms ({(medians[name] - medians['off']) * 1000:+.0f})"
            for name in CONFIGS))
    added = (statistics.median(heads["gate"]) - statistics.median(heads["off"])) * 1000
    print(f"added by the CI gate (head medians): {added:+.0f} ms (target ≤ 200 ms) -> "
          f"{'met' if added <= 200 else 'MISSED'}")
    checks = (statistics.median(dry["gate"]) - statistics.median(dry["off"])) * 1000
    print(f"added by the CI gate (--dry-run medians): {checks:+.0f} ms (target ≤ 200 ms) -> "
          f"{'met' if checks <= 200 else 'MISSED'}")


if __name__ == "__main__":
    main()
