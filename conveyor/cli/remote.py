"""The CLI as a client of `conveyor server` (CONVEYOR_SERVER or --server): the same commands, sent to the
API. An operation is queued there; the CLI follows its events live, prints what the local run would have
printed, and exits with its exit code. Ctrl-C stops following only: the operation goes on on the server.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from conveyor.errors import EXIT_FAILED, BadInput

EXIT_INTERRUPTED = 130
_LOCAL_REF = re.compile(r"^(HEAD|@|[0-9a-f]{7,40})([~^][0-9]*)*$")


class Remote:
    def __init__(self, url: str, app: str | None, events: str) -> None:
        from conveyor.client.api import ServerClient
        from conveyor.pipeline.identity import identify

        self.url = url
        self._app = app
        self.events = events
        origin = identify(os.environ).origin  # a CI job's URL when in CI, else user@host
        self.client = ServerClient(url, os.environ.get("CONVEYOR_TOKEN", ""), origin=origin)

    def close(self) -> None:
        self.client.close()

    @property
    def app(self) -> str:
        """--app / CONVEYOR_APP, else the app named by the checkout's committed conveyor.yml."""
        if self._app:
            return self._app
        from conveyor.pipeline.workspace import Workspace

        try:
            self._app = Workspace(Path.cwd()).config.app
        except BadInput:
            raise BadInput("name the app with --app NAME (or CONVEYOR_APP): there is no app checkout here") from None
        return self._app

    def ref(self, ref: str) -> str:
        """HEAD and SHAs name this checkout's commits: send the full SHA. Branch and tag names are resolved by
        the server, against the app's remote, which is what a team means by them."""
        if not _LOCAL_REF.fullmatch(ref):
            return ref
        from conveyor.vcs.git import Repo

        try:
            return Repo.discover(Path.cwd()).resolve(ref)
        except BadInput:
            return ref

    # ------------------------------------------------------------------------------------ operations

    def operate(self, kind: str, body: dict[str, Any], *, as_json: bool, follow: bool) -> int:
        operation = self.client.post(f"/api/apps/{self.app}/{kind}", body)
        number = operation["id"]
        if not follow:
            click.echo(_dump(operation) if as_json else str(number))
            return 0
        _say(f"operation #{number} queued on {self.url}" + _position(operation))
        final = self.follow(number)
        return self.show_outcome(final, as_json)

    def follow(self, number: int) -> dict[str, Any]:
        from conveyor.pipeline.events import Progress, json_lines_sink, text_sink

        sink = json_lines_sink(_say) if self.events == "json" else text_sink(_say)
        try:
            return self.client.follow(number, lambda data: sink(Progress(**data)), _say)
        except KeyboardInterrupt:
            _say(f"stopped following; operation #{number} goes on on the server (`conveyor operation {number}` "
                 f"shows it, `conveyor cancel {number}` cancels it while it is still queued)")
            sys.exit(EXIT_INTERRUPTED)

    def show_outcome(self, operation: dict[str, Any], as_json: bool) -> int:
        from conveyor.cli.render import render_result

        result = operation.get("result") or {}
        code = operation.get("exit_code")
        code = EXIT_FAILED if code is None else int(code)
        if result.get("ok") is False:
            click.echo(f"error: {result['error']['message']}", err=True)
            if as_json:
                click.echo(_dump(result))
            return code
        for line in result.get("not_undone", []) if not as_json else []:
            click.echo(f"not undone by this rollback: {line}", err=True)
        click.echo(_dump(result) if as_json else render_result(result))
        return code


def _position(operation: dict[str, Any]) -> str:
    ahead = operation.get("queue_position")
    return f" ({ahead} ahead of it in {operation.get('env') or 'the build lane'})" if ahead else ""


def _dump(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, sort_keys=True)


def _say(message: str) -> None:
    click.echo(message, err=True)


def remote_diff(data: dict[str, Any]) -> list[bytes]:
    """The human listing from the --json shape, line for line what a local `conveyor diff` prints."""
    from conveyor.cli.render import render_diff
    from conveyor.pipeline.diff import StageDiff

    listing = "".join(f"{c['sha']}  {c['date'][:10]}  {c['author']}: {c['subject']}\n" for c in data["commits"])
    stage = StageDiff(data["from"], data["to"], data["from_sha"], data["to_sha"], [], listing.encode(),
                      {c["sha"] for c in data["commits"] if c["migration"]}, data["compare_url"])
    return render_diff(stage)


def remote_history(remote: Remote, env: str | None, limit: int) -> list[dict[str, Any]]:
    """`limit` releases newest first, fetched a page at a time (keyset: each page continues from the last)."""
    rows: list[dict[str, Any]] = []
    before = None
    while len(rows) < limit:
        page = remote.client.get(f"/api/apps/{remote.app}/history", env=env, limit=min(500, limit - len(rows)),
                                 before=before)
        rows += page["releases"]
        before = page["next_before"]
        if before is None:
            break
    return rows
