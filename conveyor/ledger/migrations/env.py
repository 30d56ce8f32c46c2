"""Alembic environment for the ledger, run only programmatically by conveyor.ledger.store.

The caller passes an open connection (already inside its locked transaction) through
`config.attributes["connection"]`; there is no alembic.ini and no offline mode.
"""

from __future__ import annotations

from alembic import context

from conveyor.ledger.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("ledger migrations run through conveyor.ledger.open_ledger, which passes a connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things; batch mode rebuilds tables the way Alembic documents.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
