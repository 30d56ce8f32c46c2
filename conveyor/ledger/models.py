"""Plain records the ledger returns. No database types leak out of the ledger package."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

RELEASE_KINDS = ("deploy", "promote", "rollback", "hotfix")
# pending: recorded, not yet applied; running: target work under way; interrupted: its holder died.
RELEASE_STATUSES = ("pending", "running", "succeeded", "failed", "interrupted")
# triggers: only the env's automatic (webhook) triggers are paused, by a rollback (pipeline/triggers.py).
BLOCK_SCOPES = ("env", "app", "org", "triggers")


@dataclass(frozen=True)
class Release:
    id: int
    app: str
    env: str
    number: int
    kind: str
    status: str
    sha: str
    digest: str
    image: str  # repository@sha256:...
    spec: dict[str, Any]  # the complete rendered spec the target applied (never secret values)
    config_digest: str
    config_source: str  # "" from the shipped commit; else the --config override used
    actor: str
    origin: str
    reason: str
    forced: bool  # ran with --force: ignored blocks/policies
    step: str  # the last step reached
    error: str
    previous_number: int | None  # the live release this one replaced
    source_release_id: int | None  # the release a promotion pinned, or the one a rollback re-applies
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    committed_at: datetime | None = None  # the shipped commit's committer time (None in records made before it)
    trace_id: str = ""  # the OpenTelemetry trace of the operation that made it; "" when tracing was off


@dataclass(frozen=True)
class Event:
    id: int
    app: str
    env: str
    release_id: int | None
    at: datetime
    step: str
    status: str  # started | ok | failed | info
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""


@dataclass(frozen=True)
class Lease:
    app: str
    env: str
    holder: str  # unique per operation (uuid)
    actor: str
    operation: str  # e.g. "deploy staging abc1234"
    release_id: int | None
    acquired_at: datetime
    heartbeat_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class LeaseAttempt:
    acquired: bool
    holder: Lease | None  # the lease now in force (ours when acquired)
    taken_over: Lease | None  # an expired lease we replaced (its release must be marked interrupted)


@dataclass(frozen=True)
class Block:
    id: int
    scope: str  # env | app | org | triggers
    app: str  # "" for org
    env: str  # "" for app and org scopes
    reason: str
    actor: str
    created_at: datetime
    until: datetime | None


@dataclass(frozen=True)
class OutboxItem:
    """A side effect owed to the outside world (e.g. git refs to push), delivered eventually, in order."""

    id: int
    app: str
    env: str
    release_id: int | None
    kind: str  # git-refs | slack | webhook
    payload: dict[str, Any]
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    last_error: str
    delivered_at: datetime | None
    stopped: str = ""  # why delivery stopped until someone acts (a revoked token, a webhook gone)


@dataclass(frozen=True)
class NotifyMessage:
    """The chat message an operation's announcements update in place; ts is None while it is being posted."""

    channel: str
    ts: str | None
    claimed_at: datetime
