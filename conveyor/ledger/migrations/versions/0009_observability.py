"""Instrumentation: a release's trace id, the caller's trace context on an operation, and the index the
metrics' outbox backlog reads.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Written out in full rather than imported from schema.py: a migration must keep creating what it created.

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("trace_id", sa.String, nullable=False, server_default=""))
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("traceparent", sa.String, nullable=False, server_default=""))
    op.create_index("ix_outbox_delivered_at_kind_created_at", "outbox", ["delivered_at", "kind", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_delivered_at_kind_created_at", "outbox")
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("traceparent")
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("trace_id")
