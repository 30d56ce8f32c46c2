"""`conveyor audit verify`: check that the ledger is the record it was written as.

Three checks, each naming the first thing it finds wrong:

* the event chain: every event's hash matches its content, and it links to the event before it, so an
  edited, deleted or reordered event shows;
* every release row: it equals the newest `release-state` record the chain holds for it (written in the
  transaction that changed the row), so editing a release row afterwards shows;
* the outside witness: after each release the outbox publishes the chain head (event id and hash) as the
  blob `refs/conveyor/audit/<app>` on the app's git remote. The ledger must still hold that event with
  that hash, so deleting the newest entries (which leaves a shorter chain that is intact) shows too.

The witness only moves forward: before publishing a newer head, delivery checks that the ledger still
holds the head the remote already names; when it does not, the old witness is left in place (evidence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conveyor.errors import ConveyorError
from conveyor.ledger.models import Event, Release
from conveyor.pipeline.workspace import Workspace

WITNESS_REF_PREFIX = "refs/conveyor/audit/"
WITNESS_HEADER = "conveyor audit witness"


@dataclass(frozen=True)
class Witness:
    """A chain head as published outside the ledger."""

    event_id: int
    hash: str

    def text(self, app: str) -> str:
        return f"{WITNESS_HEADER}\napp {app}\nevent {self.event_id}\nhash {self.hash}\n"


@dataclass(frozen=True)
class Finding:
    subject: str  # event | release | witness
    id: int | None
    reason: str

    def view(self) -> dict[str, Any]:
        return {"subject": self.subject, "id": self.id, "reason": self.reason}


@dataclass(frozen=True)
class AuditReport:
    events_checked: int
    releases_checked: int
    head: Event | None
    first_bad_event: Finding | None
    first_bad_release: Finding | None
    witness_problem: Finding | None
    witness_note: str  # what the witness check compared, or why it did not run

    @property
    def ok(self) -> bool:
        return not (self.first_bad_event or self.first_bad_release or self.witness_problem)

    def view(self) -> dict[str, Any]:
        def finding(found: Finding | None) -> dict[str, Any] | None:
            return found.view() if found else None

        return {
            "ok": self.ok,
            "events_checked": self.events_checked,
            "releases_checked": self.releases_checked,
            "head": {"id": self.head.id, "hash": self.head.hash} if self.head else None,
            "first_bad_event": finding(self.first_bad_event),
            "first_bad_release": finding(self.first_bad_release),
            "witness_problem": finding(self.witness_problem),
            "witness": self.witness_note,
        }


def witness_ref(app: str) -> str:
    return f"{WITNESS_REF_PREFIX}{app}"


def parse_witness(text: str) -> Witness | None:
    """The head a witness blob names; None when the blob is not a witness conveyor wrote."""
    lines = text.splitlines()
    if not lines or lines[0] != WITNESS_HEADER:
        return None
    fields = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
    try:
        return Witness(int(fields["event"]), fields["hash"])
    except (KeyError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- checks


def check_chain(chain: list[Event]) -> Finding | None:
    """The first event whose content does not match its hash, or that does not follow its predecessor."""
    from conveyor.ledger.store import event_hash

    ids_by_hash = {event.hash: event.id for event in chain}
    previous: Event | None = None
    for event in chain:
        expected = event_hash(
            event.prev_hash, app=event.app, env=event.env, release_id=event.release_id, at=event.at,
            step=event.step, status=event.status, message=event.message, data=event.data,
        )
        if event.hash != expected:
            return Finding("event", event.id, f"event #{event.id} was edited: its content no longer matches "
                                              "its hash")
        if event.prev_hash != (previous.hash if previous else ""):
            return Finding("event", event.id, _broken_link(event, previous, ids_by_hash))
        previous = event
    return None


def _broken_link(event: Event, previous: Event | None, ids_by_hash: dict[str, int]) -> str:
    follows = ids_by_hash.get(event.prev_hash)
    if follows is not None:
        return (f"event #{event.id} is out of order: it was written after event #{follows}, not after "
                f"{f'event #{previous.id}' if previous else 'the start of the chain'} (events were reordered)")
    if previous is None:
        return f"event #{event.id} is first but was not: the events before it were deleted"
    return (f"event #{event.id} does not follow event #{previous.id}: the event(s) written between them "
            "were deleted (or rewritten)")


def check_releases(rows: list[Release], chain: list[Event]) -> Finding | None:
    """The first release (by id) whose row differs from its newest chained record, has none, or is gone."""
    from conveyor.ledger.store import RELEASE_STATE, release_state

    records: dict[int, Event] = {}
    for event in chain:
        if event.step == RELEASE_STATE and isinstance(event.data.get("release_id"), int):
            records[event.data["release_id"]] = event
    findings = [_release_finding(row, records.get(row.id), release_state) for row in rows]
    present = {row.id for row in rows}
    findings += [
        Finding("release", release_id, f"release id {release_id} was deleted: the chain records it "
                                       f"(event #{record.id}) but the ledger has no such row")
        for release_id, record in records.items() if release_id not in present
    ]
    found = [finding for finding in findings if finding is not None]
    return min(found, key=lambda finding: finding.id or 0) if found else None


def _release_finding(row: Release, record: Event | None, release_state: Any) -> Finding | None:
    label = f"release {row.app} {row.env}#{row.number} (id {row.id})"
    if record is None:
        return Finding("release", row.id, f"{label} has no record in the chain: it was not written by conveyor")
    recorded = record.data.get("state", {})
    actual = release_state(row)
    changed = sorted(key for key in {*recorded, *actual} if recorded.get(key) != actual.get(key))
    if not changed:
        return None
    key = changed[0]
    return Finding("release", row.id, f"{label} was edited: {key} is {actual.get(key)!r} in the row but "
                                      f"{recorded.get(key)!r} in its chained record (event #{record.id})"
                   + (f"; also changed: {', '.join(changed[1:])}" if changed[1:] else ""))


def check_witness(held: Event | None, newest_id: int, witness: Witness) -> Finding | None:
    """The ledger must still hold the event the witness names (`held`, looked up by its id), same hash."""
    if held is None:
        why = "its newest entries were deleted" if witness.event_id > newest_id else "that event was deleted"
        return Finding("witness", witness.event_id, f"the published chain head, event #{witness.event_id}, is "
                                                    f"no longer in the ledger: {why}")
    if held.hash != witness.hash:
        return Finding("witness", witness.event_id, f"event #{witness.event_id} is not the event the witness "
                                                    f"names (hash {held.hash[:12]}…, published "
                                                    f"{witness.hash[:12]}…): it was rewritten")
    return None


def verify(ledger: Any, witness: Witness | None, witness_note: str) -> AuditReport:
    """Check the ledger's chain, every release row and (when there is one) the witness."""
    chain = ledger.events()
    rows = ledger.all_releases()
    problem = None
    if witness is not None:
        held = next((event for event in chain if event.id == witness.event_id), None)
        problem = check_witness(held, chain[-1].id if chain else 0, witness)
    return AuditReport(
        events_checked=len(chain), releases_checked=len(rows), head=chain[-1] if chain else None,
        first_bad_event=check_chain(chain), first_bad_release=check_releases(rows, chain),
        witness_problem=problem, witness_note=witness_note,
    )


# ---------------------------------------------------------------------------------------------- the witness


def read_witness(ws: Workspace) -> tuple[Witness | None, str, Finding | None]:
    """The witness on the app's remote: (witness, what was read, a problem reading it)."""
    from conveyor.vcs.git import read_remote_blob

    refs = ws.config.release_refs
    ref = witness_ref(ws.config.app)
    if not refs.enabled:
        return None, "not published (release_refs is disabled)", None
    try:
        text = read_remote_blob(ws.repo, refs.remote, ref)
    except ConveyorError as exc:
        return None, f"could not be read from {refs.remote}", Finding("witness", None, exc.message)
    if text is None:
        return None, f"{ref} not on {refs.remote} yet (no release has been published)", None
    witness = parse_witness(text)
    if witness is None:
        return None, f"{ref} on {refs.remote}", Finding("witness", None, f"{ref} on {refs.remote} is not a "
                                                                         "conveyor audit witness")
    return witness, f"{ref} on {refs.remote} names event #{witness.event_id}", None


def verify_workspace(ws: Workspace) -> AuditReport:
    """`conveyor audit verify`: the ledger against itself and against the witness on the app's remote."""
    witness, note, unreadable = read_witness(ws)
    report = verify(ws.ledger, witness, note)
    if unreadable is None:
        return report
    return AuditReport(report.events_checked, report.releases_checked, report.head, report.first_bad_event,
                       report.first_bad_release, unreadable, note)


def witness_to_publish(ws: Workspace, remote: str, ref: str) -> str | None:
    """The blob to move the witness ref to (the chain head now), or None to leave the ref as it is.

    It never moves back, and never away from a head the ledger no longer holds: that witness is the
    evidence of a truncated ledger, so it stays and delivery says so."""
    from conveyor.vcs.git import read_remote_blob, write_blob

    head = ws.ledger.chain_head()
    if head is None:
        return None
    current_text = read_remote_blob(ws.repo, remote, ref)
    current = parse_witness(current_text) if current_text is not None else None
    if current is not None:
        problem = check_witness(ws.ledger.event_by_id(current.event_id), head.id, current)
        if problem is not None:
            ws.say(f"warning: audit witness {ref} left in place: {problem.reason} (run `conveyor audit verify`)")
            return None
        if current.event_id >= head.id:
            return None
    return write_blob(ws.repo, Witness(head.id, head.hash).text(ws.config.app))
