"""Announcements: outbox items can be stopped with a reason; chat messages updated in place are remembered.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Written out in full rather than imported from schema.py: a migration must keep creating what it created.

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("stopped", sa.Text, nullable=False, server_default=""))
    op.create_table(
        "notify_messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("app", sa.String, nullable=False),
        sa.Column("destination", sa.String, nullable=False),
        sa.Column("operation", sa.String, nullable=False),
        sa.Column("channel", sa.String, nullable=False),
        sa.Column("ts", sa.String, nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("app", "destination", "operation"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("notify_messages")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("stopped")
