"""What announcing adds to a deploy (target: ≤ 100 ms median with an answering destination, 0 s of waiting
with a down one).

Real deploys of the sample app through the real CLI, alternating v1/v2, in rounds of three: the same
deploy with no `notify:`, with a Slack destination (the in-repo Slack Web API server, tests/fakes/slack.py)
and a signed webhook (tests/fakes/webhook_receiver.py) that answer at once, and with both pointed at a port
nothing listens on (down). The three configs are `--config` files, so one repo, ledger and proxy serve all;
interleaving puts the machine's load on each alike. The down destinations' items stay queued and are
tried once per deploy, as in real use.

    .venv/bin/python bench/notify_overhead.py [--runs N]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
from pathlib import Path

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
    try:
        with sample_app() as app:
            paths = configs(app, slack.api_url, hooks.url)
            for index in range(runs):
                for name, path in paths.items():
                    sha = app.v2 if (index * 3 + list(paths).index(name)) % 2 == 0 else app.v1
                    times[name].append(app.conveyor("--config", str(path), "deploy", "staging", sha))
                print(f"round {index + 1:2d}: " + "  ".join(f"{k} {v[-1]:5.2f}s" for k, v in times.items()))
    finally:
        slack.close()
        hooks.close()
    medians = {name: statistics.median(values) for name, values in times.items()}
    answering = (medians["answering"] - medians["none"]) * 1000
    down = (medians["down"] - medians["none"]) * 1000
    print(f"\nmedian over {runs} deploys each: no notify {medians['none']:.3f}s, answering "
          f"{medians['answering']:.3f}s, down {medians['down']:.3f}s")
    print(f"announcements received from the answering deploys: slack {len(slack.top_level())}, webhook "
          f"{len(hooks.payloads())} (of {runs} each)")
    print(f"added by an answering destination: {answering:+.0f} ms (target ≤ 100 ms) -> "
          f"{'met' if answering <= 100 else 'MISSED'}")
    print(f"added by a down destination: {down:+.0f} ms (target: no waiting; a refused connection costs only "
          "the attempt)")


if __name__ == "__main__":
    main()
