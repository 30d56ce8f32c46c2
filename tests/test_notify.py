"""Announcements (issue 12): Slack and signed webhooks through the outbox, against an in-repo Slack Web API
server and a receiver that verifies signatures with the `standardwebhooks` library. Real git, registry,
podman, HAProxy and SQLite throughout."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e import App
from tests.gate import Gate, gate_fixture, wait_out_lease  # noqa: F401  (a fixture)
from tests.notify_setup import HOOK_SECRET, SLACK_TOKEN, Announced, announced, check_schema


@pytest.fixture
def notified(app: App, tmp_path: Path) -> Iterator[Announced]:
    setup = announced(app, tmp_path)
    yield setup
    setup.slack.close()
    setup.hooks.close()


@pytest.fixture
def notified_from_start(app: App, tmp_path: Path) -> Iterator[Announced]:
    """Slack also wants `started`, so each release's message is posted, then updated in place."""
    everything = ["started", "succeeded", "failed", "rolled_back", "interrupted", "blocked", "unblocked", "freeze"]
    setup = announced(app, tmp_path, slack_events=everything, hook_events=everything)
    yield setup
    setup.slack.close()
    setup.hooks.close()


def test_each_release_is_one_message_updated_in_place_and_one_signed_webhook_per_event(
        notified_from_start: Announced) -> None:
    n = notified_from_start
    n.ok("deploy", "staging", "v1")
    (first,) = n.slack.top_level()
    assert first.updates and "succeeded" in first.text and "started" not in first.text
    assert "*hello* staging#1 deploy succeeded" in first.text
    assert "by Sample Dev &lt;dev@example.com&gt;" in first.text
    n.ok("deploy", "staging", "v2")
    first_again, second = n.slack.top_level()
    assert first_again.text == first.text  # the earlier release's message is left as it was
    assert len(second.updates) == 1 and "staging#2 deploy succeeded" in second.text
    assert "ships 1 commit(s) over staging#1:" in second.text
    assert "• hello v2 — Sample Dev" in second.text
    assert "<https://conveyor.example.com/hello/staging/2|release page>" in second.text
    events = [(p["event"], p["release"]["number"]) for p in n.hooks.payloads()]
    assert events == [("started", 1), ("succeeded", 1), ("started", 2), ("succeeded", 2)]
    assert not n.hooks.rejected  # every delivery's signature verified by standardwebhooks
    check_schema(n.hooks.payloads())
    assert n.outbox() == []


def test_a_failed_deploy_says_why_mentions_the_authors_and_threads_the_logs(notified: Announced) -> None:
    n = notified
    n.ok("deploy", "staging", "v2")
    assert n.run("deploy", "staging", "crash").code == 1
    failed = n.slack.top_level()[-1]
    assert "staging#2 deploy failed" in failed.text
    assert "why: " in failed.text
    assert "cc <@U0DEV>" in failed.text  # the crash commit's author, found by email
    assert n.slack.lookups == ["dev@example.com"]
    (thread,) = n.slack.replies(failed.ts)
    assert thread.text.startswith("last log lines:")
    payload = n.hooks.payloads()[-1]
    assert payload["event"] == "failed" and payload["release"]["error"]
    assert payload["release"]["commits"]["authors"] == [{"name": "Sample Dev", "email": "dev@example.com"}]
    check_schema(n.hooks.payloads())


def test_a_rollback_says_what_it_does_not_undo(notified: Announced) -> None:
    n = notified
    n.ok("deploy", "staging", "v1")
    n.ok("deploy", "staging", "v2")
    n.ok("rollback", "staging")
    rolled = n.texts()[-1]
    assert "staging#3 rollback rolled back" in rolled
    assert "takes back 1 commit(s) over staging#2:" in rolled
    assert "not undone by this rollback: task 'migrate' ran in staging#2" in rolled
    payload = n.hooks.payloads()[-1]
    assert payload["event"] == "rolled_back" and payload["release"]["does_not_undo"]
    check_schema(n.hooks.payloads())


def test_blocks_and_freezes_are_announced_with_who_why_and_until(notified: Announced) -> None:
    n = notified
    n.ok("lock", "staging", "--reason", "database maintenance", "--until", "2h")
    (blocked,) = n.slack.top_level()
    assert "*hello* staging blocked by Sample Dev &lt;dev@example.com&gt; until 20" in blocked.text
    assert blocked.text.endswith(": database maintenance")
    n.ok("unlock", "staging")
    (same,) = n.slack.top_level()  # the block's message, updated in place
    assert "unblocked by Sample Dev" in same.text and same.updates
    n.ok("lock", "--org", "--reason", "holiday freeze")
    assert "the whole organisation frozen by Sample Dev &lt;dev@example.com&gt; until lifted: holiday freeze" \
        in n.texts()[-1]
    events = [(p["event"], p["block"]["scope"]) for p in n.hooks.payloads()]
    assert events == [("blocked", "env"), ("unblocked", "env"), ("freeze", "org")]
    until = datetime.fromisoformat(n.hooks.payloads()[0]["block"]["until"])
    assert until > datetime.now(UTC)
    check_schema(n.hooks.payloads())


def test_a_slack_outage_changes_no_outcome_and_delivers_in_order_afterwards(notified: Announced) -> None:
    n = notified
    n.slack.down()
    first = n.ok("deploy", "staging", "v1")
    n.ok("deploy", "staging", "v2")
    assert "not delivered" in first.err
    assert [r["status"] for r in n.app.history("staging")] == ["succeeded", "succeeded"]
    waiting = [item for item in n.outbox() if item["kind"] == "slack"]
    assert len(waiting) == 2
    assert "unreachable" in waiting[0]["waiting"]
    assert waiting[1]["waiting"].startswith(f"waits behind #{waiting[0]['id']}")
    assert len(n.hooks.payloads()) == 2  # the webhook is not held up by Slack's outage
    n.slack.up()
    n.ok("outbox", "flush")
    texts = n.texts()
    assert len(texts) == 2 and "staging#1" in texts[0] and "staging#2" in texts[1]
    assert n.outbox() == []


def test_a_rate_limit_is_waited_out_as_slack_asks(notified: Announced) -> None:
    n = notified
    n.slack.rate_limit(1, retry_after=120)
    n.ok("deploy", "staging", "v1")
    (item,) = [i for i in n.outbox() if i["kind"] == "slack"]
    retry_at = datetime.fromisoformat(item["next_attempt_at"])
    assert (retry_at - datetime.now(UTC)).total_seconds() > 100
    assert item["waiting"].startswith("backoff until") and "429" in item["waiting"]
    calls = len(n.slack.calls)
    n.ok("deploy", "staging", "v2")
    assert len(n.slack.calls) == calls  # the later run honours Retry-After: Slack is not asked again
    n.ok("outbox", "flush")
    assert [t.split(" deploy")[0].split()[-1] for t in n.texts()] == ["staging#1", "staging#2"]


def test_a_revoked_token_stops_the_destination_and_status_says_so(notified: Announced) -> None:
    n = notified
    n.slack.revoke()
    deployed = n.ok("deploy", "staging", "v1")
    assert "stopped (Slack chat.postMessage refused: invalid_auth)" in deployed.err
    assert SLACK_TOKEN not in deployed.err + deployed.out
    status = n.ok("status").out
    assert "STOPPED: Slack chat.postMessage refused: invalid_auth" in status
    calls = len(n.slack.calls)
    n.ok("deploy", "staging", "v2")
    assert len(n.slack.calls) == calls  # stopped: later runs do not hammer Slack with a dead token
    assert len(n.hooks.payloads()) == 2
    n.slack._revoked = False  # the token is replaced
    n.ok("outbox", "flush")
    assert len(n.texts()) == 2 and n.outbox() == []


def test_a_webhook_answering_410_is_disabled_with_a_visible_reason(notified: Announced) -> None:
    n = notified
    n.hooks.status = 410
    n.ok("deploy", "staging", "v1")
    (item,) = n.outbox()
    assert item["kind"] == "webhook"
    assert "STOPPED: webhook answered 410 Gone" in item["waiting"]
    assert len(n.texts()) == 1  # Slack got its message all the same
    assert HOOK_SECRET not in n.ok("status").out


def test_a_kill_between_the_state_change_and_delivery_still_delivers_exactly_once(notified: Announced) -> None:
    from conveyor.pipeline.outbox import DELIVERY_LOCK

    n = notified
    hold = n.slack.hold("chat.postMessage")
    deploy = n.app.start("--config", str(n.config), "deploy", "staging", "v1")
    assert hold.arrived.wait(120), "the deploy never posted its announcement"
    os.kill(deploy.pid, signal.SIGKILL)  # Slack has the message; conveyor never heard its ts
    deploy.wait()
    hold.released.set()
    assert [r["status"] for r in n.app.history("staging")] == ["succeeded"]
    wait_out_lease(n.app, DELIVERY_LOCK)
    n.ok("outbox", "flush")
    messages = n.slack.top_level()
    assert len(messages) == 1, [m.text for m in messages]
    assert "staging#1 deploy succeeded" in messages[0].text and messages[0].updates  # found again, not posted twice
    assert [p["event"] for p in n.hooks.payloads()] == ["succeeded"]
    assert n.outbox() == []


def test_secret_values_are_never_stored(notified: Announced) -> None:
    n = notified
    n.slack.revoke()
    n.ok("deploy", "staging", "v1")
    stored = n.stored_bytes()
    assert SLACK_TOKEN.encode() not in stored and HOOK_SECRET.encode() not in stored
    assert b"SLACK_TOKEN" in stored  # the env var's name is what the outbox keeps


def test_notify_test_sends_a_sample_to_the_destination_named(notified: Announced) -> None:
    n = notified
    sent = n.ok("notify", "test", "slack-dev")
    assert sent.out.strip() == "slack-dev: sent"
    assert "conveyor test message for *hello*" in n.texts()[0]
    both = n.ok("notify", "test")
    port = n.hooks.url.split(":")[2].split("/")[0]
    assert both.out.splitlines() == ["slack-dev: sent", f"webhook-127-0-0-1-{port}: sent"]
    check_schema(n.hooks.payloads())
    unknown = n.run("notify", "test", "nope")
    assert unknown.code == 2 and "no notify destination named 'nope'" in unknown.err
    assert "Traceback" not in unknown.err
    n.slack.revoke()
    refused = n.run("notify", "test", "slack-dev")
    assert refused.code == 1 and "slack-dev: FAILED: Slack chat.postMessage refused: invalid_auth" in refused.out


def test_a_destination_without_a_token_is_bad_input_on_one_line(notified: Announced) -> None:
    n = notified
    n.config.write_text(n.config.read_text().replace("token_env: SLACK_TOKEN, ", ""))
    result = n.run("deploy", "staging", "v1")
    assert result.code == 2, result.err
    assert "give channel and token_env" in result.err and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) <= 2


def test_a_release_whose_holder_was_killed_is_announced_as_interrupted_by_recover(
        notified: Announced, gate: Gate) -> None:
    n = notified
    text = n.config.read_text()
    start = text.index("    command:", text.index("  - name: migrate"))
    n.config.write_text(text[:start] + f"    command: {gate.task_command()}" + text[text.index("\n", start):])
    gate.hold()
    deploy = n.app.start("--config", str(n.config), "deploy", "staging", "v1")
    gate.wait_arrival()
    os.kill(deploy.pid, signal.SIGKILL)
    deploy.wait()
    gate.release()
    wait_out_lease(n.app, "staging")
    n.ok("recover", "staging", "--reason", "the deploy was killed")
    assert "staging#1 deploy interrupted" in n.texts()[-1]
    assert "why: holder stopped heartbeating during step 'task:migrate'" in n.texts()[-1]
    assert [p["event"] for p in n.hooks.payloads()] == ["interrupted"]
    check_schema(n.hooks.payloads())


def test_a_slack_incoming_webhook_gets_each_announcement_and_its_url_is_kept_secret(notified: Announced) -> None:
    n = notified
    url = n.slack.incoming_webhook_url
    n.config.write_text(n.config.read_text().replace(
        "  destinations:\n",
        "  destinations:\n    - slack: {webhook_url_env: SLACK_WEBHOOK_URL}\n      events: [succeeded]\n"))
    n.app.extra_env["SLACK_WEBHOOK_URL"] = url
    n.ok("deploy", "staging", "v1")
    assert n.slack.calls.count("incoming-webhook") == 1
    assert sum("staging#1 deploy succeeded" in text for text in n.texts()) == 2  # the bot's and the webhook's
    assert url.encode() not in n.stored_bytes() and b"SLACK_WEBHOOK_URL" in n.stored_bytes()
    n.slack.webhook_path = "/services/T000/B000/revoked"
    n.ok("deploy", "staging", "v2")
    (stopped,) = n.outbox()
    assert "STOPPED: Slack incoming webhook refused: HTTP 404 no_service" in stopped["waiting"]
