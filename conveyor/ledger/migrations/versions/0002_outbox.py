"""Outbox: side effects (git tags and branches, announcements) delivered eventually, in order per app.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("app", sa.String, nullable=False),
        sa.Column("env", sa.String, nullable=False),
        sa.Column("release_id", sa.Integer, nullable=True),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text, nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], name="fk_outbox_release_id_releases"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outbox_app_delivered_at", "outbox", ["app", "delivered_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_app_delivered_at", table_name="outbox")
    op.drop_table("outbox")
