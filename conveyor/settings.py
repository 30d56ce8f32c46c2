"""Process-wide settings read from the environment (documented in the README's configuration section)."""

from __future__ import annotations

import os
from pathlib import Path


def conveyor_home() -> Path:
    """Where conveyor keeps local state: the SQLite ledger and the proxy's state."""
    home = Path(os.environ.get("CONVEYOR_HOME") or Path.home() / ".local" / "state" / "conveyor")
    home = home.expanduser().resolve()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from conveyor.errors import BadInput

        raise BadInput(f"CONVEYOR_HOME {home}: cannot create it: {exc.strerror or type(exc).__name__} "
                       "(point CONVEYOR_HOME at a writable directory)") from None
    return home


def lease_ttl() -> float:
    """Seconds a lease outlives its last heartbeat; a holder that died is taken over after this."""
    return float(os.environ.get("CONVEYOR_LEASE_TTL", "30"))


def ci_poll_interval() -> float:
    """Seconds between two reads of a commit's CI while `--wait-for-ci` waits (CONVEYOR_CI_POLL)."""
    return max(float(os.environ.get("CONVEYOR_CI_POLL", "5")), 0.05)


def copy_chunk_bytes() -> int:
    """Bytes per PATCH of an image copy between registries (CONVEYOR_COPY_CHUNK_MB, default 64): what a cut
    link can cost at most, since a copy resumes from the last chunk the destination confirmed."""
    from conveyor.errors import BadInput

    text = os.environ.get("CONVEYOR_COPY_CHUNK_MB", "64")
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = 0.0
    if not megabytes > 0:
        raise BadInput(f"CONVEYOR_COPY_CHUNK_MB={text!r}: give a positive number of megabytes")
    return max(int(megabytes * 1024 * 1024), 64 * 1024)
