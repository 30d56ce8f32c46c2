"""Helpers for the webhook tests: the sample app configured for GitHub (committed on main, as conveyor reads
its config from commits), signed deliveries sent to a real `conveyor server` with a plain HTTP client, and
real-shaped GitHub payloads."""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
import uuid
from typing import Any

from tests.e2e import App
from tests.server import ServerProcess

SECRET = "hook secret for the tests"
REPO = "acme/hello"


def forge_yaml(api_url: str, *, release_pr: str = "") -> str:
    return f"""
forge:
  github:
    repo: {REPO}
    token_env: HELLO_GITHUB_TOKEN
    api_url: {api_url}
    webhook_secret_env: HELLO_HOOK_SECRET
triggers:
  - {{on: push, branch: main, deploy: staging}}
  - {{on: pull_request_merged, base: release, promote: production}}
{release_pr}"""


def configure_github(app: App, api_url: str, *, release_pr: str = "") -> str:
    """Commit the forge settings on main (built, pushed to the app's remote); its SHA."""
    sha = app.reconfigure(lambda text: text + forge_yaml(api_url, release_pr=release_pr), on="main",
                          message="ship through GitHub")
    app.git("checkout", "-q", "-B", "main", sha)
    app.git("push", "-q", "origin", "main")
    return sha


def start_server(app: App, **env: str) -> ServerProcess:
    settings = {"HELLO_HOOK_SECRET": SECRET, "HELLO_GITHUB_TOKEN": "test-token", "CONVEYOR_TRIGGER_POLL": "0",
                **env}
    server = ServerProcess.start(app, **settings)
    server.add_app()
    return server


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send(server: ServerProcess, event: str, payload: dict[str, Any] | bytes, *, secret: str | None = SECRET,
         delivery: str | None = None, signature: str | None = None) -> tuple[int, Any]:
    """POST one delivery as GitHub does: the raw JSON body, X-GitHub-Event, X-GitHub-Delivery, and
    X-Hub-Signature-256 under `secret` (None sends no signature)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": event, "User-Agent": "GitHub-Hookshot/test",
               "X-GitHub-Delivery": delivery or str(uuid.uuid4())}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    elif secret is not None:
        headers["X-Hub-Signature-256"] = sign(body, secret)
    request = urllib.request.Request(server.url + "/webhooks/github", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def repository(full_name: str = REPO) -> dict[str, Any]:
    owner, name = full_name.split("/")
    return {"id": 1296269, "name": name, "full_name": full_name, "private": False,
            "owner": {"login": owner, "id": 1, "type": "Organization"}, "default_branch": "main",
            "html_url": f"https://github.com/{full_name}"}


def sender(login: str = "octocat") -> dict[str, Any]:
    return {"login": login, "id": 583231, "type": "User"}


def push_payload(sha: str, *, branch: str = "main", before: str = "0" * 40, login: str = "octocat") -> dict[str, Any]:
    return {"ref": f"refs/heads/{branch}", "before": before, "after": sha, "created": False, "deleted": False,
            "forced": False, "commits": [], "head_commit": {"id": sha}, "repository": repository(),
            "pusher": {"name": login}, "sender": sender(login)}


def check_suite_payload(sha: str, conclusion: str = "success", *, login: str = "octocat") -> dict[str, Any]:
    return {"action": "completed", "check_suite": {"id": 118578147, "head_branch": "main", "head_sha": sha,
                                                   "status": "completed", "conclusion": conclusion},
            "repository": repository(), "sender": sender(login)}


def pull_request_payload(number: int, *, merged: bool, merge_commit_sha: str, base: str = "release",
                         head: str = "staging", login: str = "octocat") -> dict[str, Any]:
    pull = {"number": number, "state": "closed", "merged": merged, "merge_commit_sha": merge_commit_sha,
            "base": {"ref": base}, "head": {"ref": head}, "title": "Release", "user": sender(login)}
    return {"action": "closed", "number": number, "pull_request": pull, "repository": repository(),
            "sender": sender(login)}


def operations(server: ServerProcess) -> list[dict[str, Any]]:
    status, body = server.api("GET", "/api/operations?app=hello&limit=500")
    assert status == 200, body
    return list(body["operations"])


def queued_number(outcome: str) -> int:
    """The operation number a delivery's outcome names ("... queued as operation #N")."""
    return int(outcome.rsplit("operation #", 1)[1].split()[0].rstrip(";"))


def new_commit(app: App, note: str, *, on: str = "main", build: bool = True) -> str:
    """A built commit on top of `on` (its conveyor.yml gains a comment), pushed as the new head of main."""
    sha = app.reconfigure(lambda text: text + f"\n# {note}\n", on=on, build=build, message=note)
    app.git("checkout", "-q", "-B", "main", sha)
    app.git("push", "-q", "-f", "origin", "main")
    return sha


def send_merges_from(fake: Any, server: ServerProcess, login: str = "octocat") -> None:
    """Make the fake GitHub deliver `pull_request` closed+merged to the server after each merge, as GitHub's
    webhook does (signed, its own delivery id)."""

    def merged(pull: dict[str, Any]) -> None:
        payload = {"action": "closed", "number": pull["number"], "pull_request": pull, "repository": repository(),
                   "sender": sender(login)}
        send(server, "pull_request", payload)

    fake.on_merged = merged
