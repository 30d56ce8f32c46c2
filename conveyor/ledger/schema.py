"""The ledger's tables, the single source of truth every query is built from.

The migrations in `migrations/versions/` create exactly these tables (a test compares the two), so a change
here needs a new migration and a new HEAD_REVISION.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# The newest migration's revision id. open_ledger compares the database's alembic_version with this and only
# imports Alembic when they differ, so a migrated ledger opens without loading Alembic at all.
HEAD_REVISION = "0011"


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as UTC and always returned timezone-aware.

    PostgreSQL keeps the offset (timestamptz); SQLite has no time zone type and hands back naive values, so
    values are written as naive UTC there and tagged as UTC on the way out. Naive input is refused: a naive
    datetime in this code base is a bug, not a local time to guess about.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the ledger stores timezone-aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# sqlite_autoincrement: ids are never reused after a delete (a stale waiter's ticket must not come back as
# someone else's ticket), matching PostgreSQL sequences.
releases = Table(
    "releases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String, nullable=False),
    Column("env", String, nullable=False),
    Column("number", Integer, nullable=False),
    Column("kind", String, nullable=False),
    Column("status", String, nullable=False),
    Column("sha", String, nullable=False),
    Column("digest", String, nullable=False),
    Column("image", Text, nullable=False),
    Column("spec", Text, nullable=False),  # JSON text
    Column("config_digest", String, nullable=False),
    # "" when conveyor.yml came from the shipped commit; else the override used ("--config PATH").
    Column("config_source", Text, nullable=False, server_default=""),
    Column("actor", String, nullable=False),
    Column("origin", String, nullable=False),
    Column("reason", Text, nullable=False),
    Column("forced", Boolean, nullable=False),
    Column("step", String, nullable=False),
    Column("error", Text, nullable=False),
    Column("previous_number", Integer, nullable=True),
    Column("promoted_from_id", Integer, ForeignKey("releases.id"), nullable=True),  # Release.source_release_id
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("committed_at", UTCDateTime, nullable=True),  # the shipped commit's committer time: lead time
    # The OpenTelemetry trace of the operation that made it (32 hex digits), "" when tracing was off.
    Column("trace_id", String, nullable=False, server_default=""),
    UniqueConstraint("app", "env", "number"),
    # live_release: the highest succeeded number of an app+env, one index seek.
    Index(None, "app", "env", "status", "number"),
    # history, newest first by id (for an app, or an app+env): an index range read, never a sort of every row.
    Index(None, "app", "id"),
    Index(None, "app", "env", "id"),
    # delivery metrics: one env's releases finished in a window.
    Index(None, "app", "env", "finished_at"),
    sqlite_autoincrement=True,
)

# One row per app+env holding the last release number handed out. Incrementing it with an upsert takes a
# row lock on PostgreSQL, which is what makes concurrent create_release calls gapless and collision-free.
release_counters = Table(
    "release_counters",
    metadata,
    Column("app", String, primary_key=True),
    Column("env", String, primary_key=True),
    Column("last_number", Integer, nullable=False),
)

# Append-only and hash-chained. prev_hash is unique: two appenders that read the same chain head could not
# both commit, so the chain cannot fork even if the locking were ever got wrong.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String, nullable=False),
    Column("env", String, nullable=False),
    Column("release_id", Integer, ForeignKey("releases.id"), nullable=True),
    Column("at", UTCDateTime, nullable=False),
    Column("step", String, nullable=False),
    Column("status", String, nullable=False),
    Column("message", Text, nullable=False),
    Column("data", Text, nullable=False),  # canonical JSON text
    Column("prev_hash", String, nullable=False),
    Column("hash", String, nullable=False),
    UniqueConstraint("prev_hash"),
    Index(None, "app", "env"),
    Index(None, "release_id"),
    sqlite_autoincrement=True,
)

leases = Table(
    "leases",
    metadata,
    Column("app", String, primary_key=True),
    Column("env", String, primary_key=True),
    Column("holder", String, nullable=False),
    Column("actor", String, nullable=False),
    Column("operation", String, nullable=False),
    Column("release_id", Integer, ForeignKey("releases.id"), nullable=True),
    Column("acquired_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

# FIFO tickets of `--wait` runs queued behind a lease; the id order is the queue order.
waiters = Table(
    "waiters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String, nullable=False),
    Column("env", String, nullable=False),
    Column("holder", String, nullable=False),
    Column("actor", String, nullable=False),
    Column("operation", String, nullable=False),
    Column("enqueued_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Index(None, "app", "env"),
    sqlite_autoincrement=True,
)

# Never deleted: lifting sets lifted_at/lifted_by so the record shows who blocked and who unblocked.
blocks = Table(
    "blocks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("scope", String, nullable=False),  # env | app | org
    Column("app", String, nullable=False),  # "" for org
    Column("env", String, nullable=False),  # "" for app and org
    Column("reason", Text, nullable=False),
    Column("actor", String, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("until", UTCDateTime, nullable=True),
    Column("lifted_at", UTCDateTime, nullable=True),
    Column("lifted_by", String, nullable=True),
    sqlite_autoincrement=True,
)

# Side effects that must happen eventually (git tags and branch moves, later announcements), written in the
# same transaction that records a release as succeeded. Delivered in id order per app; never deleted.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String, nullable=False),
    Column("env", String, nullable=False),
    Column("release_id", Integer, ForeignKey("releases.id"), nullable=True),
    Column("kind", String, nullable=False),
    Column("payload", Text, nullable=False),  # canonical JSON text
    Column("created_at", UTCDateTime, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("delivered_at", UTCDateTime, nullable=True),
    # Why delivery stopped for good until someone acts (a revoked token, a webhook gone): "" while it retries.
    Column("stopped", Text, nullable=False, server_default=""),
    Index(None, "app", "delivered_at"),
    Index(None, "app", "env", "created_at"),  # outbox_items: one env's recent items, among millions
    Index(None, "delivered_at", "kind", "created_at"),  # the metrics' backlog: undelivered items only
    sqlite_autoincrement=True,
)

# ------------------------------------------------------------------------------------------- the server

# Apps a `conveyor server` ships, by name; the server keeps a bare mirror of each repo_url.
apps = Table(
    "apps",
    metadata,
    Column("name", String, primary_key=True),
    Column("repo_url", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String, nullable=False),
    Column("stages", Text, nullable=False, server_default=""),  # JSON list of env names, as last configured
)

# API tokens: only a SHA-256 of the token is kept (tokens are 256 random bits, so a slow hash adds nothing).
# The name is the actor of everything done with it; scopes is a JSON list.
tokens = Table(
    "tokens",
    metadata,
    Column("name", String, primary_key=True),
    Column("token_hash", String, nullable=False),
    Column("scopes", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime, nullable=True),
    UniqueConstraint("token_hash"),
)

# The server's durable queue: a row per submitted operation, written before the API answers. `lane` is the
# environment an operation changes (or "" for a build), and the queue is first come, first served per
# app+lane. A running row carries its replica (holder) and a lease its worker renews; a lapsed lease is a dead
# replica, and another one takes the operation over.
operations = Table(
    "operations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String, nullable=False),
    Column("lane", String, nullable=False),
    Column("kind", String, nullable=False),
    Column("params", Text, nullable=False),  # JSON
    Column("state", String, nullable=False),  # queued | running | succeeded | failed | cancelled | superseded
    Column("exit_code", Integer, nullable=True),
    Column("result", Text, nullable=True),  # JSON: what the CLI prints with --json
    Column("actor", String, nullable=False),
    Column("origin", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("holder", String, nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("note", Text, nullable=False),  # why it was cancelled, superseded or taken over
    # The submitter's W3C trace context (its `traceparent` header), so the worker's spans join its trace.
    Column("traceparent", String, nullable=False, server_default=""),
    Index(None, "state", "id"),
    Index(None, "app", "lane", "state", "id"),
    sqlite_autoincrement=True,
)

# Each operation's progress events, in order; the id is the Server-Sent Events id a client resumes from.
operation_events = Table(
    "operation_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("operation_id", Integer, ForeignKey("operations.id"), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("payload", Text, nullable=False),  # JSON: pipeline/events.py Progress
    Index(None, "operation_id", "id"),
    sqlite_autoincrement=True,
)

# The chat message an operation's announcements update in place: claimed (ts NULL) just before it is posted,
# so a run killed between posting and storing `ts` knows to look for the message rather than post another.
notify_messages = Table(
    "notify_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String, nullable=False),
    Column("destination", String, nullable=False),
    Column("operation", String, nullable=False),  # release-ID or block-ID
    Column("channel", String, nullable=False),
    Column("ts", String, nullable=True),
    Column("claimed_at", UTCDateTime, nullable=False),
    UniqueConstraint("app", "destination", "operation"),
    sqlite_autoincrement=True,
)

# ------------------------------------------------------------------------------------- forge webhooks

# Every GitHub delivery the server accepted, by its X-GitHub-Delivery id: the primary key is what makes a
# replayed delivery a duplicate (its insert fails) rather than a second deploy.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String, primary_key=True),
    Column("app", String, nullable=False),
    Column("event", String, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("outcome", Text, nullable=False),  # what it did: queued #N, waiting for CI, ignored (why)
)

# A push waiting for its head commit's CI to go green before its trigger deploys it. state: waiting |
# queued (operation_id says which) | superseded (a newer push to the branch) | paused (a block held) | red.
pending_triggers = Table(
    "pending_triggers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String, nullable=False),
    Column("env", String, nullable=False),
    Column("sha", String, nullable=False),
    Column("branch", String, nullable=False),
    Column("actor", String, nullable=False),
    Column("origin", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("state", String, nullable=False),
    Column("operation_id", Integer, nullable=True),
    Column("note", Text, nullable=False),
    Column("decided_at", UTCDateTime, nullable=True),
    Index(None, "state", "app"),
    Index(None, "app", "sha"),
    sqlite_autoincrement=True,
)

# The open release pull request of each app (one per app: source -> target), for auto-merge to find
# without asking the forge about every app.
release_prs = Table(
    "release_prs",
    metadata,
    Column("app", String, primary_key=True),
    Column("number", Integer, nullable=False),
    Column("source", String, nullable=False),
    Column("target", String, nullable=False),
    Column("head_sha", String, nullable=False),
    Column("digest", String, nullable=False),
    Column("opened_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("merged_at", UTCDateTime, nullable=True),
)
