"""The ledger: the durable record of every release, event, lease, waiter and block.

This module stays import-cheap (no SQLAlchemy, no Alembic): every CLI start-up imports it, and most
commands need only a URL or nothing at all. The database code lives in `store` and is loaded on first use.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.ledger.store import Ledger

__all__ = ["default_database_url", "normalise_url", "open_ledger", "redact_url"]

_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):.*@")


def default_database_url() -> str:
    """Where the ledger lives: $CONVEYOR_DATABASE_URL, else SQLite at $CONVEYOR_HOME/ledger.db.

    CONVEYOR_HOME defaults to ~/.local/state/conveyor and is created, so the first run just works.
    """
    configured = os.environ.get("CONVEYOR_DATABASE_URL", "").strip()
    if configured:
        return normalise_url(configured)
    from conveyor.settings import conveyor_home

    return f"sqlite:///{conveyor_home() / 'ledger.db'}"


def normalise_url(url: str) -> str:
    """Accept the postgres:// and postgresql:// spellings users paste, and pin them to psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, safe for messages and logs.

    Matches greedily up to the last '@' so a password containing an unescaped '@' is hidden too.
    """
    return _PASSWORD.sub(r"\1:***@", url)


def open_ledger(url: str | None = None) -> Ledger:
    """Open the ledger at `url` (default: default_database_url()), applying pending migrations.

    Raises conveyor.errors.InfrastructureMissing when the database cannot be reached.
    """
    from conveyor.ledger.store import open_store

    return open_store(normalise_url(url) if url else default_database_url())
