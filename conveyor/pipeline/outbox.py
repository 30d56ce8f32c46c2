"""Side effects of a succeeded release that must happen eventually: git tags and the ENV branch.

They are queued in the ledger in the same transaction that records the release as succeeded, attempted
right after, retried with backoff, retried by every later operation and by `conveyor outbox flush`, and
delivered strictly in order per app (a later release's refs never land before an earlier one's). A
delivery failure is reported, never changes the release's outcome or the exit code.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from conveyor.config.models import AppConfig
from conveyor.errors import ConveyorError
from conveyor.ledger.models import OutboxItem, Release
from conveyor.pipeline.audit import witness_ref
from conveyor.pipeline.workspace import Workspace

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


def describe(item: OutboxItem) -> str:
    payload = item.payload
    refs = ", ".join(payload[k] for k in ("env_tag", "timestamp_tag") if k in payload)
    branch = f", branch {payload['env_branch']}" if "env_branch" in payload else ""
    return f"push {payload['release']} ({payload['sha'][:12]}) to {payload['remote']}: tags {refs}{branch}"


def backoff(attempts: int) -> timedelta:
    return min(timedelta(seconds=5 * 2 ** max(attempts - 1, 0)), MAX_BACKOFF)


def deliver(ws: Workspace, *, force: bool = False) -> list[OutboxItem]:
    """Deliver the app's due items in order; returns what is still undelivered. Never raises."""
    try:
        return _deliver(ws, force=force)
    except Exception as exc:  # delivery must never change an operation's outcome
        ws.say(f"warning: outbox delivery stopped: {getattr(exc, 'message', None) or exc}")
        return []


def _deliver(ws: Workspace, *, force: bool) -> list[OutboxItem]:
    from conveyor.vcs.git import push_refs

    app = ws.config.app
    pending = ws.ledger.undelivered(app)
    if not pending:
        return []
    holder = uuid.uuid4().hex
    attempt = ws.ledger.try_acquire_lease(
        app=app, env=DELIVERY_LOCK, holder=holder, actor=ws.identity.actor, operation="outbox delivery", ttl=120
    )
    if not attempt.acquired:
        return pending  # another conveyor run is delivering them, in order
    try:
        for index, item in enumerate(pending):
            if not force and item.next_attempt_at > datetime.now(UTC):
                return pending[index:]  # not due yet; later items wait behind it to keep the order
            error = _try_push(ws, item, push_refs)
            if error is None:
                ws.ledger.mark_delivered(item.id)
                ws.say(f"outbox: delivered: {describe(item)}")
                continue
            failed = ws.ledger.mark_attempt_failed(
                item.id, error=error, retry_at=datetime.now(UTC) + backoff(item.attempts + 1)
            )
            ws.say(f"warning: outbox: {describe(item)} not delivered ({error}); will retry after "
                   f"{failed.next_attempt_at:%H:%M:%S} UTC, on the next conveyor run, or with `conveyor outbox flush`")
            return pending[index:]
        return []
    finally:
        ws.ledger.release_lease(app=app, env=DELIVERY_LOCK, holder=holder)


def _try_push(ws: Workspace, item: OutboxItem, push: Any) -> str | None:
    from conveyor.vcs.git import RemoteMissing

    error = None
    for delay in (0.0, *IN_RUN_RETRY_DELAYS):
        time.sleep(delay)
        try:
            push(ws.repo, item.payload["remote"], refspecs(item.payload, _witness(ws, item.payload)))
            return None
        except RemoteMissing as exc:
            return exc.message  # retrying in this run cannot help
        except ConveyorError as exc:
            error = exc.message
    return error


def _witness(ws: Workspace, payload: dict[str, Any]) -> str | None:
    if "audit_ref" not in payload:
        return None  # queued by a conveyor without the audit witness
    from conveyor.pipeline.audit import witness_to_publish

    try:
        return witness_to_publish(ws, payload["remote"], payload["audit_ref"])
    except ConveyorError:
        return None  # remote unreachable: the push reports that; the witness moves on the next delivery
