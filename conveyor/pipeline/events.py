"""Progress as structured events: what an operation is doing, as (step, status, message, data) and the
release it belongs to. The pipeline emits them; whoever runs it chooses how to show them: the CLI as text
lines or JSON lines (`--events json`), and a server will stream the same events to its clients.

Events that belong to a release are also appended to the ledger (pipeline/release.py); `shown` marks the
ones a person reading text wants to see (the others are the record's detail: "recorded", "finished", …).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Progress:
    step: str  # "note" for conveyor's own remarks outside any step
    status: str  # info | started | ok | failed
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    release: str | None = None  # "staging#4" when the event belongs to a release
    shown: bool = True


class EventSink(Protocol):
    def __call__(self, event: Progress) -> None: ...


def text_sink(write: Callable[[str], None]) -> EventSink:
    """Lines for a person: remarks as they are, a release's shown steps indented under it."""

    def show(event: Progress) -> None:
        if not event.shown:
            return
        write(event.message if event.step == "note" else f"  {event.step}: {event.message}")

    return show


def json_lines_sink(write: Callable[[str], None]) -> EventSink:
    """One JSON object per event, every event (for a program following along)."""

    def show(event: Progress) -> None:
        write(json.dumps(asdict(event), sort_keys=True, default=str))

    return show
