"""The organisation at a glance: every app x every stage, from a few ledger queries.

Per request the overview reads the ledger only (conveyor.ledger.dashboard: live releases and latest
attempts, blocks, leases, unfinished operations) and the stage order (`stages_by_app`, no config parse).
What only git knows, a commit's subject and the commits waiting between two stages, is asked of the app's
mirror once per SHA or SHA pair and kept: commits never change, so a cache keyed by SHAs is never stale,
and a page only runs git for the releases that are new since the last one.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.ledger.dashboard import EnvHeads, TileRelease, blocks_in_force, env_heads, last_progress
from conveyor.pipeline.apps import mirror_path

if TYPE_CHECKING:
    from conveyor.ledger.models import Block, Lease
    from conveyor.ledger.server_store import Operation
    from conveyor.ledger.store import Ledger
    from conveyor.pipeline.live_checks import LiveChecks, Verdict

_FIELD = "\x1f"
WAITING_SHOWN = 20  # commits listed per stage pair; the count and the authors cover all of them
GIT_TIMEOUT = 30.0
GIT_WORKERS = 4  # git processes at once while a server learns its mirrors (a cold start: 500 apps)


@dataclass(frozen=True)
class Commit:
    sha: str
    author: str
    committed: datetime
    subject: str


@dataclass(frozen=True)
class Waiting:
    """The commits the later stage lacks that the earlier one runs."""

    source: str
    target: str
    count: int
    commits: list[Commit]  # newest first, at most WAITING_SHOWN
    authors: list[str]
    oldest: datetime | None
    counted: bool = True  # False while the server's git is still counting them

    @property
    def staleness(self) -> float:
        return self.staleness_at(time.time())

    def staleness_at(self, now: float) -> float:
        """Horizon's idea: more commits, more people waiting and older work all make a stage pair staler.
        One point per commit, two per distinct author, one per day the oldest commit has waited."""
        if not self.count or not self.counted:
            return 0.0
        days = (now - self.oldest.timestamp()) / 86400 if self.oldest else 0.0
        return self.count + 2 * len(self.authors) + max(days, 0.0)


@dataclass
class Tile:
    env: str
    live: TileRelease | None
    subject: str
    latest: TileRelease | None  # the newest attempt when it is not the live one (running or failed)
    lease: Lease | None
    blocks: list[Block]
    operations: list[dict[str, Any]]  # queued and running ones for this env
    check: Verdict | None = None  # the server's latest check of the live release's target, if any yet

    @property
    def state(self) -> str:
        """One word a tile is labelled with (colour is never the only sign). An outage outranks a lock:
        it is what people need to see first; drift is a warning under the others."""
        if self.lease is not None or any(op["state"] == "running" for op in self.operations):
            return "deploying"
        if self.check is not None and self.check.word == "outage":
            return "outage"
        if self.blocks:
            return "locked"
        if self.latest is not None and self.latest.status in ("failed", "interrupted"):
            return "failed"
        if self.check is not None and self.check.word == "drift":
            return "drift"
        return "live" if self.live is not None else "empty"


@dataclass
class AppRow:
    name: str
    tiles: list[Tile]
    waiting: list[Waiting]

    @property
    def staleness(self) -> float:
        return self.staleness_at(time.time())

    def staleness_at(self, now: float) -> float:
        return max((w.staleness_at(now) for w in self.waiting), default=0.0)

    def waiting_after(self, env: str) -> Waiting | None:
        """The commits waiting between `env` and the stage after it, if any."""
        return next((w for w in self.waiting if w.source == env), None)


@dataclass
class Overview:
    apps: list[AppRow]
    org_blocks: list[Block]
    operations: list[dict[str, Any]]  # every queued and running operation, with its newest progress message
    took_ms: float = 0.0
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class CommitFacts:
    """Subjects and waiting commits read from an app's mirror, kept by SHA (thread-safe, bounded).

    With `on_learned` (the server), a page never waits on git: what is not known yet is asked by a
    background thread, GIT_WORKERS at a time, and the page says "counting" until then; `on_learned` is
    called once something new is known (the server wakes its live streams, so open pages fill in), and
    `learned(app)` counts what was learned for an app (part of what its overview row is built from).
    Without it (a CLI, a test) git is asked on the spot."""

    def __init__(self, home: Path, limit: int = 50_000, on_learned: Callable[[], None] | None = None) -> None:
        self.home = home
        self.limit = limit
        self._subjects: dict[tuple[str, str], str] = {}
        self._ranges: dict[tuple[str, str | None, str], tuple[int, list[Commit], list[str]]] = {}
        self._lock = threading.Lock()
        self._on_learned = on_learned
        self._asked: set[Any] = set()
        self._learned: dict[str, int] = {}
        self._learned_total = 0
        self._pool: Any = None

    def learned(self, app: str) -> int:
        return self._learned.get(app, 0)

    def learned_total(self) -> int:
        return self._learned_total

    def subjects(self, app: str, shas: list[str]) -> dict[str, str]:
        missing = [sha for sha in shas if (app, sha) not in self._subjects]
        if missing:
            if self._later(("subjects", app, tuple(missing)), lambda: self._learn_subjects(app, missing)):
                return {sha: self._subjects.get((app, sha), "") for sha in shas}
            self._learn_subjects(app, missing)
        return {sha: self._subjects.get((app, sha), "") for sha in shas}

    def waiting(self, app: str, older: str | None, newer: str) -> tuple[int, list[Commit], list[str]] | None:
        """The commits in newer and not in older: (count, commits, authors), or None while being counted."""
        key = (app, older, newer)
        if key not in self._ranges:
            if self._later(("range", *key), lambda: self._learn_range(app, older, newer)):
                return self._ranges.get(key)
            self._learn_range(app, older, newer)
        return self._ranges[key]

    def _later(self, key: Any, learn: Callable[[], None]) -> bool:
        """Hand `learn` to the background (once per key); False when there is no background."""
        if self._on_learned is None:
            return False
        with self._lock:
            if key in self._asked:
                return True
            self._asked.add(key)
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(GIT_WORKERS, thread_name_prefix="commit-facts")
        self._pool.submit(self._learn_then_tell, key, learn)
        return True

    def _learn_then_tell(self, key: Any, learn: Callable[[], None]) -> None:
        try:
            learn()
        finally:
            with self._lock:
                self._asked.discard(key)
                self._learned[key[1]] = self._learned.get(key[1], 0) + 1
                self._learned_total += 1
            assert self._on_learned is not None
            self._on_learned()

    def _learn_subjects(self, app: str, missing: list[str]) -> None:
        found = self._git_subjects(app, missing)
        with self._lock:
            self._trim(self._subjects)
            self._subjects.update({(app, sha): found.get(sha, "") for sha in missing})

    def _learn_range(self, app: str, older: str | None, newer: str) -> None:
        value = self._git_range(app, older, newer)
        with self._lock:
            self._trim(self._ranges)
            self._ranges[(app, older, newer)] = value

    def _trim(self, cache: dict[Any, Any]) -> None:
        if len(cache) >= self.limit:
            cache.clear()  # rare enough (50,000 SHAs) that a cold page afterwards is the cheap answer

    def _git(self, app: str, *args: str) -> str | None:
        path = mirror_path(self.home, app)
        if not (path / "HEAD").exists():
            return None
        try:
            result = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                                    timeout=GIT_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout if result.returncode == 0 else None

    def _git_subjects(self, app: str, shas: list[str]) -> dict[str, str]:
        out = self._git(app, "log", "--no-walk=unsorted", f"--format=%H{_FIELD}%s", *shas, "--")
        if out is None:  # one unknown SHA fails the batch: ask one at a time
            out = "".join(self._git(app, "log", "-1", f"--format=%H{_FIELD}%s", sha, "--") or "" for sha in shas)
        return dict(line.split(_FIELD, 1) for line in out.splitlines() if _FIELD in line)

    def _git_range(self, app: str, older: str | None, newer: str) -> tuple[int, list[Commit], list[str]]:
        spec = f"{older}..{newer}" if older else newer
        out = self._git(app, "log", f"--format=%H{_FIELD}%an{_FIELD}%ct{_FIELD}%s", spec, "--")
        if out is None:
            return 0, [], []
        commits = []
        for line in out.splitlines():
            sha, author, stamp, subject = line.split(_FIELD, 3)
            commits.append(Commit(sha, author, datetime.fromtimestamp(int(stamp), UTC), subject))
        authors = sorted({c.author for c in commits})
        return len(commits), commits, authors


def stage_order(ledger: Ledger, heads: dict[tuple[str, str], Any]) -> dict[str, list[str]]:
    """Every registered app's stages in config order; environments with releases the order does not name
    (not loaded yet by a server workspace, or retired from the config) follow, by name."""
    from conveyor.pipeline.apps import stages_by_app

    order = {app: list(stages) for app, stages in stages_by_app(ledger).items()}
    for app, env in sorted(heads):
        if app in order and env not in order[app]:
            order[app].append(env)
    return order


@dataclass
class Activity:
    """The part of the overview that moves with every step of a deploy: what runs and waits, and whether
    the organisation is frozen. Small and cheap, so it is sent on each event."""

    org_blocks: list[Block]
    operations: list[dict[str, Any]]


def build_activity(ledger: Ledger) -> Activity:
    return Activity([b for b in blocks_in_force(ledger) if b.scope == "org"], unfinished_operations(ledger))


class RowMemo:
    """Each app's last AppRow and what it was built from. The server's HeadsCache hands back the same
    EnvHeads objects until a release of that app+env is written, and the checks the same Verdict until the
    next check, so comparing the inputs is cheap, and an overview after one deploy builds one row anew."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[tuple[Any, ...], AppRow]] = {}

    def row(self, app: str, inputs: tuple[Any, ...], build: Callable[[], AppRow]) -> AppRow:
        known = self._rows.get(app)
        if known is None or known[0] != inputs:
            known = (inputs, build())
            self._rows[app] = known
        return known[1]

    def keep_only(self, apps: set[str]) -> None:
        for gone in set(self._rows) - apps:
            del self._rows[gone]


def build_overview(ledger: Ledger, facts: CommitFacts, *, heads: dict[tuple[str, str], EnvHeads] | None = None,
                   checks: LiveChecks | None = None, memo: RowMemo | None = None) -> Overview:
    """`heads` from a HeadsCache and `memo` when the caller keeps them (the server does); `checks` the
    server's cached target checks (none: tiles show no check)."""
    started = time.perf_counter()
    heads = env_heads(ledger) if heads is None else heads
    order = stage_order(ledger, heads)
    blocks = blocks_in_force(ledger)
    leases = {(le.app, le.env): le for le in ledger.list_leases()}
    unfinished = unfinished_operations(ledger)
    org = [b for b in blocks if b.scope == "org"]
    blocks_of: dict[str, list[Block]] = {}
    for b in blocks:
        if b.scope != "org":
            blocks_of.setdefault(b.app, []).append(b)
    ops_of: dict[str, list[dict[str, Any]]] = {}
    for op in unfinished:
        ops_of.setdefault(op["app"], []).append(op)
    memo = memo or RowMemo()
    rows = []
    for app, stages in order.items():
        mine = org + blocks_of.get(app, [])
        ops = ops_of.get(app, [])
        lives = [heads.get((app, env)) for env in stages]
        verdicts = tuple(checks.verdict(app, env, h.live.id) if checks is not None and h and h.live else None
                         for env, h in zip(stages, lives, strict=True))
        inputs = (tuple(stages), tuple(lives), tuple(mine), tuple(leases.get((app, env)) for env in stages),
                  tuple((op["id"], op["env"], op["state"]) for op in ops), verdicts, facts.learned(app))
        rows.append(memo.row(app, inputs, lambda app=app, stages=stages, mine=mine, ops=ops, verdicts=verdicts:
                             _app_row(app, stages, heads, mine, leases, ops, facts, verdicts)))
    memo.keep_only(set(order))
    now = time.time()
    rows.sort(key=lambda row: (-row.staleness_at(now), row.name))
    return Overview(rows, org, unfinished, took_ms=(time.perf_counter() - started) * 1000)


def unfinished_operations(ledger: Ledger, app: str | None = None) -> list[dict[str, Any]]:
    """Queued and running operations, oldest first, each with its newest progress message."""
    from conveyor.pipeline.queue import operation_view

    found: list[Operation] = ledger.server.list_operations(states=("queued", "running"), app=app, limit=500)
    progress = last_progress(ledger, [op.id for op in found if op.state == "running"])
    views = []
    for op in reversed(found):
        view = operation_view(op)
        event = progress.get(op.id)
        view["last_event_id"], view["last_message"] = (event[0], event[1].get("message", "")) if event else (0, "")
        views.append(view)
    return views


def _app_row(app: str, stages: list[str], heads: dict[tuple[str, str], Any], blocks: list[Block],
             leases: dict[tuple[str, str], Lease], unfinished: list[dict[str, Any]],
             facts: CommitFacts, verdicts: tuple[Verdict | None, ...]) -> AppRow:
    lives = {env: heads[(app, env)].live if (app, env) in heads else None for env in stages}
    subjects = facts.subjects(app, sorted({r.sha for r in lives.values() if r is not None}))
    tiles = []
    for env, check in zip(stages, verdicts, strict=True):
        head = heads.get((app, env))
        live = head.live if head else None
        latest = head.latest if head and head.latest and (live is None or head.latest.id != live.id) else None
        tiles.append(Tile(env, live, subjects.get(live.sha, "") if live else "", latest, leases.get((app, env)),
                          [b for b in blocks if _holds(b, app, env)],
                          [op for op in unfinished if op["app"] == app and op["env"] == env], check))
    waiting = []
    for earlier, later in zip(stages, stages[1:], strict=False):
        newer, older = lives[earlier], lives[later]
        if newer is None or (older is not None and older.sha == newer.sha):
            continue
        known = facts.waiting(app, older.sha if older else None, newer.sha)
        if known is None:
            waiting.append(Waiting(earlier, later, 0, [], [], None, counted=False))
            continue
        count, commits, authors = known
        if count:
            waiting.append(Waiting(earlier, later, count, commits[:WAITING_SHOWN], authors, commits[-1].committed))
    return AppRow(app, tiles, waiting)


def _holds(block: Block, app: str, env: str) -> bool:
    return block.scope == "org" or (block.app == app and (block.scope == "app" or block.env == env))
