"""The server's tables: registered apps, API tokens (hashed), the durable operation queue and its events.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("name", sa.String, nullable=False),
        sa.Column("repo_url", sa.Text, nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("created_by", sa.String, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_apps"),
    )
    op.create_table(
        "tokens",
        sa.Column("name", sa.String, nullable=False),
        sa.Column("token_hash", sa.String, nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("last_used_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_tokens_token_hash"),
    )
    op.create_table(
        "operations",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("app", sa.String, nullable=False),
        sa.Column("lane", sa.String, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("actor", sa.String, nullable=False),
        sa.Column("origin", sa.Text, nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("started_at", _utc(), nullable=True),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.Column("holder", sa.String, nullable=True),
        sa.Column("lease_until", _utc(), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_operations"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_operations_state_id", "operations", ["state", "id"])
    op.create_index("ix_operations_app_lane_state_id", "operations", ["app", "lane", "state", "id"])
    op.create_table(
        "operation_events",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("operation_id", sa.Integer, nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_operation_events"),
        sa.ForeignKeyConstraint(["operation_id"], ["operations.id"],
                                name="fk_operation_events_operation_id_operations"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_operation_events_operation_id_id", "operation_events", ["operation_id", "id"])


def downgrade() -> None:
    op.drop_table("operation_events")
    op.drop_table("operations")
    op.drop_table("tokens")
    op.drop_table("apps")
