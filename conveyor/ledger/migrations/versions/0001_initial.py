"""Initial ledger schema: releases, release counters, hash-chained events, leases, waiters, blocks.

Revision ID: 0001
Revises:
Create Date: 2024-06-01

Written out in full rather than imported from schema.py: a migration must keep creating what it created
the day it was written, whatever schema.py says later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("app", sa.String, nullable=False),
        sa.Column("env", sa.String, nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("sha", sa.String, nullable=False),
        sa.Column("digest", sa.String, nullable=False),
        sa.Column("image", sa.Text, nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("config_digest", sa.String, nullable=False),
        sa.Column("actor", sa.String, nullable=False),
        sa.Column("origin", sa.String, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("forced", sa.Boolean, nullable=False),
        sa.Column("step", sa.String, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("previous_number", sa.Integer, nullable=True),
        sa.Column("promoted_from_id", sa.Integer, nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("started_at", _utc(), nullable=True),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_releases"),
        sa.UniqueConstraint("app", "env", "number", name="uq_releases_app_env_number"),
        sa.ForeignKeyConstraint(
            ["promoted_from_id"], ["releases.id"], name="fk_releases_promoted_from_id_releases"
        ),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "release_counters",
        sa.Column("app", sa.String, nullable=False),
        sa.Column("env", sa.String, nullable=False),
        sa.Column("last_number", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("app", "env", name="pk_release_counters"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("app", sa.String, nullable=False),
        sa.Column("env", sa.String, nullable=False),
        sa.Column("release_id", sa.Integer, nullable=True),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("step", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String, nullable=False),
        sa.Column("hash", sa.String, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.UniqueConstraint("prev_hash", name="uq_events_prev_hash"),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], name="fk_events_release_id_releases"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_app_env", "events", ["app", "env"])
    op.create_index("ix_events_release_id", "events", ["release_id"])
    op.create_table(
        "leases",
        sa.Column("app", sa.String, nullable=False),
        sa.Column("env", sa.String, nullable=False),
        sa.Column("holder", sa.String, nullable=False),
        sa.Column("actor", sa.String, nullable=False),
        sa.Column("operation", sa.String, nullable=False),
        sa.Column("release_id", sa.Integer, nullable=True),
        sa.Column("acquired_at", _utc(), nullable=False),
        sa.Column("heartbeat_at", _utc(), nullable=False),
        sa.Column("expires_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("app", "env", name="pk_leases"),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], name="fk_leases_release_id_releases"),
    )
    op.create_table(
        "waiters",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("app", sa.String, nullable=False),
        sa.Column("env", sa.String, nullable=False),
        sa.Column("holder", sa.String, nullable=False),
        sa.Column("actor", sa.String, nullable=False),
        sa.Column("operation", sa.String, nullable=False),
        sa.Column("enqueued_at", _utc(), nullable=False),
        sa.Column("heartbeat_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_waiters"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_waiters_app_env", "waiters", ["app", "env"])
    op.create_table(
        "blocks",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("scope", sa.String, nullable=False),
        sa.Column("app", sa.String, nullable=False),
        sa.Column("env", sa.String, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String, nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("until", _utc(), nullable=True),
        sa.Column("lifted_at", _utc(), nullable=True),
        sa.Column("lifted_by", sa.String, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_blocks"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    for table in ("blocks", "waiters", "leases", "events", "release_counters", "releases"):
        op.drop_table(table)
