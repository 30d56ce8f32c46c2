"""A stdlib-only look at a SQLite ledger's live SHAs, taken before the ledger layer (SQLAlchemy) loads.

Only a hint for starting slow work early (`conveyor diff` starts `git log` while conveyor is still
loading); every value is then confirmed through the Ledger, and work started on a wrong hint is thrown
away. PostgreSQL ledgers give no hint.
"""

from __future__ import annotations

import sqlite3


def live_sha_hint(url: str, app: str, envs: list[str]) -> dict[str, str]:
    prefix = "sqlite:///"
    if not url.startswith(prefix) or not envs:
        return {}
    try:
        conn = sqlite3.connect(f"file:{url[len(prefix):]}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return {}
    try:
        marks = ",".join("?" * len(envs))
        rows = conn.execute(
            f"SELECT env, sha FROM releases WHERE app = ? AND env IN ({marks}) AND status = 'succeeded' "
            "ORDER BY number",
            [app, *envs],
        ).fetchall()
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
    return dict(rows)  # ascending number: the last row per env wins, as live_release would pick
