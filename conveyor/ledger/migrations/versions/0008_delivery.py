"""Delivery metrics from the ledger alone: each release keeps its commit's time, and each registered app its
stage order (so an org-wide view reads every app's stages in one query, without git or a config parse).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Written out in full rather than imported from schema.py: a migration must keep creating what it created.

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("stages", sa.Text, nullable=False, server_default=""))
    op.create_index("ix_releases_app_env_finished_at", "releases", ["app", "env", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_releases_app_env_finished_at", table_name="releases")
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("stages")
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("committed_at")
