"""`conveyor audit verify`: the hash chain, release rows against their chained records, and the chain head
witnessed on the app's git remote. Ledger tests run on SQLite and PostgreSQL; the end-to-end test drives
the real CLI, tampers with the real SQLite file and reads the witness from the test's real bare remote."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from conveyor.ledger.store import Ledger, open_store
from conveyor.pipeline.audit import AuditReport, Witness, parse_witness, verify
from tests.e2e import App


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    store = open_store(database_url)
    yield store
    store.close()


def write_history(ledger: Ledger) -> list[int]:
    """A release taken through its states with events between them; returns the event ids in order."""
    release = ledger.create_release(
        app="web", env="prod", kind="deploy", sha="0123abc", digest="sha256:feed", image="reg/web@sha256:feed",
        spec={"image": "reg/web@sha256:feed"}, config_digest="sha256:conf", actor="alice", origin="cli",
        reason="", forced=False, previous_number=None, source_release_id=None,
    )
    for number in range(3):
        ledger.append_event(app="web", env="prod", release_id=release.id, step="task", status="info",
                            message=f"line {number}", data={"n": number})
    ledger.update_release(release.id, step="deploy", status="running", started=True)
    ledger.update_release(release.id, status="succeeded", finished=True)
    for number in range(3):
        ledger.append_event(app="web", env="prod", release_id=release.id, step="finished", status="ok",
                            message=f"tail {number}")
    return [event.id for event in ledger.events()]


def head_witness(ledger: Ledger) -> Witness:
    head = ledger.chain_head()
    assert head is not None
    return Witness(head.id, head.hash)


def tamper(database_url: str, *statements: tuple[str, dict[str, Any]]) -> None:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        for sql, params in statements:
            conn.execute(sa.text(sql), params)
    engine.dispose()


def check(ledger: Ledger, witness: Witness | None = None) -> AuditReport:
    return verify(ledger, witness, "test witness")


def test_an_intact_ledger_passes(ledger: Ledger) -> None:
    ids = write_history(ledger)
    report = check(ledger, head_witness(ledger))
    assert report.ok, report.view()
    assert (report.events_checked, report.releases_checked) == (len(ids), 1)
    assert report.head is not None and report.head.id == ids[-1]
    assert len(ledger.events(step="release-state")) == 3  # created, running, succeeded


def test_an_edited_event_is_named_and_the_first_of_two_wins(ledger: Ledger, database_url: str) -> None:
    ids = write_history(ledger)
    edit = "UPDATE events SET message = 'all fine' WHERE id = :id"
    tamper(database_url, (edit, {"id": ids[5]}), (edit, {"id": ids[2]}))
    report = check(ledger)
    assert not report.ok
    assert report.first_bad_event is not None and report.first_bad_event.id == ids[2]
    assert "edited" in report.first_bad_event.reason


def test_a_deleted_event_in_the_middle_is_named(ledger: Ledger, database_url: str) -> None:
    ids = write_history(ledger)
    tamper(database_url, ("DELETE FROM events WHERE id = :id", {"id": ids[2]}))
    report = check(ledger)
    assert report.first_bad_event is not None and report.first_bad_event.id == ids[3]
    assert f"does not follow event #{ids[1]}" in report.first_bad_event.reason
    assert "deleted" in report.first_bad_event.reason


def test_an_edited_release_row_is_named_with_the_field(ledger: Ledger, database_url: str) -> None:
    write_history(ledger)
    release, = ledger.all_releases()
    tamper(database_url, ("UPDATE releases SET status = 'failed', error = 'x' WHERE id = :id", {"id": release.id}))
    report = check(ledger)
    assert report.first_bad_event is None  # the chain itself is intact: only the row was changed
    assert report.first_bad_release is not None and report.first_bad_release.id == release.id
    assert "error is 'x' in the row but '' in its chained record" in report.first_bad_release.reason
    assert "also changed: status" in report.first_bad_release.reason


def test_a_reordered_pair_of_events_is_named(ledger: Ledger, database_url: str) -> None:
    ids = write_history(ledger)
    swap = "UPDATE events SET id = :to WHERE id = :id"
    tamper(database_url, (swap, {"id": ids[2], "to": -1}), (swap, {"id": ids[3], "to": ids[2]}),
           (swap, {"id": -1, "to": ids[3]}))
    report = check(ledger)
    assert report.first_bad_event is not None and report.first_bad_event.id == ids[2]
    assert f"out of order: it was written after event #{ids[3]}" in report.first_bad_event.reason


def test_a_truncated_tail_is_caught_by_the_witness_only(ledger: Ledger, database_url: str) -> None:
    ids = write_history(ledger)
    witness = head_witness(ledger)
    tamper(database_url, ("DELETE FROM events WHERE id >= :id", {"id": ids[-2]}))
    assert check(ledger).ok  # what is left is a perfectly valid, shorter chain
    report = check(ledger, witness)
    assert report.first_bad_event is None and report.first_bad_release is None
    assert report.witness_problem is not None and report.witness_problem.id == ids[-1]
    assert "newest entries were deleted" in report.witness_problem.reason


def test_a_rewritten_witnessed_event_is_caught(ledger: Ledger) -> None:
    write_history(ledger)
    head = ledger.chain_head()
    assert head is not None
    report = check(ledger, Witness(head.id, "0" * 64))
    assert report.witness_problem is not None and "rewritten" in report.witness_problem.reason


# ---------------------------------------------------------------------------------------------- end to end


def remote_witness(app: App) -> Witness | None:
    listed = app.git("ls-remote", "origin", "refs/conveyor/audit/hello")
    if not listed:
        return None
    oid = listed.split()[0]
    content = subprocess.run(["git", "--git-dir", app.git("remote", "get-url", "origin"), "cat-file", "blob", oid],
                             check=True, capture_output=True, text=True).stdout
    return parse_witness(content)


def test_audit_verify_end_to_end_with_the_witness_on_the_remote(app: App) -> None:
    assert app.ok("audit", "verify").out.startswith("audit: intact: 0 events, 0 releases checked")
    app.ok("deploy", "staging", "v1")
    first = remote_witness(app)
    db = sqlite3.connect(app.home / "ledger.db")
    newest = db.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
    assert first == Witness(*newest)  # published after the release, naming the head as it was then
    result = app.ok("audit", "verify", "--json").json()
    assert result["ok"] is True and result["releases_checked"] == 1
    assert result["head"] == {"id": newest[0], "hash": newest[1]}
    app.ok("deploy", "staging", "v2")
    second = remote_witness(app)
    assert second is not None and first is not None and second.event_id > first.event_id  # only forward

    # An edited event, found in the SQLite file and named.
    message = db.execute("SELECT message FROM events WHERE id = 3").fetchone()[0]
    with db:
        db.execute("UPDATE events SET message = 'nothing happened' WHERE id = 3")
    broken = app.run("audit", "verify")
    assert broken.code == 1, broken
    assert "audit: first bad event: event #3 was edited" in broken.out
    assert "audit: BROKEN:" in broken.out
    with db:
        db.execute("UPDATE events SET message = ? WHERE id = 3", (message,))
    app.ok("audit", "verify")

    # The newest entries deleted: the chain left is intact, the witness on the remote is not held.
    with db:
        db.execute("DELETE FROM events WHERE id > ?", (second.event_id - 2,))
    db.close()
    truncated = app.run("audit", "verify", "--json")
    assert truncated.code == 1
    data = truncated.json()
    assert data["first_bad_event"] is None and data["first_bad_release"] is not None  # its last state is gone
    assert data["witness_problem"]["id"] == second.event_id
    assert "newest entries were deleted" in data["witness_problem"]["reason"]

    # A later release does not move the witness away from the evidence.
    again = app.ok("deploy", "staging", "v1")
    assert "audit witness refs/conveyor/audit/hello left in place" in again.err
    assert remote_witness(app) == second
    assert app.run("audit", "verify").code == 1
