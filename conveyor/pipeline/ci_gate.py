"""Only CI-green commits ship: before a deploy, hotfix or promotion, the commit being shipped must have
passed its CI, judged from its commit statuses AND its check runs (forge/base.py: CIState) — a repo that
reports only check runs (GitHub Actions) has a combined status that reads `pending` forever (shipit#808).

The gate is on when conveyor.yml has a `ci:` section (it needs `forge:`); a rollback is never gated (it
re-applies a release that already ran). Which checks count is `ci.require` (default: every one that
reported; a commit with none reported yet is pending), less `ci.allow_failures`. Red refuses at once
(exit 3) naming the failing checks and their links; pending refuses naming what is pending, or with
--wait-for-ci polls every CONVEYOR_CI_POLL seconds (default 5), saying what it waits for, until green,
red, or `ci.timeout`. `--force --reason` ships anyway, recorded as overriding the CI gate.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from conveyor.config.forge import CIGate
from conveyor.errors import ConveyorError, Refused
from conveyor.forge.base import Check, CIState
from conveyor.pipeline.workspace import Workspace

GATED_KINDS = ("deploy", "hotfix", "promote")
PROGRESS_EVERY_SECONDS = 30.0  # an unchanged wait is still said this often


@dataclass(frozen=True)
class CIVerdict:
    """The gate's reading of one commit's CI under the app's `ci:` settings."""

    sha: str
    passing: list[Check] = field(default_factory=list)
    failing: list[Check] = field(default_factory=list)
    pending: list[Check] = field(default_factory=list)
    allowed: list[Check] = field(default_factory=list)  # failing or pending, but in allow_failures

    @property
    def green(self) -> bool:
        return not self.failing and not self.pending

    def summary(self) -> str:
        """One line: what is red, what is pending, with links."""
        parts = []
        if self.failing:
            parts.append("failing: " + ", ".join(map(_described, self.failing)))
        if self.pending:
            parts.append("pending: " + ", ".join(map(_described, self.pending)))
        if not parts:
            parts.append(f"{len(self.passing)} check(s) green: " + ", ".join(c.name for c in self.passing))
        if self.allowed:
            parts.append("allowed to fail: " + ", ".join(f"{c.name} ({c.detail or c.state})" for c in self.allowed))
        return "; ".join(parts)


def _described(check: Check) -> str:
    link = f" {check.url}" if check.url else ""
    return f"{check.name} ({check.detail or check.state}){link}"


def judge(state: CIState, gate: CIGate) -> CIVerdict:
    """Pure: the verdict on `state` under `gate`'s require and allow_failures."""
    names = list(gate.require) or [check.name for check in state.checks]
    allowed_names = set(gate.allow_failures)
    verdict = CIVerdict(state.sha)
    if not names:
        verdict.pending.append(Check("CI", "pending", None, "none", "no status or check run reported yet"))
        return verdict
    for name in names:
        check = state.check(name) or Check(name, "pending", None, "none", "not reported yet")
        if check.state != "success" and name in allowed_names:
            verdict.allowed.append(check)
        else:
            by_state = {"success": verdict.passing, "failure": verdict.failing, "pending": verdict.pending}
            by_state[check.state].append(check)
    return verdict


@dataclass(frozen=True)
class GateResult:
    """What the gate found: `check` is the line a dry run lists; `overridden` is set when --force shipped
    past a gate that was not green (recorded with the release)."""

    check: str
    overridden: str = ""


def check_ci(ws: Workspace, sha: str, kind: str, *, forced: bool, wait: bool) -> GateResult | None:
    """Refuse (Refused, exit 3) unless `sha`'s CI is green; None when the gate does not apply."""
    gate = ws.config.ci
    if gate is None or kind not in GATED_KINDS:
        return None
    short = sha[:12]
    try:
        verdict = _read(ws, sha, gate)
        if wait and not forced and not verdict.green and not verdict.failing:
            verdict = _wait(ws, sha, gate, verdict)
    except ConveyorError as exc:
        if not forced:
            raise
        return GateResult(f"CI of {short} unknown ({exc.message}); overridden by --force, on record",
                          f"CI of {short} could not be read: {exc.message}")
    if verdict.green:
        return GateResult(f"CI green for {short}: {verdict.summary()}")
    if forced:
        return GateResult(f"CI not green for {short}; overridden by --force, on record ({verdict.summary()})",
                          f"CI of {short}: {verdict.summary()}")
    raise Refused(_refusal(verdict, gate, waited=wait))


def _read(ws: Workspace, sha: str, gate: CIGate) -> CIVerdict:
    from conveyor.forge import forge_for

    forge = forge_for(ws.config, os.environ, say=ws.say)
    assert forge is not None  # the config demands forge: beside ci:
    return judge(forge.ci_state(sha), gate)


def _wait(ws: Workspace, sha: str, gate: CIGate, verdict: CIVerdict) -> CIVerdict:
    """Poll until green, red or the timeout, saying what is awaited whenever it changes (and every 30 s)."""
    from conveyor.settings import ci_poll_interval

    started = time.monotonic()
    deadline = started + gate.timeout
    said, said_at = "", 0.0
    while not verdict.green and not verdict.failing:
        now = time.monotonic()
        if now >= deadline:
            return verdict
        line = verdict.summary()
        if line != said or now - said_at >= PROGRESS_EVERY_SECONDS:
            ws.say(f"waiting for CI on {sha[:12]} ({_duration(now - started)} of {_duration(gate.timeout)}): {line}")
            said, said_at = line, now
        time.sleep(min(ci_poll_interval(), max(deadline - now, 0.0)))
        verdict = _read(ws, sha, gate)
    return verdict


def _refusal(verdict: CIVerdict, gate: CIGate, *, waited: bool) -> str:
    short = verdict.sha[:12]
    force = "pass --force --reason TEXT to ship it anyway (recorded as overriding the CI gate)"
    if verdict.failing:
        return f"CI is red for {short}: {verdict.summary()}; {force}"
    if waited:
        return (f"CI still pending for {short} after {_duration(gate.timeout)} (ci.timeout): {verdict.summary()}; "
                f"{force}")
    return (f"CI has not finished for {short}: {verdict.summary()}; pass --wait-for-ci to wait for it "
            f"(up to {_duration(gate.timeout)}), or {force}")


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:.0f}s"
