"""Slack: the Web API with a bot token (chat.postMessage, chat.update, users.lookupByEmail,
conversations.history), and incoming webhooks. `render` turns an announcement (docs/schemas/
webhook-payload.json) into the message text; the token never appears in an error."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from conveyor.notify.base import Answer, Refused, Unavailable, post, retry_after

# ok:false errors that no retry fixes until someone acts; any other error is retried with backoff.
STOPPING_ERRORS = frozenset({
    "invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired", "no_permission",
    "missing_scope", "channel_not_found", "not_in_channel", "is_archived", "restricted_action",
})
METADATA_TYPE = "conveyor_announcement"  # tags our messages, so a half-finished post can be found again
SHOWN_COMMITS = 5


class SlackClient:
    """One bot token against one Web API base URL."""

    def __init__(self, api_url: str, token: str) -> None:
        self._api = api_url.rstrip("/")
        self._token = token

    def post_message(self, channel: str, text: str, *, thread_ts: str | None = None,
                     operation: str | None = None) -> tuple[str, str]:
        """Post; the message's (channel id, ts). `operation` is stored as the message's metadata."""
        body: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False}
        if thread_ts:
            body["thread_ts"] = thread_ts
        if operation:
            body["metadata"] = {"event_type": METADATA_TYPE, "event_payload": {"operation": operation}}
        data = self._call_json("chat.postMessage", body)
        return str(data.get("channel") or channel), str(data["ts"])

    def update(self, channel: str, ts: str, text: str) -> None:
        self._call_json("chat.update", {"channel": channel, "ts": ts, "text": text})

    def user_id_by_email(self, email: str) -> str | None:
        try:
            data = self._call_form("users.lookupByEmail", {"email": email})
        except Refused as exc:
            if "users_not_found" in exc.message:
                return None
            raise
        return str(data["user"]["id"])

    def find_posted(self, channel: str, operation: str, oldest: float) -> tuple[str, str] | None:
        """(channel id, ts) of our message for `operation` posted since `oldest`, if Slack has one."""
        data = self._call_form("conversations.history", {
            "channel": channel, "oldest": f"{oldest:.6f}", "include_all_metadata": "true", "limit": "200",
        })
        for message in data.get("messages", []):
            metadata = message.get("metadata") or {}
            if metadata.get("event_type") == METADATA_TYPE and \
                    (metadata.get("event_payload") or {}).get("operation") == operation:
                return str(data.get("channel") or channel), str(message["ts"])
        return None

    def _call_json(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(method, json.dumps(body).encode(), "application/json; charset=utf-8")

    def _call_form(self, method: str, fields: dict[str, str]) -> dict[str, Any]:
        return self._call(method, urlencode(fields).encode(), "application/x-www-form-urlencoded")

    def _call(self, method: str, body: bytes, content_type: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": content_type}
        answer = post(f"{self._api}/{method}", what=f"Slack {method}", body=body, headers=headers)
        return _ok(method, answer)


def _ok(method: str, answer: Answer) -> dict[str, Any]:
    if answer.status == 429:
        after = retry_after(answer)
        raise Unavailable(f"Slack {method}: rate limited (429, Retry-After {after or '?'}s)", retry_after=after)
    if answer.status >= 500 or answer.status in (408,):
        raise Unavailable(f"Slack {method}: HTTP {answer.status}")
    data = answer.json()
    if not isinstance(data, dict):
        raise Unavailable(f"Slack {method}: HTTP {answer.status} with a body that is not JSON")
    if data.get("ok") is True:
        return data
    error = str(data.get("error") or f"HTTP {answer.status}")
    if error in STOPPING_ERRORS or error == "users_not_found":
        raise Refused(f"Slack {method} refused: {error}")
    raise Unavailable(f"Slack {method}: {error}")


class IncomingWebhook:
    """A Slack incoming webhook: posts only (it cannot update a message)."""

    def __init__(self, url: str) -> None:
        self._url = url

    def post(self, text: str) -> None:
        body = json.dumps({"text": text}).encode()
        answer = post(self._url, what="Slack incoming webhook", body=body,
                      headers={"Content-Type": "application/json"})
        if answer.status == 429:
            raise Unavailable("Slack incoming webhook: rate limited (429)", retry_after=retry_after(answer))
        if answer.status in (403, 404, 410):
            reason = answer.body.decode(errors="replace")[:80]
            raise Refused(f"Slack incoming webhook refused: HTTP {answer.status} {reason}".strip())
        if answer.status >= 300:
            raise Unavailable(f"Slack incoming webhook: HTTP {answer.status}")


# ---------------------------------------------------------------------------------------------- rendering

_ICONS = {"started": ":hourglass_flowing_sand:", "succeeded": ":white_check_mark:", "failed": ":x:",
          "rolled_back": ":rewind:", "interrupted": ":warning:", "blocked": ":no_entry:",
          "unblocked": ":unlock:", "freeze": ":snowflake:", "test": ":wave:"}


def _esc(text: str) -> str:
    """Slack's escaping for text from users and commits: `<!channel>` in a commit subject pings no one."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(announcement: dict[str, Any], mentions: dict[str, str]) -> str:
    """The message text (Slack mrkdwn). `mentions` maps an author's email to `<@U…>`."""
    icon = _ICONS.get(announcement["event"], ":information_source:")
    if announcement.get("release"):
        return f"{icon} " + "\n".join(_release_lines(announcement, mentions))
    if announcement.get("block"):
        return f"{icon} " + _block_line(announcement)
    return f"{icon} conveyor test message for *{announcement['app']}* from {_esc(announcement['actor'])}: " \
           "this destination is set up"


def _release_lines(announcement: dict[str, Any], mentions: dict[str, str]) -> list[str]:
    release = announcement["release"]
    label = f"{announcement['env']}#{release['number']}"
    took = f" in {release['duration_seconds']:.1f}s" if release.get("duration_seconds") is not None else ""
    head = (f"*{announcement['app']}* {label} {release['kind']} {_word(announcement['event'])} — "
            f"`{release['sha'][:12]}` by {_esc(release['actor'])} ({_esc(release['origin'])}){took}")
    lines = [head]
    if announcement["event"] in ("failed", "interrupted") and release.get("error"):
        lines.append(f"why: {_esc(release['error'])}")
    lines += _commit_lines(release)
    if release.get("does_not_undo"):
        lines.append("not undone by this rollback: " + _esc("; ".join(release["does_not_undo"])))
    if announcement["event"] == "failed" and release["commits"]["authors"]:
        names = [mentions.get(a["email"]) or _esc(a["name"]) for a in release["commits"]["authors"]]
        lines.append("cc " + ", ".join(dict.fromkeys(names)))
    links = [f"<{url}|{name}>" for name, url in (("release page", release["links"].get("release_page")),
                                                 ("compare", release["links"].get("compare")),
                                                 ("trace", release["links"].get("trace"))) if url]
    if release.get("trace_id") and not release["links"].get("trace"):
        links.append(f"trace `{release['trace_id']}`")
    if links:
        lines.append(" · ".join(links))
    return lines


def _word(event: str) -> str:
    return {"rolled_back": "rolled back", "started": "started"}.get(event, event)


def _commit_lines(release: dict[str, Any]) -> list[str]:
    commits = release["commits"]
    if not commits["count"]:
        return []
    over = f" over {release['env']}#{release['previous_number']}" if release.get("previous_number") else ""
    verb = "takes back" if commits["direction"] == "removes" else "ships"
    lines = [f"{verb} {commits['count']} commit(s){over}:"]
    lines += [f"• {_esc(c['subject'])} — {_esc(c['author'])}" for c in commits["shown"][:SHOWN_COMMITS]]
    if commits["count"] > len(commits["shown"][:SHOWN_COMMITS]):
        lines.append(f"… and {commits['count'] - len(commits['shown'][:SHOWN_COMMITS])} more")
    return lines


def _block_line(announcement: dict[str, Any]) -> str:
    block = announcement["block"]
    where = {"org": "the whole organisation", "app": f"every environment of *{announcement['app']}*",
             "env": f"*{announcement['app']}* {announcement['env']}"}[block["scope"]]
    if announcement["event"] == "unblocked":
        return (f"{where} unblocked by {_esc(block['lifted_by'])} (was: {_esc(block['reason'])}, blocked by "
                f"{_esc(block['actor'])})")
    until = f" until {block['until']}" if block.get("until") else " until lifted"
    what = "frozen" if announcement["event"] == "freeze" else "blocked"
    return f"{where} {what} by {_esc(block['actor'])}{until}: {_esc(block['reason'])}"


def log_thread_text(lines: list[str]) -> str:
    return "last log lines:\n```\n" + _esc("\n".join(lines)) + "\n```"
