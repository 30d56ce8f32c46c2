"""What announcing adds to a deploy (target: ≤ 100 ms median with an answering destination, 0 s of waiting
with a down one).

Real deploys of the sample app through the real CLI, alternating v1/v2, in rounds of three: the same
deploy with no `notify:`, with a Slack destination (the in-repo Slack Web API server, tests/fakes/slack.py)
and a signed webhook (tests/fakes/webhook_receiver.py) that answer at once, and with both pointed at a port
nothing listens on (down). The three configs are `--config` files, so one repo, ledger and proxy serve all;
interleaving puts the machine's load on each alike. The down destinations' items stay queued and are
tried again when due, as in real use. Whole deploys vary by seconds on a shared machine (the container's
start and health wait), so the figure judged is the tail of each deploy: from the target's last event
before the release was recorded finished to the process's exit, which holds every cost of announcing.

    .venv/bin/python bench/notify_overhead.py [--runs N]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import time
from pathlib import Path
from typing import Any

from sample_app import ROOT, BenchApp, sample_app

from devstack import free_port

TOKEN = "xoxb-bench-token-0001"
SECRET = "whsec_" + base64.b64encode(b"bench-signing-key-bench-signing!").decode()


def notify_block(slack_api: str, hook_url: str, prefix: str) -> str:
    """Each config's destinations have their own names, so their own outbox lanes: the down ones' queue
    never holds up the answering ones'."""
    return ("notify:\n  destinations:\n"
            f'    - name: {prefix}-slack\n'
            f'      slack: {{channel: "#dev", token_env: BENCH_SLACK_TOKEN, api_url: "{slack_api}"}}\n'
            f'    - name: {prefix}-hook\n'
            f'      webhook: {{url: "{hook_url}", secret_env: BENCH_HOOK_SECRET}}\n')


def configs(app: BenchApp, slack_api: str, hook_url: str) -> dict[str, Path]:
    base = (app.repo / "conveyor.yml").read_text()
    dead = f"http://127.0.0.1:{free_port()}"
    files = {"none": base, "answering": base + notify_block(slack_api, hook_url, "up"),
             "down": base + notify_block(f"{dead}/api", f"{dead}/hook", "down")}
    paths = {}
    for name, text in files.items():
        paths[name] = app.repo.parent / f"bench-{name}.yml"
        paths[name].write_text(text)
    return paths


def tail_seconds(ledger: Any, ended_at: float) -> float:
    """From the target's last event before the release was recorded finished, to the process's end: where
    everything announcing costs happens (building the announcement, queueing it with the final record,
    the delivery attempt), without the container start and health wait that make whole deploys noisy."""
    release = ledger.list_releases("hello", "staging", limit=1)[0]
    if release.status != "succeeded":
        raise SystemExit(f"staging#{release.number} {release.status}: {release.error}")
    steps = ledger.events(release_id=release.id)
    finished = max(i for i, event in enumerate(steps) if event.step == "finished")
    return ended_at - steps[finished - 1].at.timestamp()


def main() -> None:
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.fakes.slack import FakeSlack
    from tests.fakes.webhook_receiver import WebhookReceiver

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=8)
    runs = parser.parse_args().runs
    slack = FakeSlack(TOKEN, {"#dev": "C0DEV"}, {})
    hooks = WebhookReceiver(SECRET)
    os.environ.update({"BENCH_SLACK_TOKEN": TOKEN, "BENCH_HOOK_SECRET": SECRET})
    times: dict[str, list[float]] = {"none": [], "answering": [], "down": []}
    tails: dict[str, list[float]] = {"none": [], "answering": [], "down": []}
    try:
        with sample_app() as app:
            from conveyor.ledger import open_ledger

            ledger = open_ledger()
            paths = configs(app, slack.api_url, hooks.url)
            for index in range(runs):
                for name, path in paths.items():
                    sha = app.v2 if (index * 3 + list(paths).index(name)) % 2 == 0 else app.v1
                    times[name].append(app.conveyor("--config", str(path), "deploy", "staging", sha))
                    tails[name].append(tail_seconds(ledger, time.time()))
                print(f"round {index + 1:2d}: " + "  ".join(
                    f"{k} {v[-1]:5.2f}s (tail {tails[k][-1] * 1000:4.0f} ms)" for k, v in times.items()))
            ledger.close()
    finally:
        slack.close()
        hooks.close()
    print(f"\nannouncements received from the answering deploys: slack {len(slack.top_level())}, webhook "
          f"{len(hooks.payloads())} (of {runs} each)")
    for label, values in (("whole deploy", times), ("tail (last target step → exit)", tails)):
        medians = {name: statistics.median(v) for name, v in values.items()}
        answering, down = (medians["answering"] - medians["none"]) * 1000, (medians["down"] - medians["none"]) * 1000
        print(f"{label}, median of {runs}: none {medians['none'] * 1000:.0f} ms, answering "
              f"{medians['answering'] * 1000:.0f} ms ({answering:+.0f}), down {medians['down'] * 1000:.0f} ms "
              f"({down:+.0f})")
    tail_added = (statistics.median(tails["answering"]) - statistics.median(tails["none"])) * 1000
    tail_down = (statistics.median(tails["down"]) - statistics.median(tails["none"])) * 1000
    print(f"added by an answering destination (tail medians): {tail_added:+.0f} ms (target ≤ 100 ms) -> "
          f"{'met' if tail_added <= 100 else 'MISSED'}")
    print(f"added by a down destination (tail medians): {tail_down:+.0f} ms (target: no waiting) -> "
          f"{'met' if tail_down <= 100 else 'MISSED'}")


if __name__ == "__main__":
    main()
