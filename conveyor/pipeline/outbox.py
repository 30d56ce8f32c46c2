"""Side effects of a release that must happen eventually: git tags and the ENV branch, and announcements
(Slack, signed webhooks: pipeline/announce.py).

They are queued in the ledger in the same transaction that records the state change, attempted
right after, retried with backoff and jitter, retried by every later operation and by `conveyor outbox
flush`, and delivered strictly in order per lane (a kind and destination: a later release's refs never land
before an earlier one's, and a Slack outage holds up neither the refs nor a webhook). A delivery failure is
reported, never changes the release's outcome or the exit code; one a retry cannot fix (a revoked token, a
webhook gone) stops its lane, is shown with its reason, and is retried only by `conveyor outbox flush`.

Each item has a kind; HANDLERS maps a kind to the Handler that delivers and describes it, and `owed`
asks each handler what a release's outcome owes. One delivery runs at a time per app, under a lease that
heartbeats like an operation's, so a delivery killed midway holds the others up for a TTL, not minutes.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from conveyor.config.models import AppConfig
from conveyor.errors import ConveyorError
from conveyor.ledger.models import Lease, OutboxItem, Release
from conveyor.pipeline.audit import witness_ref
from conveyor.pipeline.lease import BEATS_PER_TTL, TAKEOVER_GRACE_TTLS, Heartbeat
from conveyor.pipeline.workspace import Workspace
from conveyor.settings import lease_ttl

GIT_REFS = "git-refs"
IN_RUN_RETRY_DELAYS = (0.3, 1.0)  # seconds between the attempts made right away
MAX_BACKOFF = timedelta(minutes=30)
DELIVERY_LOCK = "~outbox"  # a lease name no environment can have (env names are [a-z0-9-])


def git_refs_payload(ws: Workspace, config: AppConfig, release: Release, finished_at: datetime) -> dict[str, Any]:
    """The refs to push for a release: tag ENV (moved), tag ENV--YYYY-MM-DD--HH-MM-SS, branch ENV."""
    refs = config.release_refs
    prefix, env = refs.prefix, release.env
    names: dict[str, str] = {}
    if refs.env_tag:
        names["env_tag"] = f"{prefix}{env}"
    if refs.timestamp_tag:
        names["timestamp_tag"] = _distinct_timestamp_tag(ws, release, f"{prefix}{env}", finished_at)
    if refs.env_branch:
        names["env_branch"] = f"{prefix}{env}"
    # The audit witness: delivery points it at the ledger's chain head as it is then (pipeline/audit.py).
    names["audit_ref"] = witness_ref(release.app)
    return {"remote": refs.remote, "sha": release.sha, "release": f"{env}#{release.number}", **names}


def _distinct_timestamp_tag(ws: Workspace, release: Release, base: str, finished_at: datetime) -> str:
    stamp = f"{base}--{finished_at.astimezone(UTC):%Y-%m-%d--%H-%M-%S}"
    second = finished_at.replace(microsecond=0)
    taken = {
        item.payload.get("timestamp_tag")
        for item in ws.ledger.outbox_items(app=release.app, env=release.env, since=second - timedelta(seconds=1))
    }
    name, suffix = stamp, 2
    while name in taken:
        name, suffix = f"{stamp}-{suffix}", suffix + 1
    return name


def refspecs(payload: dict[str, Any], witness: str | None = None) -> list[str]:
    """Only the ENV tag and the ENV branch may be force-moved; a timestamp tag is never overwritten.
    `witness` is the audit witness blob to point audit_ref at (it moves forward only: audit.py decides)."""
    sha = payload["sha"]
    specs = []
    if "env_tag" in payload:
        specs.append(f"+{sha}:refs/tags/{payload['env_tag']}")
    if "timestamp_tag" in payload:
        specs.append(f"{sha}:refs/tags/{payload['timestamp_tag']}")
    if "env_branch" in payload:
        specs.append(f"+{sha}:refs/heads/{payload['env_branch']}")
    if witness is not None and "audit_ref" in payload:
        specs.append(f"+{witness}:{payload['audit_ref']}")
    return specs


class Handler(Protocol):
    """One kind of outbox item: what a release's outcome owes of it, how to deliver it, how to name it."""

    retry_delays: tuple[float, ...]  # seconds between the attempts made right away, in one run

    def owed(self, ws: Workspace, release: Release, finished_at: datetime) -> list[dict[str, Any]]:
        """Payloads to queue for `release`, which has just reached its final status."""
        ...

    def deliver(self, ws: Workspace, item: OutboxItem) -> None:
        """Deliver `item` once; raise ConveyorError with a readable message when that failed."""
        ...

    def describe(self, item: OutboxItem) -> str:
        ...

    def lane(self, item: OutboxItem) -> str:
        """Items of one lane are delivered in order; a lane waiting holds up no other."""
        ...


class GitRefs:
    """Tag ENV, tag ENV--timestamp and branch ENV at a succeeded release's commit, on the configured remote."""

    retry_delays = IN_RUN_RETRY_DELAYS

    def lane(self, item: OutboxItem) -> str:
        return GIT_REFS

    def owed(self, ws: Workspace, release: Release, finished_at: datetime) -> list[dict[str, Any]]:
        if release.status != "succeeded" or not ws.config.release_refs.enabled:
            return []
        return [git_refs_payload(ws, ws.config, release, finished_at)]

    def deliver(self, ws: Workspace, item: OutboxItem) -> None:
        from conveyor.vcs.git import push_refs

        push_refs(ws.repo, item.payload["remote"], refspecs(item.payload, _witness(ws, item.payload)))

    def describe(self, item: OutboxItem) -> str:
        payload = item.payload
        refs = ", ".join(payload[k] for k in ("env_tag", "timestamp_tag") if k in payload)
        branch = f", branch {payload['env_branch']}" if "env_branch" in payload else ""
        return f"push {payload['release']} ({payload['sha'][:12]}) to {payload['remote']}: tags {refs}{branch}"


def _witness(ws: Workspace, payload: dict[str, Any]) -> str | None:
    if "audit_ref" not in payload:
        return None  # queued by a conveyor without the audit witness
    from conveyor.pipeline.audit import witness_to_publish

    try:
        return witness_to_publish(ws, payload["remote"], payload["audit_ref"])
    except ConveyorError:
        return None  # remote unreachable: the push reports that; the witness moves on the next delivery


def _handlers() -> dict[str, Handler]:
    from conveyor.pipeline.announce import (
        DatadogEvents,
        GrafanaAnnotations,
        SlackAnnouncements,
        WebhookAnnouncements,
    )
    from conveyor.pipeline.deployments import KIND as GITHUB_DEPLOYMENT
    from conveyor.pipeline.deployments import GitHubDeployments
    from conveyor.pipeline.release_pr import PR_COMMENT, RELEASE_PR, PullRequestComments, ReleasePullRequests

    return {GIT_REFS: GitRefs(), "slack": SlackAnnouncements(), "webhook": WebhookAnnouncements(),
            "grafana": GrafanaAnnotations(), "datadog": DatadogEvents(),
            GITHUB_DEPLOYMENT: GitHubDeployments(), RELEASE_PR: ReleasePullRequests(),
            PR_COMMENT: PullRequestComments()}


HANDLERS: dict[str, Handler] = _handlers()


class UnknownKind(ConveyorError):
    """An item queued by a conveyor that knows a kind this one does not."""


def handler_for(kind: str) -> Handler:
    handler = HANDLERS.get(kind)
    if handler is None:
        raise UnknownKind(f"no outbox handler for kind '{kind}' (queued by a newer conveyor?)")
    return handler


def owed(ws: Workspace, release: Release, finished_at: datetime) -> list[tuple[str, dict[str, Any]]]:
    """Every item the release's outcome owes, of every kind, in HANDLERS order."""
    return [(kind, payload) for kind, handler in HANDLERS.items()
            for payload in handler.owed(ws, release, finished_at)]


def describe(item: OutboxItem) -> str:
    handler = HANDLERS.get(item.kind)
    return handler.describe(item) if handler else f"{item.kind} item (no handler in this conveyor)"


def lane(item: OutboxItem) -> str:
    handler = HANDLERS.get(item.kind)
    return handler.lane(item) if handler else item.kind


def backoff(attempts: int) -> timedelta:
    return min(timedelta(seconds=5 * 2 ** max(attempts - 1, 0)), MAX_BACKOFF)


def jittered(delay: timedelta) -> timedelta:
    """±20 %: many runs retrying after one outage do not all come back in the same second."""
    return min(delay * random.uniform(0.8, 1.2), MAX_BACKOFF)


@dataclass(frozen=True)
class Failure:
    error: str
    retry_after: float | None = None  # seconds the destination asked for (Retry-After)
    stopped: bool = False  # no retry can help until someone acts


def deliver(ws: Workspace, *, force: bool = False) -> list[OutboxItem]:
    """Deliver the app's due items in order; returns what is still undelivered. Never raises."""
    try:
        return _deliver(ws, force=force)
    except Exception as exc:  # delivery must never change an operation's outcome
        ws.say(f"warning: outbox delivery stopped: {getattr(exc, 'message', None) or exc}")
        return []


def _deliver(ws: Workspace, *, force: bool) -> list[OutboxItem]:
    """A run that finds delivery taken leaves its items to the run delivering; so that run, once it has let
    go, looks again for items queued meanwhile and delivers them too (or another run now holds delivery)."""
    seen = 0
    while True:
        pending = ws.ledger.undelivered(ws.config.app)
        if not pending or pending[-1].id <= seen:
            return pending
        left = _deliver_under_lease(ws, pending, force=force)
        if left is not None:
            return left
        seen = pending[-1].id


def _deliver_under_lease(ws: Workspace, pending: list[OutboxItem], *, force: bool) -> list[OutboxItem] | None:
    """Deliver `pending` holding the app's delivery lease: what is left undelivered, or None when all of it
    was delivered."""
    app = ws.config.app
    holder = uuid.uuid4().hex
    ttl = lease_ttl()
    attempt = ws.ledger.try_acquire_lease(
        app=app, env=DELIVERY_LOCK, holder=holder, actor=ws.identity.actor, operation="outbox delivery",
        ttl=ttl, grace=ttl * TAKEOVER_GRACE_TTLS,
    )
    if not attempt.acquired:
        return pending  # another conveyor run is delivering them, in order
    if attempt.taken_over is not None:
        ws.say(f"outbox: took over delivery from {attempt.taken_over.actor}, who stopped heartbeating")

    def beat() -> bool:
        return ws.ledger.heartbeat(app=app, env=DELIVERY_LOCK, holder=holder, ttl=ttl)

    try:
        with Heartbeat("outbox-heartbeat", ttl / BEATS_PER_TTL, beat) as heartbeat:
            return _deliver_in_order(ws, pending, force=force, heartbeat=heartbeat) or None
    finally:
        ws.ledger.release_lease(app=app, env=DELIVERY_LOCK, holder=holder)


def _deliver_in_order(
    ws: Workspace, pending: list[OutboxItem], *, force: bool, heartbeat: Heartbeat
) -> list[OutboxItem]:
    left: list[OutboxItem] = []
    waiting: set[str] = set()  # lanes with an undelivered item: their later items wait behind it
    for index, item in enumerate(pending):
        if heartbeat.lost:
            return left + pending[index:]  # another run took delivery over: it goes on from here, in order
        item_lane = lane(item)
        if item_lane in waiting or not _due(item, force):
            waiting.add(item_lane)
            left.append(item)
            continue
        failure = _attempt(ws, item)
        if failure is None:
            ws.ledger.mark_delivered(item.id)
            ws.say(f"outbox: delivered: {describe(item)}")
            continue
        _record_failure(ws, item, failure)
        waiting.add(item_lane)
        left.append(item)
    return left


def _due(item: OutboxItem, force: bool) -> bool:
    """`force` (outbox flush) tries everything, stopped lanes too; otherwise a stopped item waits for it."""
    return force or (not item.stopped and item.next_attempt_at <= datetime.now(UTC))


def _record_failure(ws: Workspace, item: OutboxItem, failure: Failure) -> None:
    delay = timedelta(seconds=failure.retry_after) if failure.retry_after is not None \
        else jittered(backoff(item.attempts + 1))
    failed = ws.ledger.mark_attempt_failed(
        item.id, error=failure.error, retry_at=datetime.now(UTC) + delay,
        stopped=failure.error if failure.stopped else "",
    )
    if failure.stopped:
        ws.say(f"warning: outbox: {describe(item)} stopped ({failure.error}); fix it, then run "
               "`conveyor outbox flush`")
        return
    ws.say(f"warning: outbox: {describe(item)} not delivered ({failure.error}); will retry after "
           f"{failed.next_attempt_at:%H:%M:%S} UTC, on the next conveyor run, or with `conveyor outbox flush`")


def _attempt(ws: Workspace, item: OutboxItem) -> Failure | None:
    """Deliver, with the handler's quick retries; the last failure, or None once delivered."""
    from conveyor.notify.base import Refused, Unavailable
    from conveyor.vcs.git import RemoteMissing

    try:
        handler = handler_for(item.kind)
    except UnknownKind as exc:
        return Failure(exc.message)
    failure = None
    for delay in (0.0, *handler.retry_delays):
        time.sleep(delay)
        try:
            handler.deliver(ws, item)
            return None
        except RemoteMissing as exc:
            return Failure(exc.message)  # retrying in this run cannot help
        except Refused as exc:
            return Failure(ws.redactor.text(exc.message), stopped=True)
        except Unavailable as exc:
            failure = Failure(ws.redactor.text(exc.message), retry_after=exc.retry_after)
            if exc.retry_after is not None:
                return failure  # asked to wait: not again in this run
        except ConveyorError as exc:
            failure = Failure(ws.redactor.text(exc.message))
    return failure


# ---------------------------------------------------------------------------------------------- why it waits


@dataclass(frozen=True)
class Delivery:
    """Who delivers the app's outbox now, from its delivery lease."""

    actor: str
    since: datetime
    expires_at: datetime
    takeover_at: datetime  # when the next conveyor run may take delivery over from a holder gone silent

    @classmethod
    def of(cls, ws: Workspace) -> Delivery | None:
        lease: Lease | None = ws.ledger.get_lease(ws.config.app, DELIVERY_LOCK)
        if lease is None:
            return None
        grace = timedelta(seconds=lease_ttl() * TAKEOVER_GRACE_TTLS)
        return cls(lease.actor, lease.acquired_at, lease.expires_at, lease.expires_at + grace)


def why_waiting(items: list[OutboxItem], delivery: Delivery | None, now: datetime) -> dict[int, str]:
    """Per undelivered item (oldest first), the reason it has not been delivered yet."""
    reasons: dict[int, str] = {}
    first: dict[str, OutboxItem] = {}  # the oldest undelivered item of each lane
    for item in items:
        ahead = first.setdefault(lane(item), item)
        reasons[item.id] = _reason(item, ahead if ahead is not item else None, delivery, now)
    return reasons


def _reason(item: OutboxItem, ahead: OutboxItem | None, delivery: Delivery | None, now: datetime) -> str:
    last = f"; last error: {item.last_error}" if item.last_error else ""
    if item.stopped:
        return f"STOPPED: {item.stopped}; fix it, then `conveyor outbox flush` retries"
    if delivery is not None and delivery.expires_at >= now:
        return f"being delivered by {delivery.actor} since {_at(delivery.since)}{last}"
    if delivery is not None:
        when = "now" if delivery.takeover_at < now else f"from {_at(delivery.takeover_at)}"
        return f"delivery holder {delivery.actor} gone since {_at(delivery.expires_at)}; the next conveyor " \
               f"run takes delivery over {when}{last}"
    if ahead is not None:
        return f"waits behind #{ahead.id} (delivered in order){last}"
    if item.next_attempt_at > now:
        return f"backoff until {_at(item.next_attempt_at)}{last}"
    if item.attempts == 0:
        return "not attempted yet"
    return f"due now{last}"


def _at(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def retry_all(ws: Workspace, reason: str) -> list[OutboxItem]:
    """Deliver every undelivered item of the app now, whatever its backoff says, recording who asked and
    why; returns what is still undelivered."""
    pending = ws.ledger.undelivered(ws.config.app)
    ws.ledger.append_event(
        app=ws.config.app, env="", release_id=None, step="outbox", status="info",
        message=f"{ws.identity.actor} retried {len(pending)} undelivered outbox item(s); reason: {reason}",
        data={"actor": ws.identity.actor, "reason": reason, "items": [item.id for item in pending]},
    )
    return deliver(ws, force=True)
