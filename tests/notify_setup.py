"""Test helpers for announcements: the in-repo Slack server and webhook receiver wired into an app's config.

The notify settings go in a `--config` file beside the repo (recorded on each release as its config
source), so a test announces without committing and building a new image."""

from __future__ import annotations

import base64
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e import App, Result
from tests.fakes.slack import FakeSlack
from tests.fakes.webhook_receiver import WebhookReceiver

SLACK_TOKEN = "xoxb-test-9f8e7d6c5b4a"
HOOK_SECRET = "whsec_" + base64.b64encode(b"conveyor-test-signing-key-32byte").decode()
SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "schemas" / "webhook-payload.json"
USERS = {"dev@example.com": "U0DEV"}


@dataclass
class Announced:
    app: App
    slack: FakeSlack
    hooks: WebhookReceiver
    config: Path

    def run(self, *args: str, **env: str) -> Result:
        return self.app.run("--config", str(self.config), *args, **env)

    def ok(self, *args: str, **env: str) -> Result:
        result = self.run(*args, **env)
        assert result.code == 0, f"conveyor {' '.join(args)} exited {result.code}:\n{result.err}\n{result.out}"
        return result

    def outbox(self) -> list[dict[str, Any]]:
        return json.loads(self.ok("outbox", "--json").out)

    def texts(self) -> list[str]:
        return [message.text for message in self.slack.top_level()]

    def stored_bytes(self) -> bytes:
        """Everything the ledger holds (its SQLite files, the write-ahead log included)."""
        db = self.app.home / "ledger.db"
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA wal_checkpoint(FULL)")
        return b"".join(p.read_bytes() for p in self.app.home.glob("ledger.db*"))


def notify_yaml(slack: FakeSlack, hooks: WebhookReceiver, slack_events: list[str] | None = None,
                hook_events: list[str] | None = None) -> str:
    slack_line = f'      events: {json.dumps(slack_events)}\n' if slack_events else ""
    hook_line = f'      events: {json.dumps(hook_events)}\n' if hook_events else ""
    return (
        "notify:\n"
        '  release_page: "https://conveyor.example.com/{app}/{env}/{number}"\n'
        "  destinations:\n"
        f'    - slack: {{channel: "#dev", token_env: SLACK_TOKEN, api_url: "{slack.api_url}"}}\n'
        f"{slack_line}"
        f'    - webhook: {{url: "{hooks.url}", secret_env: HOOK_SECRET}}\n'
        f"{hook_line}"
    )


def announced(app: App, tmp_path: Path, **events: list[str]) -> Announced:
    slack = FakeSlack(SLACK_TOKEN, {"#dev": "C0DEV"}, dict(USERS))
    hooks = WebhookReceiver(HOOK_SECRET)
    config = tmp_path / "conveyor-notify.yml"
    config.write_text((app.repo / "conveyor.yml").read_text() + notify_yaml(slack, hooks, **events))
    app.extra_env.update({"SLACK_TOKEN": SLACK_TOKEN, "HOOK_SECRET": HOOK_SECRET})
    return Announced(app, slack, hooks, config)


def check_schema(payloads: list[dict[str, Any]]) -> None:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    for payload in payloads:
        jsonschema.validate(payload, schema, format_checker=jsonschema.FormatChecker())
