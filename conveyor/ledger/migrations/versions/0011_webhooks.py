"""Forge webhooks: accepted deliveries (deduplicated by id), pushes waiting for green CI, release PRs.

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Written out in full rather than imported from schema.py: a migration must keep creating what it created.

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String, nullable=False),
        sa.Column("app", sa.String, nullable=False),
        sa.Column("event", sa.String, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_table(
        "pending_triggers",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("app", sa.String, nullable=False),
        sa.Column("env", sa.String, nullable=False),
        sa.Column("sha", sa.String, nullable=False),
        sa.Column("branch", sa.String, nullable=False),
        sa.Column("actor", sa.String, nullable=False),
        sa.Column("origin", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("operation_id", sa.Integer, nullable=True),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_pending_triggers"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_pending_triggers_state_app", "pending_triggers", ["state", "app"])
    op.create_index("ix_pending_triggers_app_sha", "pending_triggers", ["app", "sha"])
    op.create_table(
        "release_prs",
        sa.Column("app", sa.String, nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("source", sa.String, nullable=False),
        sa.Column("target", sa.String, nullable=False),
        sa.Column("head_sha", sa.String, nullable=False),
        sa.Column("digest", sa.String, nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("app", name="pk_release_prs"),
    )


def downgrade() -> None:
    op.drop_table("release_prs")
    op.drop_index("ix_pending_triggers_app_sha", "pending_triggers")
    op.drop_index("ix_pending_triggers_state_app", "pending_triggers")
    op.drop_table("pending_triggers")
    op.drop_table("webhook_deliveries")
