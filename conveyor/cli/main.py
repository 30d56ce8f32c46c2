"""The `conveyor` command: parse, call the pipeline, render. Heavy modules load inside each command so
`conveyor --help` stays fast.

Exit codes: 0 success, 1 operation failed, 2 bad input or usage, 3 refused by a lock, block or policy.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from conveyor.errors import EXIT_BAD_INPUT, EXIT_FAILED, BadInput, ConveyorError

F = TypeVar("F", bound=Callable[..., Any])

# Bounds a database integer holds on every backend (PostgreSQL's INTEGER is 32-bit).
RELEASE_NUMBER_MAX = 2**31 - 1
HISTORY_LIMIT_MAX = 1_000_000

EPILOG = "Exit codes: 0 success, 1 operation failed, 2 bad input or usage, 3 refused by a lock, block or policy."


def _say(message: str) -> None:
    click.echo(message, err=True)


class Context:
    def __init__(self, config: Path | None, events: str = "text", server: str | None = None,
                 app: str | None = None) -> None:
        self.config = config
        self.events = events
        self.server = server
        self.app = app
        self._ws: Any = None
        self._remote: Any = None

    def remote(self) -> Any:
        """The conveyor server client when CONVEYOR_SERVER (or --server) is set, else None: run locally."""
        if not self.server:
            return None
        if self._remote is None:
            from conveyor.cli.remote import Remote

            self._remote = Remote(self.server, self.app, self.events)
        return self._remote

    def workspace(self) -> Any:
        if self._ws is None:
            from conveyor.pipeline.events import json_lines_sink, text_sink
            from conveyor.pipeline.workspace import Workspace

            sink = json_lines_sink(_say) if self.events == "json" else text_sink(_say)
            self._ws = Workspace(Path.cwd(), config_override=self.config, sink=sink)
        return self._ws

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._remote is not None:
            self._remote.close()


EXIT_INTERRUPTED = 130


def run(fn: Callable[[], Any]) -> Any:
    """Turn conveyor's errors into one readable message and the documented exit code; with --json, also
    into the one JSON failure object on stdout (the only place errors become output)."""
    try:
        return fn()
    except ConveyorError as exc:
        message = _redacted(exc.message)
        click.echo(f"error: {message}", err=True)
        if _wants_json():
            emit_json(json_failure(exc.exit_code, _error_kind(exc), message, release=exc.release))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        click.echo("interrupted", err=True)
        if _wants_json():
            emit_json(json_failure(EXIT_INTERRUPTED, "interrupted", "interrupted by the user (Ctrl-C)",
                                   release=getattr(exc, "release", None)))  # pipeline/release.py attaches it
        sys.exit(EXIT_INTERRUPTED)


def json_failure(exit_code: int, kind: str, message: str, *, release: Any = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from conveyor.pipeline.outcome import failure

    return failure(exit_code, kind, message, release=release, extra=extra)


def _error_kind(exc: ConveyorError) -> str:
    from conveyor.pipeline.outcome import error_kind

    return error_kind(exc)


def _wants_json() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.params.get("as_json"))


def _json_in_argv() -> bool:
    """For errors click raises before any command runs: --json among conveyor's own arguments."""
    words = sys.argv[1:]
    return "--json" in (words[:words.index("--")] if "--" in words else words)


def _redacted(message: str) -> str:
    """An error can quote a task's or a container's output: hide secret values as Workspace.say does."""
    context = click.get_current_context(silent=True)
    ws = getattr(context.find_root().obj, "_ws", None) if context else None
    return ws.redactor.text(message) if ws is not None else message


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(fn)


def operation_options(fn: F) -> F:
    options = [
        click.option("--no-follow", "no_follow", is_flag=True,
                     help="With a server: print the queued operation's id and return at once."),
        click.option("--reason", default="", help="Why; recorded with the release."),
        click.option("--force", is_flag=True,
                     help="Override blocks and policies (needs --reason); recorded as ignoring safeties."),
        click.option("--wait", is_flag=True, help="Queue behind a running operation instead of refusing."),
        click.option("--dry-run", is_flag=True, help="Print every step it would take; change nothing."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return json_option(fn)


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="Use this conveyor.yml instead of the one committed in the commit being shipped; every "
                   "release made with it records the override.")
@click.option("--events", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Progress on stderr as text lines, or as one JSON object per event (step, status, message, "
                   "data, release) for a program following along.")
@click.option("--server", "server", envvar="CONVEYOR_SERVER", default=None, metavar="URL",
              help="Send operations and views to this conveyor server (with CONVEYOR_TOKEN) instead of running "
                   "them here. Env: CONVEYOR_SERVER.")
@click.option("--app", "app", envvar="CONVEYOR_APP", default=None, metavar="NAME",
              help="With a server: the app, when not run from its checkout. Env: CONVEYOR_APP.")
@click.version_option(package_name="conveyor")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, events: str, server: str | None, app: str | None) -> None:
    """conveyor: build once, deploy by digest, promote unchanged, roll back exactly."""
    ctx.obj = Context(config, events, server or None, app or None)
    ctx.call_on_close(ctx.obj.close)


def _release_result(result: Any, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    """A release (deploy, promote, rollback) or, for --dry-run, its plan and checks, on stdout."""
    from conveyor.pipeline.outcome import release_result

    show_result(release_result(result, extra), as_json)


def show_result(data: dict[str, Any], as_json: bool) -> None:
    """An operation's result object as --json prints it, or its one human line (the plan, for a dry run)."""
    from conveyor.cli.render import render_result

    emit_json(data) if as_json else click.echo(render_result(data))


@cli.command(epilog=EPILOG)
@click.argument("ref", default="HEAD")
@click.option("--no-follow", "no_follow", is_flag=True,
              help="With a server: print the queued operation's id and return at once.")
@json_option
@click.pass_obj
def build(obj: Context, ref: str, no_follow: bool, as_json: bool) -> None:
    """Build the image for REF's commit from a clean export, tag it with the full SHA, push it, print the
    digest. Skips the build when the registry already has that SHA."""

    def go() -> None:
        if (remote := obj.remote()) is not None:
            sys.exit(remote.operate("build", {"ref": remote.ref(ref)}, as_json=as_json, follow=not no_follow))
        from conveyor.pipeline.artifacts import build as build_artifact
        from conveyor.pipeline.outcome import build_result

        artifact, built = build_artifact(obj.workspace(), ref)
        show_result(build_result(artifact, built), as_json)

    run(go)


def wait_for_ci_option(fn: F) -> F:
    return click.option("--wait-for-ci", "wait_for_ci", is_flag=True,
                        help="With a `ci:` gate: wait (up to ci.timeout) for the commit's pending CI instead of "
                             "refusing.")(fn)


@cli.command(epilog=EPILOG)
@click.argument("env")
@click.argument("ref")
@click.option("--hotfix", is_flag=True, help="Deploy past a promotion policy or block; needs --reason.")
@wait_for_ci_option
@operation_options
@click.pass_obj
def deploy(obj: Context, env: str, ref: str, hotfix: bool, reason: str, force: bool, wait: bool,
           dry_run: bool, as_json: bool, no_follow: bool, wait_for_ci: bool) -> None:
    """Deploy REF's artifact (built earlier by `conveyor build`) to ENV."""

    def go() -> None:
        if (remote := obj.remote()) is not None:
            body = {"env": env, "ref": remote.ref(ref), "reason": reason, "hotfix": hotfix, "force": force,
                    "dry_run": dry_run, "wait_for_ci": wait_for_ci}
            sys.exit(remote.operate("deploy", body, as_json=as_json, follow=not no_follow))
        from conveyor.pipeline.operations import deploy as deploy_op

        release = deploy_op(obj.workspace(), env, ref, reason=reason, hotfix=hotfix, force=force, wait=wait,
                            dry_run=dry_run, wait_for_ci=wait_for_ci)
        _release_result(release, as_json)

    run(go)


@cli.command(epilog=EPILOG)
@click.option("--days", default=30, show_default=True, type=click.IntRange(min=1, max=365), help="The window.")
@json_option
@click.pass_obj
def delivery(obj: Context, days: int, as_json: bool) -> None:
    """Delivery metrics at the app's last stage: deployment frequency, lead time, change failure rate and
    time to restore, from the ledger alone."""

    def go() -> None:
        from conveyor.cli.render import render_delivery

        if (remote := obj.remote()) is not None:
            data = remote.client.get(f"/api/apps/{remote.app}/delivery", days=days)
        else:
            from conveyor.pipeline.delivery import delivery_metrics

            ws = obj.workspace()
            data = delivery_metrics(ws.ledger, {ws.config.app: ws.config.environments[-1].name}, days).as_dict()
        emit_json(data) if as_json else click.echo(render_delivery(data))

    run(go)


@cli.command(epilog=EPILOG)
@click.argument("source", required=False, metavar="[FROM")
@click.argument("target", required=False, metavar="TO]")
@click.option("--only", "only", default=None, metavar="REF",
              help="Promote exactly what FROM successfully ran for REF (the commit, a release-branch merge of "
                   "it, or a squash with the same tree); refuse anything else.")
@wait_for_ci_option
@operation_options
@click.pass_obj
def promote(obj: Context, source: str | None, target: str | None, only: str | None, reason: str, force: bool,
            wait: bool, dry_run: bool, as_json: bool, no_follow: bool, wait_for_ci: bool) -> None:
    """Ship exactly the artifact FROM runs to TO. The source release is pinned once, at the start, and used to
    the end. Without FROM TO it means the first two stages; with three or more stages, name them (CI should
    always name them)."""

    def go() -> None:
        if (remote := obj.remote()) is not None:
            body = {"source": source, "target": target, "only": remote.ref(only) if only else None,
                    "reason": reason, "force": force, "dry_run": dry_run, "wait_for_ci": wait_for_ci}
            sys.exit(remote.operate("promote", body, as_json=as_json, follow=not no_follow))
        from conveyor.pipeline.operations import promote as promote_op

        release = promote_op(obj.workspace(), source, target, only=only, reason=reason, force=force, wait=wait,
                             dry_run=dry_run, wait_for_ci=wait_for_ci)
        _release_result(release, as_json)

    run(go)


@cli.command(epilog=EPILOG)
@click.argument("env")
@click.option("--to", "to", type=click.IntRange(min=1, max=RELEASE_NUMBER_MAX), default=None,
              help="Release number to re-apply (default: the succeeded release before the live one).")
@operation_options
@click.pass_obj
def rollback(obj: Context, env: str, to: int | None, reason: str, force: bool, wait: bool, dry_run: bool,
             as_json: bool, no_follow: bool) -> None:
    """Re-apply a stored release exactly (same digest, same rendered env and config) as a new release."""

    def go() -> None:
        if (remote := obj.remote()) is not None:
            body = {"env": env, "to": to, "reason": reason, "force": force, "dry_run": dry_run}
            sys.exit(remote.operate("rollback", body, as_json=as_json, follow=not no_follow))
        from conveyor.pipeline.operations import rollback as rollback_op

        release, not_undone = rollback_op(obj.workspace(), env, to=to, reason=reason, force=force, wait=wait,
                                          dry_run=dry_run)
        if not as_json:
            for line in not_undone:
                click.echo(f"not undone by this rollback: {line}", err=True)
        _release_result(release, as_json, {"not_undone": not_undone})

    run(go)


@cli.command(epilog=EPILOG)
@json_option
@click.pass_obj
def status(obj: Context, as_json: bool) -> None:
    """Per environment: the live release, who shipped it and when, and how far behind the previous stage
    it is; locks and blocks in force; whether the target serves what the ledger says."""

    def go() -> None:
        from conveyor.cli.render import render_status
        from conveyor.pipeline.views import has_outage, status_report

        remote = obj.remote()
        data = remote.client.get(f"/api/apps/{remote.app}/status") if remote else status_report(obj.workspace())
        if as_json:
            emit_json(data)
        else:
            click.echo(render_status(data))
        if has_outage(data):
            sys.exit(EXIT_FAILED)

    run(go)


@cli.command(epilog=EPILOG)
@click.argument("env")
@click.option("--reason", required=True, help="Why; recorded with the recovery.")
@click.option("--force", is_flag=True, help="Take the lease even though its holder still heartbeats (stuck).")
@json_option
@click.pass_obj
def recover(obj: Context, env: str, reason: str, force: bool, as_json: bool) -> None:
    """Take ENV's lease over now from a holder that died (its lease expired) and record its release as
    interrupted, instead of waiting for the next operation to do it."""

    def go() -> None:
        from conveyor.pipeline.repair import recover as recover_op
        from conveyor.pipeline.views import release_view

        if (remote := obj.remote()) is not None:
            views = remote.client.post(f"/api/apps/{remote.app}/environments/{env}/recover",
                                       {"reason": reason, "force": force})["interrupted"]
        else:
            views = [release_view(r) for r in recover_op(obj.workspace(), env, reason, force=force)]
        if as_json:
            emit_json({"interrupted": views})
        else:
            click.echo(f"recovered {env}: " + (", ".join(f"{env}#{r['number']} marked interrupted" for r in views)
                                                or "no release was left unfinished"))

    run(go)


@cli.command(epilog=EPILOG)
@click.argument("env", required=False)
@click.pass_obj
def up(obj: Context, env: str | None) -> None:
    """Make ENV (default: every environment) serve its live release again: start the proxy if it is down,
    re-apply the live release's stored spec if its workload is gone. Records no new release."""

    def go() -> None:
        from conveyor.pipeline.repair import up as up_op

        for line in up_op(obj.workspace(), env):
            click.echo(line)

    run(go)


@cli.command(epilog=EPILOG)
@click.argument("env")
@click.option("--reason", required=True, help="Why; recorded with the retirement.")
@click.pass_obj
def retire(obj: Context, env: str, reason: str) -> None:
    """Stop and remove ENV, an environment no longer in conveyor.yml that still serves; its history stays."""

    def go() -> None:
        from conveyor.pipeline.repair import retire as retire_op

        live = retire_op(obj.workspace(), env, reason)
        click.echo(f"retired {env} (was serving {env}#{live.number})")

    run(go)


@cli.command(epilog=EPILOG)
@click.argument("env", required=False)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1, max=HISTORY_LIMIT_MAX))
@json_option
@click.pass_obj
def history(obj: Context, env: str | None, limit: int, as_json: bool) -> None:
    """Releases, newest first: number, kind, status, commit, digest, who, when, why."""

    def go() -> None:
        from conveyor.cli.render import render_history
        from conveyor.pipeline.views import history as history_view

        if (remote := obj.remote()) is not None:
            from conveyor.cli.remote import remote_history

            rows = remote_history(remote, env, limit)
        else:
            rows = history_view(obj.workspace(), env, limit)
        if as_json:
            emit_json(rows)
        else:
            click.echo(render_history(rows))

    run(go)


@cli.command(epilog=EPILOG)
@click.argument("source", required=False, metavar="[FROM")
@click.argument("target", required=False, metavar="TO]")
@json_option
@click.pass_obj
def diff(obj: Context, source: str | None, target: str | None, as_json: bool) -> None:
    """The commits TO lacks that FROM runs, from the two live releases in the ledger; flags commits that
    touch the configured migration paths. Without FROM TO it means the first two stages."""

    def go() -> None:
        from conveyor.cli.render import render_diff
        from conveyor.pipeline.diff import diff as diff_view

        if (remote := obj.remote()) is not None:
            from conveyor.cli.remote import remote_diff

            found = remote.client.get(f"/api/apps/{remote.app}/diff", source=source, target=target)
            if as_json:
                emit_json(found)
            else:
                sys.stdout.buffer.writelines(remote_diff(found))
            return
        data = diff_view(obj.workspace(), source, target, human=not as_json)
        if as_json:
            emit_json(data.as_dict())
        else:
            sys.stdout.flush()
            sys.stdout.buffer.writelines(render_diff(data))
            sys.stdout.buffer.flush()

    run(go)


@cli.group(epilog=EPILOG, invoke_without_command=True)
@json_option
@click.pass_context
def outbox(ctx: click.Context, as_json: bool) -> None:
    """What is still owed to the outside world (git tags and branches, announcements), and why it is not
    delivered yet."""
    if ctx.invoked_subcommand is not None:
        return
    obj: Context = ctx.obj

    def go() -> None:
        from conveyor.cli.render import render_outbox
        from conveyor.pipeline.views import outbox_view

        remote = obj.remote()
        items = remote.client.get(f"/api/apps/{remote.app}/outbox") if remote else outbox_view(obj.workspace())
        emit_json(items) if as_json else click.echo(render_outbox(items))

    run(go)


@outbox.command("flush", epilog=EPILOG)
@click.option("--reason", default="flushed with `conveyor outbox flush`", help="Why (recorded, with a server).")
@json_option
@click.pass_obj
def outbox_flush(obj: Context, reason: str, as_json: bool) -> None:
    """Deliver every undelivered item now, in order, whatever its backoff says. Exit 1 if any remain."""

    def go() -> None:
        from conveyor.cli.render import render_outbox
        from conveyor.pipeline.outbox import deliver
        from conveyor.pipeline.views import outbox_view

        if (remote := obj.remote()) is not None:
            items = remote.client.post(f"/api/apps/{remote.app}/outbox/flush", {"reason": reason})["undelivered"]
        else:
            ws = obj.workspace()
            deliver(ws, force=True)
            items = outbox_view(ws)
        if items and as_json:
            message = f"{len(items)} item(s) still undelivered"
            emit_json(json_failure(EXIT_FAILED, "failed", message, extra={"outbox": items}))
        else:
            emit_json(items) if as_json else click.echo(render_outbox(items))
        if items:
            sys.exit(EXIT_FAILED)

    run(go)


@cli.group(epilog=EPILOG)
def audit() -> None:
    """Check the ledger's record: the event chain, every release row, and the chain head published on git."""


@audit.command("verify", epilog=EPILOG)
@json_option
@click.pass_obj
def audit_verify(obj: Context, as_json: bool) -> None:
    """Verify the hash chain, every release row against its chained record, and that the ledger still
    holds the chain head the app's remote witnesses (refs/conveyor/audit/APP). Exit 1 names the first
    bad event or release; 0 when all is intact."""

    def go() -> None:
        from conveyor.cli.render import render_audit
        from conveyor.pipeline.audit import verify_workspace

        report = verify_workspace(obj.workspace())
        emit_json(report.view()) if as_json else click.echo(render_audit(report.view()))
        if not report.ok:
            sys.exit(EXIT_FAILED)

    run(go)


@cli.command("metrics", epilog=EPILOG)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Write FILE (via a temporary file and a rename, as a textfile collector needs) instead of "
                   "standard output.")
def metrics_cmd(output: Path | None) -> None:
    """Print the Prometheus metrics `conveyor server` serves on /metrics, from the ledger alone (no server):
    for node_exporter's textfile collector."""

    def go() -> None:
        from conveyor.ledger import open_ledger
        from conveyor.pipeline.metrics import exposition

        ledger = open_ledger()
        try:
            text = exposition(ledger)
        finally:
            ledger.close()
        if output is None:
            sys.stdout.buffer.write(text)
            return
        partial = output.with_name(f".{output.name}.tmp")
        try:
            partial.write_bytes(text)
            partial.replace(output)
        except OSError as exc:
            raise BadInput(f"--output {output}: {exc.strerror or exc}") from None

    run(go)


@cli.command("run", epilog=EPILOG,
             context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-i", "--interactive", "stdin", is_flag=True, help="Attach your standard input (a console).")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal.")
@click.option("--force", is_flag=True, help="Run past a block or freeze (needs --reason); recorded.")
@click.option("--reason", default="", help="Why; recorded with the run.")
@click.option("--host", default=None, help="ssh-hosts targets: the host to run on (default: the first).")
@click.argument("env")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def run_cmd(obj: Context, env: str, command: tuple[str, ...], stdin: bool, tty: bool, force: bool,
            reason: str, host: str | None) -> None:
    """Run COMMAND once with the image and settings of ENV's live release (`conveyor run ENV -- COMMAND…`).
    Its output is streamed to stdout and its exit code becomes conveyor's. Held to blocks and freezes like any
    operation; who ran what, for how long and its exit code are recorded."""

    def go() -> int:
        from conveyor.pipeline.run import run_command

        # Option parsing stops at ENV, so `--host H` written after ENV (`run ENV --host H -- CMD`) and the `--`
        # separating conveyor's arguments from the command arrive here.
        words, chosen = _host_option(list(command), host)
        words = words[1:] if words[:1] == ["--"] else words
        ws = obj.workspace()
        return run_command(ws, env, words, lambda line: click.echo(ws.redactor.text(line)), force=force,
                           reason=reason, stdin=stdin, tty=tty, host=chosen)

    sys.exit(run(go))


def _host_option(words: list[str], host: str | None) -> tuple[list[str], str | None]:
    """`--host H` (or `--host=H`) at the start of what follows ENV; the rest is the command."""
    if words[:1] == ["--host"]:
        if len(words) < 2:
            raise BadInput("--host needs a host (user@host:port, as the target lists it)")
        return words[2:], words[1]
    if words and words[0].startswith("--host="):
        return words[1:], words[0].split("=", 1)[1]
    return words, host


@cli.group(epilog=EPILOG)
def hosts() -> None:
    """A fleet of hosts (an ssh-hosts target)."""


@hosts.command("check", epilog=EPILOG)
@click.argument("env")
@json_option
@click.pass_obj
def hosts_check(obj: Context, env: str, as_json: bool) -> None:
    """Every host of ENV answers over SSH with a known host key, and has a working engine, its proxy, the
    port, the registry and room; a host that fails is named with the reason. Changes nothing."""

    def go() -> None:
        from conveyor.pipeline.hosts import check_hosts

        lines = check_hosts(obj.workspace(), env)
        if as_json:
            emit_json({"env": env, "ok": True, "checked": lines})
        else:
            click.echo("\n".join(lines))

    run(go)


def _scope_options(fn: F) -> F:
    fn = click.option("--org", "scope", flag_value="org", help="Every app in the ledger (a freeze).")(fn)
    fn = click.option("--app-wide", "scope", flag_value="app", help="Every environment of this app.")(fn)
    fn = click.option("--triggers", "scope", flag_value="triggers",
                      help="Only ENV's automatic triggers (webhook deploys; a rollback pauses them).")(fn)
    return fn


@cli.command(epilog=EPILOG)
@click.argument("env", required=False)
@click.option("--reason", required=True, help="Why; shown to everyone the block stops.")
@click.option("--until", default=None,
              help="Expiry: an ISO time (2026-12-28T09:00, UTC unless it gives an offset) or a duration from now "
                   "(90s, 30m, 2h30m, 1d, 1w), at most 10 years away.")
@_scope_options
@json_option
@click.pass_obj
def lock(obj: Context, env: str | None, reason: str, until: str | None, scope: str | None,
         as_json: bool) -> None:
    """Block operations on ENV (or the app, or the org) until unlocked or expired."""

    def go() -> None:
        from conveyor.pipeline.blocks import add_block
        from conveyor.pipeline.guards import describe_block
        from conveyor.pipeline.views import block_view

        if (remote := obj.remote()) is not None:
            view = remote.client.post(f"/api/apps/{remote.app}/blocks",
                                      {"env": env, "scope": scope or "env", "reason": reason, "until": until})
            emit_json(view) if as_json else click.echo(f"locked {view['app'] or 'the organisation'}"
                                                       f"{'/' + view['env'] if view['env'] else ''}: {view['reason']}")
            return
        block = add_block(obj.workspace(), env, scope or "env", reason, until)
        emit_json(block_view(block)) if as_json else click.echo(describe_block(block))

    run(go)


@cli.command(epilog=EPILOG)
@click.argument("env", required=False)
@_scope_options
@json_option
@click.pass_obj
def unlock(obj: Context, env: str | None, scope: str | None, as_json: bool) -> None:
    """Lift the blocks on ENV (or the app, or the org). Says which wider blocks still stop it; lifting
    nothing is exit 2."""

    def go() -> None:
        from conveyor.pipeline.blocks import lift_block
        from conveyor.pipeline.views import block_view

        if (remote := obj.remote()) is not None:
            found = remote.client.delete(f"/api/apps/{remote.app}/blocks", env=env, scope=scope or "env")
            emit_json(found) if as_json else click.echo(f"lifted {found['lifted']} block(s)" + "".join(
                f"; still blocked by {b['scope']} block: {b['reason']}" for b in found["still_blocked_by"]))
            return
        lifted = lift_block(obj.workspace(), env, scope or "env")
        if as_json:
            emit_json({"lifted": lifted.count, "still_blocked_by": [block_view(b) for b in lifted.still_blocking]})
        else:
            click.echo(lifted.summary())

    run(go)


# ---------------------------------------------------------------------------------- the server and its queue


def _remote_only(obj: Context) -> Any:
    remote = obj.remote()
    if remote is None:
        from conveyor.errors import BadInput

        raise BadInput("this command talks to a conveyor server: set CONVEYOR_SERVER (or --server URL) and "
                       "CONVEYOR_TOKEN")
    return remote


@cli.command("operations", epilog=EPILOG)
@click.option("--state", "states", multiple=True,
              type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled", "superseded"]))
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1, max=500))
@json_option
@click.pass_obj
def operations_cmd(obj: Context, states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """The server's operations, newest first: queued, running and finished, for every app."""

    def go() -> None:
        from conveyor.cli.render import render_operations

        found = _remote_only(obj).client.get("/api/operations", state=list(states) or None, limit=limit)
        emit_json(found["operations"]) if as_json else click.echo(render_operations(found["operations"]))

    run(go)


@cli.command("operation", epilog=EPILOG)
@click.argument("number", type=click.IntRange(min=1, max=2**63 - 1))
@click.option("--follow", is_flag=True, help="Follow its events until it ends; exit with its exit code.")
@json_option
@click.pass_obj
def operation_cmd(obj: Context, number: int, follow: bool, as_json: bool) -> None:
    """One operation of the server: its state, and its result once finished."""

    def go() -> None:
        from conveyor.cli.render import render_operations

        remote = _remote_only(obj)
        if follow:
            sys.exit(remote.show_outcome(remote.follow(number), as_json))
        found = remote.client.get(f"/api/operations/{number}")
        emit_json(found) if as_json else click.echo(render_operations([found]))

    run(go)


@cli.command("cancel", epilog=EPILOG)
@click.argument("number", type=click.IntRange(min=1, max=2**63 - 1))
@json_option
@click.pass_obj
def cancel_cmd(obj: Context, number: int, as_json: bool) -> None:
    """Cancel a queued operation on the server (one that runs already is never cut short): exit 3 if it is
    no longer queued."""

    def go() -> None:
        found = _remote_only(obj).client.post(f"/api/operations/{number}/cancel", {})
        emit_json(found) if as_json else click.echo(f"operation #{number} cancelled")

    run(go)


@cli.group(epilog=EPILOG)
def apps() -> None:
    """The apps a conveyor server ships (needs an admin token to change them)."""


@apps.command("add", epilog=EPILOG)
@click.argument("name")
@click.option("--repo", "repo_url", required=True, metavar="GIT_URL", help="Where the server fetches the app from.")
@json_option
@click.pass_obj
def apps_add(obj: Context, name: str, repo_url: str, as_json: bool) -> None:
    """Register NAME with the server; it mirrors the repo and reads everything from the commits it ships."""

    def go() -> None:
        found = _remote_only(obj).client.post("/api/apps", {"name": name, "repo_url": repo_url})
        emit_json(found) if as_json else click.echo(f"added {found['name']} ({found['repo_url']})")

    run(go)


@apps.command("list", epilog=EPILOG)
@json_option
@click.pass_obj
def apps_list(obj: Context, as_json: bool) -> None:
    """Every app the server ships."""

    def go() -> None:
        found = _remote_only(obj).client.get("/api/apps")
        emit_json(found) if as_json else click.echo("\n".join(f"{a['name']}  {a['repo_url']}" for a in found)
                                                    or "no apps registered")

    run(go)


@apps.command("remove", epilog=EPILOG)
@click.argument("name")
@click.pass_obj
def apps_remove(obj: Context, name: str) -> None:
    """Forget NAME (its records stay in the ledger)."""

    def go() -> None:
        _remote_only(obj).client.delete(f"/api/apps/{name}")
        click.echo(f"removed {name}")

    run(go)


@cli.group("server", epilog=EPILOG, invoke_without_command=True)
@click.option("--bind", default="127.0.0.1:8080", show_default=True, envvar="CONVEYOR_BIND", metavar="HOST:PORT",
              help="Where the API listens (port 0: any free port, printed when ready). Env: CONVEYOR_BIND.")
@click.option("--workers", default=4, show_default=True, type=click.IntRange(min=1, max=64),
              help="Operations this replica runs at once (different apps and environments).")
@click.option("--notify", "notify", type=click.Path(path_type=Path), default=None, envvar="CONVEYOR_NOTIFY",
              metavar="FILE", help="Org-wide announcement destinations: a YAML file with `notify:` as in "
              "conveyor.yml; every app announces there too. Env: CONVEYOR_NOTIFY.")
@click.option("--anonymous-read", is_flag=True, envvar="CONVEYOR_SERVER_ANONYMOUS_READ",
              help="Let anyone read the dashboard without signing in (actions still need a token). "
              "Env: CONVEYOR_SERVER_ANONYMOUS_READ=1.")
@click.option("--public-url", default=None, envvar="CONVEYOR_SERVER_URL", metavar="URL",
              help="Where people reach this server: announcements link to its release pages when an app names "
              "no notify.release_page. Env: CONVEYOR_SERVER_URL.")
@click.pass_context
def server_cmd(ctx: click.Context, bind: str, workers: int, notify: Path | None, anonymous_read: bool,
               public_url: str | None) -> None:
    """Serve the API and run the deploy queue's workers on this machine's ledger (CONVEYOR_DATABASE_URL for
    PostgreSQL, where several servers are replicas sharing one queue). SIGTERM drains: nothing new starts,
    what runs finishes, then it exits."""
    if ctx.invoked_subcommand is not None:
        return

    def go() -> None:
        from conveyor.server.run import serve
        from conveyor.settings import conveyor_home, lease_ttl

        serve(bind=bind, workers=workers, ttl=lease_ttl(), home=conveyor_home(), say=_say, notify=notify,
              anonymous_read=anonymous_read, public_url=public_url or None)

    run(go)


@server_cmd.group("token", epilog=EPILOG)
def token_cmd() -> None:
    """API tokens, on this machine's ledger: the token is printed once and only its hash is stored."""


@token_cmd.command("create", epilog=EPILOG)
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True,
              help="read, operate:APP, operate:*, block, or admin; repeat for several.")
@click.pass_obj
def token_create(obj: Context, name: str, scopes: tuple[str, ...]) -> None:
    """Create token NAME (the actor of everything done with it) and print it, once."""

    def go() -> None:
        from conveyor.ledger import open_ledger
        from conveyor.pipeline.tokens import create_token

        ledger = open_ledger()
        try:
            token = create_token(ledger, name, list(scopes))
        finally:
            ledger.close()
        _say(f"token '{name}' created with {', '.join(sorted(set(scopes)))}; it is shown once, here:")
        click.echo(token)

    run(go)


@token_cmd.command("list", epilog=EPILOG)
@json_option
@click.pass_obj
def token_list(obj: Context, as_json: bool) -> None:
    """Token names, scopes, and when each was last used (never the tokens)."""

    def go() -> None:
        from conveyor.ledger import open_ledger
        from conveyor.pipeline.tokens import token_view

        ledger = open_ledger()
        try:
            found = [token_view(t) for t in ledger.server.list_tokens()]
        finally:
            ledger.close()
        emit_json(found) if as_json else click.echo("\n".join(
            f"{t['name']}  {' '.join(t['scopes'])}  last used {t['last_used_at'] or 'never'}" for t in found)
            or "no tokens")

    run(go)


@token_cmd.command("revoke", epilog=EPILOG)
@click.argument("name")
@click.pass_obj
def token_revoke(obj: Context, name: str) -> None:
    """Revoke token NAME at once."""

    def go() -> None:
        from conveyor.ledger import open_ledger
        from conveyor.pipeline.tokens import revoke_token

        ledger = open_ledger()
        try:
            revoke_token(ledger, name)
        finally:
            ledger.close()
        click.echo(f"revoked {name}")


    run(go)


@cli.group(epilog=EPILOG)
def notify() -> None:
    """Deploy announcements (the `notify:` destinations in conveyor.yml)."""


@notify.command("test", epilog=EPILOG)
@click.argument("destination", required=False)
@click.pass_obj
def notify_test(obj: Context, destination: str | None) -> None:
    """Send a sample message to DESTINATION (default: every destination). Exit 1 if one fails."""

    def go() -> None:
        from conveyor.pipeline.announce import send_test

        results = send_test(obj.workspace(), destination)
        for name, error in results:
            click.echo(f"{name}: " + (f"FAILED: {error}" if error else "sent"))
        if any(error for _, error in results):
            sys.exit(EXIT_FAILED)

    run(go)


@cli.command("init", epilog=EPILOG)
@click.option("--app", "app_name", default=None, metavar="NAME", help="The app's name (default: the directory's).")
@click.option("--image", default=None, metavar="REPO", help="The image repository builds are pushed to.")
@click.option("--env", "envs", multiple=True, metavar="NAME",
              help="An environment, in pipeline order; repeat it (default: staging, production).")
@click.option("--port", "ports", multiple=True, type=click.IntRange(1, 65535), metavar="N",
              help="Each environment's stable port, in the same order (default: the Dockerfile's EXPOSE port, "
                   "or 8000, counting up).")
@click.option("--ci", type=click.Choice(["circleci", "github-actions"]), default=None,
              help="Also write the CI pipeline: .circleci/config.yml or .github/workflows/deploy.yml.")
@click.option("--install-from", default=None, metavar="SPEC",
              help="The pip requirement the pipeline installs conveyor with (default: conveyor==THIS_VERSION "
                   "from the index in $CONVEYOR_PIP_INDEX).")
@click.option("--index-url", default=None, metavar="URL", help="The package index the pipeline installs from.")
@click.option("--yes", "-y", is_flag=True, help="Ask nothing: take the flags and the defaults.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def init_cmd(app_name: str | None, image: str | None, envs: tuple[str, ...], ports: tuple[int, ...],
             ci: str | None, install_from: str | None, index_url: str | None, yes: bool, force: bool) -> None:
    """Set this app repo up: a commented conveyor.yml (and with --ci, the CI pipeline). Asks for what the
    flags do not say only on a terminal and without --yes."""

    def go() -> None:
        from conveyor.pipeline import init as setup

        root = setup.project_root(Path.cwd())
        if ci and not force and (root / setup.CONFIG_NAME).exists():
            files = setup.pipeline_for_existing_config(root, ci, setup.installer(install_from, index_url),
                                                       config_flags=bool(app_name or image or envs or ports))
        else:
            setup.refuse_existing(root, setup.paths_written(ci), force=force)
            answers = _init_answers(setup, root, app_name, image, envs, ports, ask=sys.stdin.isatty() and not yes)
            choices = setup.choose(root, **answers, ci=ci, install_from=install_from, index_url=index_url)
            files = setup.plan_files(choices)
            if choices.image_is_placeholder:
                _say(f"note: the image is a placeholder ({choices.image}); set yours in conveyor.yml")
        setup.write_files(root, files, force=force)
        for item in files:
            click.echo(f"wrote {item.path}")
        _say("conveyor reads the committed config: commit " + " ".join(item.path for item in files))

    run(go)


def _init_answers(setup: Any, root: Path, app: str | None, image: str | None, envs: tuple[str, ...],
                  ports: tuple[int, ...], *, ask: bool) -> dict[str, Any]:
    """What the flags give, and on a terminal the answers to what they leave out (else the defaults)."""
    app = app or (click.prompt("App name", setup.default_app_name(root)) if ask else setup.default_app_name(root))
    if image is None and ask:
        image = click.prompt("Image repository", f"{setup.PLACEHOLDER_REGISTRY}/{app}")
    if not envs:
        envs = tuple(click.prompt("Environments, in order", ",".join(setup.DEFAULT_ENVIRONMENTS))
                     .replace(",", " ").split()) if ask else setup.DEFAULT_ENVIRONMENTS
    if not ports and ask:
        defaults = setup.default_ports(len(envs), setup.find_dockerfile(root))
        ports = tuple(click.prompt(f"Port of {name}", default, type=click.IntRange(1, 65535))
                      for name, default in zip(envs, defaults, strict=True))
    return {"app": app, "image": image, "environments": envs, "ports": ports}


@cli.command("schema", epilog=EPILOG)
def schema_cmd() -> None:
    """Print the JSON Schema of conveyor.yml (for editors and CI)."""

    def go() -> None:
        from conveyor.pipeline.schema import schema_text

        click.echo(schema_text(), nl=False)

    run(go)


@cli.command("docs", epilog=EPILOG)
@click.option("--check", is_flag=True, help="Write nothing; exit 1 when the section is stale (for CI).")
@click.option("--readme", type=click.Path(path_type=Path), default=None,
              help="The README to write (default: README.md at the repo's root).")
@click.pass_obj
def docs_cmd(obj: Context, check: bool, readme: Path | None) -> None:
    """Write the README's deploy section from the config committed at HEAD: between the lines
    <!-- conveyor:docs:start --> and <!-- conveyor:docs:end --> (appended with them when absent)."""

    def go() -> None:
        import os

        from conveyor.pipeline.docs import readme_for_head

        result = readme_for_head(Path.cwd(), readme, obj.config, check=check)
        shown = os.path.relpath(result.path)
        if check and result.changed:
            _say(f"{shown}: the deploy section is stale; run `conveyor docs` and commit it")
            sys.exit(EXIT_FAILED)
        click.echo(f"{shown}: the deploy section " + ("is up to date" if not result.changed else "is written"))

    run(go)


def main() -> None:
    _leave(_exit_code(_run_cli))


def _run_cli() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.UsageError as exc:
        _usage_error(exc)
        if _json_in_argv():
            emit_json(json_failure(EXIT_BAD_INPUT, "usage", exc.format_message()))
        sys.exit(EXIT_BAD_INPUT)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_FAILED)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


def _usage_error(exc: click.exceptions.UsageError) -> None:
    """Two lines, like every other bad input: what is wrong, and where the help is."""
    context = exc.ctx
    hint = f"\nTry '{context.command_path} {context.help_option_names[0]}' for help." if context else ""
    click.echo(f"error: {exc.format_message()}{hint}", err=True)


def _exit_code(fn: Callable[[], None]) -> int:
    try:
        fn()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        click.echo(str(exc.code), err=True)
        return EXIT_FAILED
    return 0


def _leave(code: int) -> None:
    """Exit without the interpreter tearing down every loaded module one by one: with SQLAlchemy and pydantic
    loaded that costs 40-50 ms, a tenth of a large `conveyor diff`. By now the command has closed its
    workspace (ledger, registry); atexit handlers still run and the output is flushed. When another thread
    is still alive, the normal exit waits for it."""
    import atexit
    import os
    import threading

    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader went away (`conveyor diff | head`): nothing left to say to it
        pass
    except OSError:  # the output could not be written (a full disk): not a success
        code = code or EXIT_FAILED
    os._exit(code)
