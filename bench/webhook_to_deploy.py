"""From the CI-green webhook arriving to the staging deploy's first event, through a real `conveyor server`.

The sample app (a real registry, podman and HAProxy: bench/sample_app.py) with `forge:` and a push trigger
committed, two built commits A and B, the in-repo GitHub server (tests/fakes/github.py) as the forge, and a
server with 4 workers on SQLite. One run, alternating A and B: the commit's CI is set pending on the fake,
a signed `push` delivery records the pending trigger (CI pending: nothing queued), the CI is set green, and
the clock runs from just before the signed `status` delivery is POSTed to the queued deploy's first event
on its SSE stream (GET /api/operations/{id}/events). What happens in between is the normal path: signature,
the app's repository, the deduplicating ledger row, the forge's whole CI verdict (statuses and check runs),
the submission, a worker's claim. The bench then waits for the deploy to finish so the next run starts idle.

    .venv/bin/python bench/webhook_to_deploy.py [--runs N]

Target: median ≤ 1 s.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import statistics
import time
import uuid
from pathlib import Path

from sample_app import ROOT, sample_app
from server_harness import (
    AppRepo,
    ServerProcess,
    all_sse_events,
    client,
    create_token,
    first_sse_event,
    register,
    server_env,
)

from devstack import git

SECRET = "bench webhook secret"
REPO = "acme/hello"


def forge_config(api_url: str) -> str:
    return f"""
forge:
  github: {{repo: {REPO}, token_env: BENCH_GITHUB_TOKEN, api_url: {api_url}, webhook_secret_env: BENCH_HOOK_SECRET,
           deployments: {{enabled: false}}}}
triggers:
  - {{on: push, branch: main, deploy: staging}}
"""


def delivery(http: object, url: str, event: str, payload: dict) -> dict:
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": str(uuid.uuid4()),
               "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
    response = http.post(f"{url}/webhooks/github", content=body, headers=headers)  # type: ignore[attr-defined]
    if response.status_code != 200:
        raise SystemExit(f"{event}: HTTP {response.status_code} {response.text}")
    return dict(response.json())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.fakes.github import FakeGitHub

    with sample_app() as app:
        remote = app.repo.parent / "remote.git"
        github = FakeGitHub(REPO, token="bench-token", git_dir=remote)
        config = app.repo / "conveyor.yml"
        config.write_text(config.read_text() + forge_config(github.api_url))
        git(app.repo, "commit", "-qam", "bench: ship through GitHub")
        shas = []
        for name in ("a", "b"):
            (app.repo / f"{name}.txt").write_text(name)
            git(app.repo, "add", f"{name}.txt")
            git(app.repo, "commit", "-qm", f"bench commit {name}")
            shas.append(git(app.repo, "rev-parse", "HEAD"))
            app.conveyor("build", shas[-1])
        git(app.repo, "push", "-q", "-f", "origin", "main")
        git(remote, "symbolic-ref", "HEAD", "refs/heads/main")  # the default branch the server reads
        home = Path(os.environ["CONVEYOR_HOME"])
        env = server_env(home, None, BENCH_HOOK_SECRET=SECRET, BENCH_GITHUB_TOKEN="bench-token",
                         CONVEYOR_TRIGGER_POLL="0")
        token = create_token(env, "bench", "admin")
        server = ServerProcess.start(env, home.parent / "server.log")
        try:
            api = client(server.url, token)
            register(api, AppRepo("hello", app.repo, remote, shas[-1]))
            timings = [one_run(api, server.url, github, shas[n % 2]) for n in range(args.runs + 1)][1:]
        finally:
            server.stop()
            github.down()
    print(f"webhook (CI green) → staging deploy's first event, {args.runs} runs (after 1 warm-up): "
          f"median {statistics.median(timings) * 1000:.0f} ms, min {min(timings) * 1000:.0f} ms, "
          f"max {max(timings) * 1000:.0f} ms (target: median ≤ 1000 ms)")


def one_run(api: object, url: str, github: object, sha: str) -> float:
    context = f"ci/{uuid.uuid4().hex[:8]}"  # a fresh context each run: the verdict is this run's
    github.set_status(sha, context, "pending")  # type: ignore[attr-defined]
    push = {"ref": "refs/heads/main", "after": sha, "deleted": False, "repository": {"full_name": REPO},
            "sender": {"login": "bench"}}
    said = delivery(api, url, "push", push)
    if "waiting for CI" not in said["outcome"]:
        raise SystemExit(f"the push was not left waiting for CI: {said}")
    github.set_status(sha, context, "success")  # type: ignore[attr-defined]
    status = {"sha": sha, "state": "success", "context": context, "repository": {"full_name": REPO},
              "sender": {"login": "bench"}}
    started = time.perf_counter()
    said = delivery(api, url, "status", status)
    if "queued as operation #" not in said["outcome"]:
        raise SystemExit(f"the green status queued nothing: {said}")
    number = int(said["outcome"].rsplit("#", 1)[1].split()[0])
    name, data = first_sse_event(api, number)
    elapsed = time.perf_counter() - started
    if name != "progress":
        raise SystemExit(f"operation #{number}'s first event is {name}: {data}")
    final = json.loads(all_sse_events(api, number)[-1][1])
    if final["state"] != "succeeded":
        raise SystemExit(f"operation #{number} {final['state']}: {final['result']}")
    return elapsed


if __name__ == "__main__":
    main()
