"""Human-readable tables for status and history (the --json forms carry the same fields)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.pipeline.diff import StageDiff


def _when(iso: str | None) -> str:
    return iso.replace("T", " ")[:19] + " UTC" if iso else "-"


def _cell(text: str) -> str:
    """User-typed text (a reason, an actor) on one line: a newline or an escape sequence would break the table
    or drive the terminal, so control characters are shown escaped (\\n, \\x1b) instead."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def render_status(data: dict[str, Any]) -> str:
    out = []
    for row in data["environments"]:
        live = row["live"]
        if live:
            head = (f"{row['env']}: #{live['number']} {live['kind']} {live['sha'][:12]} {live['digest'][:19]}… "
                    f"by {live['actor']} at {_when(live['finished_at'])}")
        else:
            head = f"{row['env']}: nothing deployed"
        out.append(head)
        behind = row["behind"]
        if behind and behind["commits"] is not None:
            out.append(f"  {behind['commits']} commit(s) behind {behind['stage']}")
        if row["lease"]:
            out.append(_lease_line(row["env"], row["lease"]))
        for block in row["blocks"]:
            until = f" until {_when(block['until'])}" if block["until"] else ""
            out.append(f"  blocked ({block['scope']}) by {_cell(block['actor'])}{until}: {_cell(block['reason'])}")
        if row["drift"]:
            out.append(f"  DRIFT: the target serves {row['serving'] or 'nothing'}, not the ledger's live release; "
                       f"`conveyor up {row['env']}` re-applies the live release")
        for host in row.get("hosts") or []:
            mark = "  (DRIFT)" if host["drift"] else ""
            out.append(f"  host {host['host']}: {host['detail']}{mark}")
        if row.get("outage"):
            out.append(f"  OUTAGE: {row['outage']}; `conveyor up {row['env']}` restores it from the ledger")
    for row in data.get("retired_from_config", []):
        live = row["live"]
        if row["serving"]:
            out.append(f"{row['env']}: RETIRED FROM CONFIG BUT STILL SERVING #{live['number']} "
                       f"({row['serving']}); `conveyor retire {row['env']} --reason TEXT` stops it")
        else:
            out.append(f"{row['env']}: retired from config; nothing serves it, but it was never retired: "
                       f"`conveyor retire {row['env']} --reason TEXT` closes it")
    if data["outbox"]:
        out.append(render_outbox(data["outbox"]))
    return "\n".join(out)


def _lease_line(env: str, lease: dict[str, Any]) -> str:
    if lease["holder_gone_since"]:
        return (f"  HOLDER GONE since {_when(lease['holder_gone_since'])}: {lease['holder_actor']}'s "
                f"'{lease['operation']}' stopped heartbeating and its lease expired; "
                f"`conveyor recover {env} --reason TEXT` takes it over and marks its release interrupted")
    return (f"  lease held: {lease['holder_actor']} is running '{lease['operation']}' "
            f"since {_when(lease['acquired_at'])}")


def _status_word(release: dict[str, Any]) -> str:
    if release.get("holder_gone_since"):
        return f"{release['status']} (holder gone since {_when(release['holder_gone_since'])})"
    return str(release["status"])


def render_outbox(items: list[dict[str, Any]]) -> str:
    if not items:
        return "outbox: everything delivered"
    lines = [f"outbox: {len(items)} undelivered"]
    for item in items:
        lines.append(f"  #{item['id']} {item['what']} — {item['attempts']} attempt(s): {item['waiting']}")
    return "\n".join(lines)


def render_diff(data: StageDiff) -> list[bytes]:
    """Header, git's own listing (full SHA, date, author, subject), migration flags, compare link.

    Pieces of bytes, written one after another: the listing can be 100,000 lines (8 MB), and goes to the
    terminal exactly as git wrote it, without being decoded or copied again."""
    if data.source_sha is None:
        return [f"{data.source} has no live release\n".encode()]
    listing = data.listing
    if listing and not listing.endswith(b"\n"):
        listing += b"\n"
    lacks = f"({data.target_sha[:12]}) lacks" if data.target_sha else "(nothing deployed) lacks"
    count = listing.count(b"\n")
    header = f"{count} commit(s) in {data.source} ({data.source_sha[:12]}) that {data.target} {lacks}"
    if data.migrations:
        flagged = {sha.encode() for sha in data.migrations}
        listing = b"".join(
            line[:-1] + b"  [migration]\n" if line[:40] in flagged else line for line in listing.splitlines(True)
        )
    footer = f"{data.compare_url}\n".encode() if data.compare_url else b""
    return [header.encode() + b"\n", listing, footer]


def _why(release: dict[str, Any]) -> str:
    why = release["reason"] or release["error"] or ""
    if release.get("config_source", "commit") != "commit":
        why = f"[config: {release['config_source']}] {why}".rstrip()
    return why


def render_history(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no releases yet"
    table = [
        [
            f"{r['env']}#{r['number']}",
            r["kind"] + (" (forced)" if r["forced"] else "") + (f" ({r['hosts']} hosts)" if r.get("hosts") else ""),
            _status_word(r),
            r["sha"][:12], r["digest"][:19] + "…", _cell(r["actor"]), _when(r["finished_at"] or r["created_at"]),
            _cell(_why(r)),
        ]
        for r in rows
    ]
    return _table(["RELEASE", "KIND", "STATUS", "COMMIT", "DIGEST", "ACTOR", "WHEN", "REASON"], table)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def render_delivery(data: dict[str, Any]) -> str:
    rate = data["change_failure_rate"]
    return "\n".join([
        f"over the last {data['days']} days:",
        f"  deployment frequency  {data['deployment_frequency']:.2f} a day ({data['deployments']} deployments)",
        f"  lead time for changes {_duration(data['lead_time_seconds'])} (median, commit to live)",
        f"  change failure rate   {'n/a' if rate is None else f'{rate:.0%}'}",
        f"  time to restore       {_duration(data['time_to_restore_seconds'])} (median)",
    ])


def render_audit(report: dict[str, Any]) -> str:
    """What is wrong (first bad event, first bad release, witness), then one summary line."""
    lines = []
    for key, title in (("first_bad_event", "first bad event"), ("first_bad_release", "first bad release"),
                       ("witness_problem", "witness")):
        if report[key]:
            lines.append(f"audit: {title}: {report[key]['reason']}")
    head = report["head"]
    head_text = f"head event #{head['id']} ({head['hash']})" if head else "no events yet"
    verdict = "intact" if report["ok"] else "BROKEN"
    lines.append(f"audit: {verdict}: {report['events_checked']} events, {report['releases_checked']} releases "
                 f"checked; {head_text}; witness {report['witness']}")
    return "\n".join(lines)


def render_result(data: dict[str, Any]) -> str:
    """The one line an operation ends with (its --json object, for a person): a release, a build's digest,
    or a dry run's plan and checks."""
    if data.get("dry_run"):
        lines = ["dry run: nothing will be changed. The plan:"]
        lines += [f"  {number}. {line}" for number, line in enumerate(data["plan"], 1)]
        lines += ["checks passed:", *(f"  - {line}" for line in data["checks"])]
        return "\n".join(lines)
    if "built" in data:
        return str(data["digest"])
    return f"{data['env']}#{data['number']} {data['kind']} {data['status']}: {data['sha'][:12]} {data['digest']}"


def render_operations(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no operations"
    header = ["#", "APP", "ENV", "KIND", "STATE", "EXIT", "BY", "QUEUED", "NOTE"]
    table = [[str(r["id"]), r["app"], r["env"] or "-", r["kind"], r["state"],
              "-" if r["exit_code"] is None else str(r["exit_code"]), _cell(r["actor"]), _when(r["created_at"]),
              _cell(r["note"])] for r in rows]
    return _table(header, table)
