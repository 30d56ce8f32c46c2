"""Announcements: what a release's or a block's state change tells the destinations `notify:` names.

Building is separate from sending: `release_announcement` and `block_announcement` make the documented JSON
payload (docs/schemas/webhook-payload.json), `queued` pairs it with each destination that wants the event
(`destinations_for`, a pure function the server will call with its org-wide defaults too), and the outbox
handlers at the bottom send it through the adapters in conveyor/notify/. Payloads name the env vars holding
tokens and secrets, never their values, which are read at delivery.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from typing import Any

from conveyor.config.notify import Destination, Notify
from conveyor.errors import ConveyorError
from conveyor.ledger.models import Block, OutboxItem, Release
from conveyor.pipeline.workspace import Workspace

SCHEMA_VERSION = 1
SLACK, WEBHOOK, GRAFANA, DATADOG = "slack", "webhook", "grafana", "datadog"
SHOWN_COMMITS = 5
AUTHOR_SCAN = 200  # commits read for the authors a failure mentions
LOG_TAIL = 15


# ---------------------------------------------------------------------------------------------- routing


def resolve_destinations(app_notify: Notify, defaults: list[Destination] | None = None) -> list[Destination]:
    """The app's destinations, then the org-wide defaults whose names the app does not use itself."""
    own = {destination.label for destination in app_notify.destinations}
    return [*app_notify.destinations, *(d for d in defaults or [] if d.label not in own)]


def destinations_for(destinations: list[Destination], event: str, env: str) -> list[Destination]:
    """Those that want `event` from `env` ("" for an app- or org-wide block, which concerns every env)."""
    return [d for d in destinations
            if event in d.events and (d.environments is None or not env or env in d.environments)]


def release_event(release: Release) -> str:
    """The event a release's status announces."""
    if release.status in ("pending", "running"):
        return "started"
    if release.status == "succeeded" and release.kind == "rollback":
        return "rolled_back"
    return release.status


# ---------------------------------------------------------------------------------------------- content


def release_announcement(ws: Workspace, release: Release, event: str) -> dict[str, Any]:
    previous = ws.ledger.get_release(release.app, release.env, release.previous_number) \
        if release.previous_number else None
    duration = (release.finished_at - release.started_at).total_seconds() \
        if release.finished_at and release.started_at else None
    body = {
        "number": release.number, "kind": release.kind, "status": release.status, "sha": release.sha,
        "image": release.image, "previous_number": release.previous_number, "actor": release.actor,
        "origin": release.origin, "reason": release.reason, "forced": release.forced,
        "error": release.error.splitlines()[0] if release.error else "",
        "started_at": _iso(release.started_at), "finished_at": _iso(release.finished_at),
        "duration_seconds": duration, "trace_id": release.trace_id or None, "env": release.env,
        "commits": _commits(ws, previous, release, with_authors=event == "failed"),
        "links": _links(ws, release, previous),
        "log_tail": _log_tail(ws, release) if event == "failed" else [],
        "does_not_undo": _not_undone(ws, release) if release.kind == "rollback" else [],
    }
    return _envelope(ws, event, release.env, f"release-{release.id}", release=body)


def block_announcement(ws: Workspace, block: Block, event: str, lifted_by: str = "") -> dict[str, Any]:
    body = {"id": block.id, "scope": block.scope, "reason": block.reason, "actor": block.actor,
            "until": _iso(block.until), "created_at": _iso(block.created_at), "lifted_by": lifted_by}
    return _envelope(ws, event, block.env, f"block-{block.id}", block=body)


def test_announcement(ws: Workspace) -> dict[str, Any]:
    return _envelope(ws, "test", "", f"test-{uuid.uuid4().hex}")


def _envelope(ws: Workspace, event: str, env: str, operation: str, *, release: dict[str, Any] | None = None,
              block: dict[str, Any] | None = None) -> dict[str, Any]:
    from datetime import UTC

    return {
        "schema_version": SCHEMA_VERSION, "id": f"msg_{uuid.uuid4().hex}", "event": event,
        "operation": operation, "app": ws.config.app, "env": env, "actor": ws.identity.actor,
        "origin": ws.identity.origin, "timestamp": datetime.now(UTC).isoformat(),
        "release": release, "block": block,
    }


def _commits(ws: Workspace, previous: Release | None, release: Release, *, with_authors: bool) -> dict[str, Any]:
    """What the release ships over the previous one (a rollback: what it takes back)."""
    older, newer, direction = (previous.sha if previous else None), release.sha, "ships"
    if previous is not None and release.kind == "rollback":
        older, newer, direction = release.sha, previous.sha, "removes"
    rows = ws.repo.commit_authors(older, newer, AUTHOR_SCAN if with_authors else SHOWN_COMMITS)
    authors = list({email: {"name": name, "email": email} for _, name, email, _ in rows}.values())
    return {
        "count": ws.repo.commit_count(older, newer), "direction": direction,
        "shown": [{"sha": sha, "author": name, "subject": subject} for sha, name, _, subject in rows[:SHOWN_COMMITS]],
        "authors": authors if with_authors else [],
    }


def release_page_template(public_url: str | None) -> str | None:
    """The dashboard's release page on a server started with --public-url, for apps that name no page."""
    return f"{public_url.rstrip('/')}/apps/{{app}}/releases/{{env}}/{{number}}" if public_url else None


def _links(ws: Workspace, release: Release, previous: Release | None) -> dict[str, str | None]:
    from conveyor.pipeline.diff import compare_url
    from conveyor.vcs.git import History

    template = ws.config.notify.release_page or release_page_template(ws.public_url)
    page = template.format(app=release.app, env=release.env, number=release.number) if template else None
    compare = None
    if previous is not None and previous.sha != release.sha:
        remote = History(ws.repo).remote_url(ws.config.release_refs.remote)
        compare = compare_url(remote, previous.sha, release.sha) if remote else None
    trace_page = ws.config.notify.trace_page
    trace = trace_page.format(trace_id=release.trace_id) if trace_page and release.trace_id else None
    return {"release_page": page, "compare": compare, "trace": trace}


def _log_tail(ws: Workspace, release: Release) -> list[str]:
    return [event.message for event in ws.ledger.events(release_id=release.id, step="logs")][-LOG_TAIL:]


def _not_undone(ws: Workspace, release: Release) -> list[str]:
    from conveyor.pipeline.operations import tasks_not_undone

    target = ws.ledger.get_release_by_id(release.source_release_id) if release.source_release_id else None
    live = ws.ledger.get_release(release.app, release.env, release.previous_number) \
        if release.previous_number else None
    return tasks_not_undone(ws, release.env, target, live) if target else []


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


# ---------------------------------------------------------------------------------------------- queueing


def queued(ws: Workspace, event: str, env: str, build: Any) -> list[tuple[str, dict[str, Any]]]:
    """Outbox items for every destination wanting `event`; `build()` makes the announcement only if one does."""
    wanted = destinations_for(resolve_destinations(ws.config.notify, ws.notify_defaults), event, env)
    if not wanted:
        return []
    announcement = build()
    return [(d.kind, {"destination": _destination(d), "announcement": announcement}) for d in wanted]


def release_items(ws: Workspace, release: Release) -> list[tuple[str, dict[str, Any]]]:
    event = release_event(release)
    return queued(ws, event, release.env, lambda: release_announcement(ws, release, event))


def block_items(ws: Workspace, block: Block) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    event = "freeze" if block.scope == "org" else "blocked"
    return ws.config.app, queued(ws, event, block.env, lambda: block_announcement(ws, block, event))


def unblock_items(ws: Workspace, lifted: list[Block]) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    actor = ws.identity.actor
    items = [item for block in lifted
             for item in queued(ws, "unblocked", block.env,
                                lambda block=block: block_announcement(ws, block, "unblocked", actor))]
    return ws.config.app, items


def _destination(destination: Destination) -> dict[str, Any]:
    """What delivery needs, frozen at queueing time: settings and env var names, never a secret's value."""
    return {"name": destination.label, **destination.settings.model_dump()}


# ---------------------------------------------------------------------------------------------- delivery


class _Announcements:
    """The outbox handler shape shared by both kinds; `owed` answers for a release's final status."""

    kind = ""
    retry_delays: tuple[float, ...] = ()  # one attempt per run: a deploy never waits on a chat outage
    # Both kinds are asked for the same outcome in turn: the announcement (git, ledger reads) is built once.
    _built: tuple[tuple[int, str, datetime], list[tuple[str, dict[str, Any]]]] | None = None

    def owed(self, ws: Workspace, release: Release, finished_at: datetime) -> list[dict[str, Any]]:
        from dataclasses import replace

        key = (release.id, release.status, finished_at)
        if _Announcements._built is None or _Announcements._built[0] != key:
            _Announcements._built = (key, release_items(ws, replace(release, finished_at=finished_at)))
        return [payload for kind, payload in _Announcements._built[1] if kind == self.kind]

    def lane(self, item: OutboxItem) -> str:
        return f"{self.kind}:{item.payload['destination']['name']}"

    def describe(self, item: OutboxItem) -> str:
        announcement = item.payload["announcement"]
        release = announcement.get("release")
        what = f"{announcement['env']}#{release['number']}" if release else announcement["operation"]
        return f"announce {announcement['event']} of {what} to {self.kind} {item.payload['destination']['name']}"


class SlackAnnouncements(_Announcements):
    kind = SLACK
    _members: dict[tuple[str, str], str | None] = {}  # (api_url, email) → user id, looked up once a process

    def deliver(self, ws: Workspace, item: OutboxItem) -> None:
        from conveyor.notify.slack import IncomingWebhook, render

        destination, announcement = item.payload["destination"], item.payload["announcement"]
        if destination.get("webhook_url_env"):
            IncomingWebhook(_secret(destination["webhook_url_env"])).post(render(announcement, {}))
            return
        client = self._client(destination)
        text = render(announcement, self._mentions(client, destination, announcement))
        ts, channel = self._post_or_update(ws, client, destination, announcement, text)
        tail = (announcement.get("release") or {}).get("log_tail")
        if tail:
            self._thread_logs(ws, client, destination, announcement, channel, ts, tail)

    def send_now(self, destination: dict[str, Any], announcement: dict[str, Any]) -> None:
        """`notify test`: post once, outside the outbox."""
        from conveyor.notify.slack import IncomingWebhook, render

        text = render(announcement, {})
        if destination.get("webhook_url_env"):
            IncomingWebhook(_secret(destination["webhook_url_env"])).post(text)
        else:
            self._client(destination).post_message(destination["channel"], text)

    @staticmethod
    def _client(destination: dict[str, Any]) -> Any:
        from conveyor.notify.slack import SlackClient

        return SlackClient(destination["api_url"], _secret(destination["token_env"]))

    def _mentions(self, client: Any, destination: dict[str, Any], announcement: dict[str, Any]) -> dict[str, str]:
        """`<@U…>` per shipped commit's author email that Slack knows; a failure mentions them."""
        release = announcement.get("release") or {}
        mentions = {}
        for author in release.get("commits", {}).get("authors", []):
            key = (destination["api_url"], author["email"])
            if key not in self._members:
                self._members[key] = client.user_id_by_email(author["email"])
            if self._members[key]:
                mentions[author["email"]] = f"<@{self._members[key]}>"
        return mentions

    def _post_or_update(self, ws: Workspace, client: Any, destination: dict[str, Any],
                        announcement: dict[str, Any], text: str) -> tuple[str, str]:
        """Update the operation's message if it has one, else post it. A claim without a ts means an earlier
        run may have posted and died before storing the ts: Slack is asked for the message first."""
        app, name, operation = announcement["app"], destination["name"], announcement["operation"]
        message = ws.ledger.notify_message(app, name, operation)
        found = None
        if message is not None and message.ts is not None:
            found = (message.channel, message.ts)
        elif message is not None:
            found = client.find_posted(destination["channel"], operation, message.claimed_at.timestamp() - 60)
            if found:
                ws.ledger.set_notify_ts(app, name, operation, channel=found[0], ts=found[1])
        if found:
            client.update(found[0], found[1], text)
            return found[1], found[0]
        ws.ledger.claim_notify_message(app, name, operation, destination["channel"])
        channel, ts = client.post_message(destination["channel"], text, operation=operation)
        ws.ledger.set_notify_ts(app, name, operation, channel=channel, ts=ts)
        return ts, channel

    @staticmethod
    def _thread_logs(ws: Workspace, client: Any, destination: dict[str, Any], announcement: dict[str, Any],
                     channel: str, ts: str, tail: list[str]) -> None:
        """The last log lines as a reply: at most once (a claim left by a killed run is not posted again)."""
        from conveyor.notify.slack import log_thread_text

        app, name, operation = announcement["app"], destination["name"], f"{announcement['operation']}:logs"
        if ws.ledger.notify_message(app, name, operation) is not None:
            return
        ws.ledger.claim_notify_message(app, name, operation, channel)
        _, reply = client.post_message(channel, log_thread_text(tail), thread_ts=ts)
        ws.ledger.set_notify_ts(app, name, operation, channel=channel, ts=reply)


class WebhookAnnouncements(_Announcements):
    kind = WEBHOOK

    def deliver(self, ws: Workspace, item: OutboxItem) -> None:
        self.send_now(item.payload["destination"], item.payload["announcement"])

    def send_now(self, destination: dict[str, Any], announcement: dict[str, Any]) -> None:
        import json

        from conveyor.notify.webhook import send

        body = json.dumps(announcement, sort_keys=True, separators=(",", ":")).encode()
        send(destination["url"], _secret(destination["secret_env"]), announcement["id"], body)


class GrafanaAnnotations(_Announcements):
    """A deploy marker on Grafana's graphs (an annotation tagged app:… env:…); one attempt per run."""

    kind = GRAFANA

    def deliver(self, ws: Workspace, item: OutboxItem) -> None:
        self.send_now(item.payload["destination"], item.payload["announcement"])

    def send_now(self, destination: dict[str, Any], announcement: dict[str, Any]) -> None:
        from conveyor.notify.grafana import annotation, send

        send(destination["api_url"], _secret(destination["token_env"]), annotation(announcement, destination))


class DatadogEvents(_Announcements):
    """A Datadog event tagged app:… env:…, shown on graphs as a marker; one attempt per run."""

    kind = DATADOG

    def deliver(self, ws: Workspace, item: OutboxItem) -> None:
        self.send_now(item.payload["destination"], item.payload["announcement"])

    def send_now(self, destination: dict[str, Any], announcement: dict[str, Any]) -> None:
        from conveyor.notify.datadog import event, send

        send(destination["api_url"], _secret(destination["api_key_env"]), event(announcement, destination))


def _secret(name: str) -> str:
    from conveyor.notify.base import Refused

    value = os.environ.get(name)
    if not value:
        raise Refused(f"env var {name} is not set in conveyor's environment")
    return value


# ---------------------------------------------------------------------------------------------- notify test


def send_test(ws: Workspace, name: str | None) -> list[tuple[str, str | None]]:
    """Send a sample message to the destination named (default: every one); (name, error or None) each."""
    from conveyor.errors import BadInput
    from conveyor.pipeline.outbox import HANDLERS

    destinations = resolve_destinations(ws.config.notify, ws.notify_defaults)
    if name is not None:
        destinations = [d for d in destinations if d.label == name]
        if not destinations:
            every = resolve_destinations(ws.config.notify, ws.notify_defaults)
            known = ", ".join(d.label for d in every) or "none configured"
            raise BadInput(f"no notify destination named '{name}' (destinations: {known})")
    if not destinations:
        raise BadInput("conveyor.yml has no `notify:` destinations to test")
    results = []
    for destination in destinations:
        handler = HANDLERS[destination.kind]
        try:
            handler.send_now(_destination(destination), test_announcement(ws))  # type: ignore[attr-defined]
            results.append((destination.label, None))
        except ConveyorError as exc:
            results.append((destination.label, ws.redactor.text(exc.message)))
    return results
