"""GET /api/apps/{app}/history pages through more releases than one page holds (found by bench/server_scale.py:
a full page answered 500)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e import App
from tests.server import ServerProcess


@pytest.fixture
def server(app: App) -> Iterator[ServerProcess]:
    running = ServerProcess.start(app)
    running.add_app()
    yield running
    running.stop()


def record_releases(app: App, env: str, count: int) -> list[tuple[int, str, int]]:
    """Finished releases written the way conveyor writes them: (id, env, number), oldest first."""
    from conveyor.ledger import open_ledger

    ledger = open_ledger(app.ledger_url)
    digest = "sha256:" + "ab" * 32
    ids = []
    try:
        for _ in range(count):
            release = ledger.create_release(
                app="hello", env=env, kind="deploy", sha=app.git("rev-parse", "HEAD"), digest=digest,
                image=f"127.0.0.1:5000/hello@{digest}", spec={"env_vars": {}}, config_digest="sha256:conf",
                actor="ci", origin="test", reason="", forced=False, previous_number=None, source_release_id=None,
            )
            ledger.update_release(release.id, status="succeeded", finished=True)
            ids.append((release.id, env, release.number))
    finally:
        ledger.close()
    return ids


def shown(page: dict[str, object]) -> list[tuple[str, int]]:
    return [(r["env"], r["number"]) for r in page["releases"]]  # type: ignore[attr-defined]


def test_history_pages_on_with_next_before(server: ServerProcess) -> None:
    staging = record_releases(server.app, "staging", 3)
    production = record_releases(server.app, "production", 2)

    status, first = server.api("GET", "/api/apps/hello/history?limit=2")
    assert status == 200, first
    assert shown(first) == [(env, n) for _, env, n in production[::-1]]
    assert first["next_before"] == production[0][0]

    status, second = server.api("GET", f"/api/apps/hello/history?limit=2&before={first['next_before']}")
    assert status == 200, second
    assert shown(second) == [(env, n) for _, env, n in staging[:0:-1]]
    assert second["next_before"] == staging[1][0]
    status, last = server.api("GET", f"/api/apps/hello/history?limit=2&before={second['next_before']}")
    assert (status, shown(last), last["next_before"]) == (200, [("staging", staging[0][2])], None)

    status, one_env = server.api("GET", f"/api/apps/hello/history?env=staging&limit=2&before={staging[2][0]}")
    assert status == 200, one_env
    assert (shown(one_env), one_env["next_before"]) == ([("staging", 2), ("staging", 1)], None)
