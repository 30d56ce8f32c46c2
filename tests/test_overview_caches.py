"""The overview's heads cache follows the ledger on SQLite and PostgreSQL: after any release write it
agrees with a fresh read of every app+env, and it re-reads only the app+envs the chain's new events name."""

from __future__ import annotations

from typing import Any

from conveyor.ledger.dashboard import HeadsCache, env_heads
from conveyor.ledger.store import open_store


def _record(ledger: Any, app: str, env: str) -> Any:
    return ledger.create_release(
        app=app, env=env, kind="deploy", sha="a" * 40, digest="sha256:" + "0" * 64,
        image="r/x@sha256:" + "0" * 64, spec={}, config_digest="c", actor="t", origin="test", reason="",
        forced=False, previous_number=None, source_release_id=None)


def test_the_heads_cache_follows_every_release_write_and_rereads_only_those(database_url: str) -> None:
    ledger = open_store(database_url)
    try:
        cache = HeadsCache()
        first = _record(ledger, "shop", "staging")
        heads = cache.heads(ledger)
        assert heads == env_heads(ledger)
        assert heads[("shop", "staging")].live is None and heads[("shop", "staging")].latest.id == first.id

        ledger.update_release(first.id, status="succeeded", finished=True)
        heads = cache.heads(ledger)
        assert heads[("shop", "staging")].live.id == first.id and heads == env_heads(ledger)

        kept = heads[("shop", "staging")]
        second = _record(ledger, "shop", "production")
        ledger.update_release(second.id, status="failed", finished=True)
        heads = cache.heads(ledger)
        assert heads == env_heads(ledger)
        assert heads[("shop", "staging")] is kept  # no event named it: not read again
        assert heads[("shop", "production")].live is None
        assert heads[("shop", "production")].latest.status == "failed"

        ledger.add_block(scope="env", app="shop", env="staging", reason="r", actor="t", until=None)
        assert cache.heads(ledger) is heads  # not a release write: the same answer, nothing re-read
    finally:
        ledger.close()
