"""Deploy markers (issue 16, point 3): Grafana annotations and Datadog events as two more announcement
destinations through the outbox, posted to in-repo servers speaking their request shapes; an outage or a
refused token never changes a release's outcome, and neither token is stored or shown.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import App, Result
from tests.fakes.markers import FakeDatadog, FakeGrafana

GRAFANA_TOKEN = "glsa_testServiceAccount_9f8e7d6c"
DATADOG_KEY = "dd0123456789abcdef0123456789abcd"


@dataclass
class Marked:
    app: App
    grafana: FakeGrafana
    datadog: FakeDatadog
    config: Path

    def run(self, *args: str) -> Result:
        return self.app.run("--config", str(self.config), *args)

    def ok(self, *args: str) -> Result:
        result = self.run(*args)
        assert result.code == 0, f"conveyor {' '.join(args)} exited {result.code}:\n{result.err}\n{result.out}"
        return result


@pytest.fixture
def marked(app: App, tmp_path: Path) -> Iterator[Marked]:
    grafana, datadog = FakeGrafana(GRAFANA_TOKEN), FakeDatadog(DATADOG_KEY)
    config = tmp_path / "conveyor-markers.yml"
    config.write_text((app.repo / "conveyor.yml").read_text() + (
        "notify:\n"
        '  release_page: "https://conveyor.example.com/{app}/{env}/{number}"\n'
        "  destinations:\n"
        f'    - grafana: {{api_url: "{grafana.api_url}", token_env: GRAFANA_TOKEN, tags: [team:web]}}\n'
        f'    - datadog: {{api_url: "{datadog.api_url}", api_key_env: DD_API_KEY}}\n'))
    app.extra_env.update({"GRAFANA_TOKEN": GRAFANA_TOKEN, "DD_API_KEY": DATADOG_KEY})
    yield Marked(app, grafana, datadog, config)
    grafana.close()
    datadog.close()


def test_each_release_is_a_grafana_annotation_and_a_datadog_event(marked: Marked) -> None:
    m = marked
    m.ok("deploy", "staging", "v1")
    (note,) = m.grafana.received
    assert note["tags"] == ["conveyor", "app:hello", "event:succeeded", "env:staging", "team:web"]
    sha = m.app.git("rev-parse", "v1")
    assert note["text"].startswith(f"hello staging#1 deploy succeeded: {sha[:12]}")
    assert "release_page: https://conveyor.example.com/hello/staging/1" in note["text"]
    assert m.grafana.headers[0]["authorization"] == f"Bearer {GRAFANA_TOKEN}"
    (event,) = m.datadog.received
    assert event["title"] == f"hello staging#1 deploy succeeded: {sha[:12]}"
    assert (event["alert_type"], event["source_type_name"]) == ("success", "conveyor")
    assert event["tags"] == ["conveyor", "app:hello", "event:succeeded", "env:staging"]
    assert m.datadog.headers[0]["dd-api-key"] == DATADOG_KEY

    failed = m.run("deploy", "staging", "broken")
    assert failed.code == 1
    assert "event:failed" in m.grafana.received[-1]["tags"] and "why: " in m.grafana.received[-1]["text"]
    assert m.datadog.received[-1]["alert_type"] == "error"


def test_an_outage_or_a_refused_token_changes_no_outcome_and_no_token_is_kept(marked: Marked) -> None:
    m = marked
    m.grafana.down()
    m.datadog.secret = "a-rotated-key"  # the configured key is refused from now on
    deployed = m.ok("deploy", "staging", "v1")
    assert m.app.history("staging")[0]["status"] == "succeeded"
    assert "not delivered" in deployed.err or "stopped" in deployed.err
    waiting = {item["kind"]: item for item in m.app.run("--config", str(m.config), "outbox", "--json").json()}
    assert "503" in waiting["grafana"]["waiting"]
    assert "403" in waiting["datadog"]["waiting"] and "STOPPED" in waiting["datadog"]["waiting"].upper()
    m.grafana.up()
    m.datadog.secret = DATADOG_KEY
    m.ok("outbox", "flush", "--reason", "back up")
    assert len(m.grafana.received) == 1 and len(m.datadog.received) == 1
    assert m.run("outbox", "--json").json() == []
    shown = deployed.out + deployed.err + m.ok("history", "--json").out + m.ok("outbox").out
    assert GRAFANA_TOKEN not in shown and DATADOG_KEY not in shown
    with sqlite3.connect(m.app.home / "ledger.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(FULL)")
    stored = b"".join(p.read_bytes() for p in m.app.home.glob("ledger.db*"))
    assert GRAFANA_TOKEN.encode() not in stored and DATADOG_KEY.encode() not in stored


def test_a_marker_destination_without_its_token_env_is_one_line_of_bad_input(marked: Marked) -> None:
    m = marked
    m.config.write_text(m.config.read_text().replace("token_env: GRAFANA_TOKEN", "token: x"))
    refused = m.run("deploy", "staging", "v1")
    assert refused.code == 2 and "Traceback" not in refused.err
    # The loader's usual shape: a heading, then one line per problem (token_env missing, token unknown).
    assert "notify.destinations[0].grafana.token: unknown key" in refused.err
    assert "notify.destinations[0].grafana.token_env" in refused.err and len(refused.err.strip().splitlines()) == 3
