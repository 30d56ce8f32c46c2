"""Indexes for the queries that must stay fast on a ledger with millions of releases.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

live_release seeks the highest succeeded number of an app+env; history walks an app's (or an app+env's)
releases newest first by id; delivering a release's git refs reads its env's recent outbox items. Each is
an index range read however long the ledger grows.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_releases_app_env_status_number", "releases", ["app", "env", "status", "number"])
    op.create_index("ix_releases_app_id", "releases", ["app", "id"])
    op.create_index("ix_releases_app_env_id", "releases", ["app", "env", "id"])
    op.create_index("ix_outbox_app_env_created_at", "outbox", ["app", "env", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_app_env_created_at", table_name="outbox")
    op.drop_index("ix_releases_app_env_id", table_name="releases")
    op.drop_index("ix_releases_app_id", table_name="releases")
    op.drop_index("ix_releases_app_env_status_number", table_name="releases")
