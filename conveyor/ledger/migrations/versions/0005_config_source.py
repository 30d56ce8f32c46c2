"""Releases record where their conveyor.yml came from: the shipped commit ("") or a --config override.

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("config_source", sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("config_source")
