"""Announcements without a deploy: routing (the pure function the server will call with its org-wide
defaults), message text, Slack's error classes, and Standard Webhooks signatures checked by the library."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from conveyor.config.notify import Destination, Notify


def _slack(name: str, **extra: Any) -> Destination:
    return Destination.model_validate({"name": name, "slack": {"channel": "#dev", "token_env": "T"}, **extra})


def test_org_defaults_add_to_the_apps_destinations_unless_the_app_names_its_own() -> None:
    from conveyor.pipeline.announce import resolve_destinations

    app = Notify.model_validate([{"name": "team", "slack": {"channel": "#team", "token_env": "T"}}])
    defaults = [_slack("team"), _slack("audit")]
    assert [(d.label, d.slack.channel if d.slack else None) for d in resolve_destinations(app, defaults)] == \
        [("team", "#team"), ("audit", "#dev")]
    assert [d.label for d in resolve_destinations(app)] == ["team"]


def test_events_and_environments_choose_the_destinations() -> None:
    from conveyor.pipeline.announce import destinations_for

    default = _slack("default")
    prod_failures = _slack("prod", events=["failed"], environments=["production"])
    both = [default, prod_failures]
    assert [d.label for d in destinations_for(both, "started", "staging")] == []  # not wanted by default
    assert [d.label for d in destinations_for(both, "failed", "staging")] == ["default"]
    assert [d.label for d in destinations_for(both, "failed", "production")] == ["default", "prod"]
    assert [d.label for d in destinations_for([prod_failures], "failed", "")] == ["prod"]  # app-wide: every env


def test_a_destination_is_slack_or_webhook_and_names_are_distinct() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="exactly one of them"):
        Destination.model_validate({"slack": {"channel": "#a", "token_env": "T"},
                                    "webhook": {"url": "https://x", "secret_env": "S"}})
    with pytest.raises(ValidationError, match="named 'slack-dev'"):
        Notify.model_validate([{"slack": {"channel": "#dev", "token_env": "A"}},
                               {"slack": {"channel": "#dev", "token_env": "B"}}])
    assert Destination.model_validate({"webhook": {"url": "https://hooks.example.com/x", "secret_env": "S"}}) \
        .label == "webhook-hooks-example-com"


def _failed(authors: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "event": "failed", "app": "hello", "env": "staging", "operation": "release-3",
        "release": {"number": 3, "kind": "deploy", "sha": "a" * 40, "actor": "ann", "origin": "ci",
                    "duration_seconds": 2.0, "error": "health check failed", "previous_number": 2, "env": "staging",
                    "commits": {"count": 1, "direction": "ships", "authors": authors,
                                "shown": [{"sha": "b" * 40, "author": "Bo", "subject": "fix"}]},
                    "links": {"release_page": None, "compare": None}, "does_not_undo": []},
    }


def test_a_failure_mentions_authors_slack_knows_and_names_the_others() -> None:
    from conveyor.notify.slack import render

    authors = [{"name": "Bo", "email": "bo@example.com"}, {"name": "Cy", "email": "cy@example.com"}]
    text = render(_failed(authors), {"bo@example.com": "<@U1>"})
    assert "why: health check failed" in text
    assert text.splitlines()[-1] == "cc <@U1>, Cy"


def test_slack_errors_that_no_retry_fixes_stop_and_the_others_retry() -> None:
    from conveyor.notify.base import Answer, Refused, Unavailable
    from conveyor.notify.slack import _ok

    def answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
        return Answer(status, headers or {}, json.dumps(body).encode())

    for error in ("invalid_auth", "channel_not_found"):
        with pytest.raises(Refused, match=error):
            _ok("chat.postMessage", answer(200, {"ok": False, "error": error}))
    with pytest.raises(Unavailable, match="internal_error"):
        _ok("chat.postMessage", answer(200, {"ok": False, "error": "internal_error"}))
    with pytest.raises(Unavailable) as limited:
        _ok("chat.postMessage", answer(429, {"ok": False}, {"retry-after": "30"}))
    assert limited.value.retry_after == 30.0


def test_webhook_signatures_verify_with_the_standardwebhooks_library() -> None:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    from conveyor.notify.webhook import signature, signing_key

    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = b'{"event":"succeeded"}'
    import time

    stamp = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(stamp),
               "webhook-signature": signature(signing_key(secret), "msg_1", stamp, body)}
    assert Webhook(secret).verify(body, headers) == {"event": "succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


def test_text_from_commits_and_people_cannot_ping_a_channel() -> None:
    from conveyor.notify.slack import render

    announcement = _failed([])
    announcement["release"]["commits"]["shown"] = [{"sha": "c" * 40, "author": "Eve", "subject": "<!channel> hi"}]
    text = render(announcement, {})
    assert "&lt;!channel&gt; hi" in text and "<!channel>" not in text
