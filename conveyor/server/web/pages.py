"""The dashboard's routes: read the person from the session cookie, call pipeline/, render a template.

Pages read fine without JavaScript; static/live.js only swaps in what the live streams send. Every POST
is a form carrying the session's CSRF token; actions go through the same queue submissions, blocks and
recovery calls the JSON API makes, with the signed-in token's name as the actor, after a confirmation page
that shows the dry-run plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from conveyor.errors import ConveyorError
from conveyor.ledger.dashboard import HeadsCache
from conveyor.pipeline.identity import Identity
from conveyor.pipeline.overview import (
    AppRow,
    CommitFacts,
    RowMemo,
    Tile,
    build_activity,
    build_overview,
    unfinished_operations,
)
from conveyor.pipeline.worker import Server
from conveyor.server.web import actions
from conveyor.server.web.session import COOKIE, MAX_AGE, Person, Sessions, signing_key

HERE = Path(__file__).parent
SIGNIN_COOKIE = "conveyor_signin"
HISTORY_PAGE = 25
LIVE_LOOK = 0.1  # seconds between looks at the ledger's change marker while nothing woke the stream


class NotAllowed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ago=ago, when=when, short=lambda sha: (sha or "")[:7], seconds=seconds)
    return env


def ago(moment: datetime | str | float | None, now: float | None = None) -> str:
    """How long ago, to the minute (a float is a time.time() stamp)."""
    if not moment:
        return ""
    if isinstance(moment, str):  # the views' ISO times
        moment = datetime.fromisoformat(moment)
    stamp = moment if isinstance(moment, float) else moment.timestamp()
    delta = (time.time() if now is None else now) - stamp
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if delta >= size:
            return f"{int(delta // size)} {unit} ago"
    return "just now"


def when(moment: datetime | str | None) -> str:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def add_pages(api: FastAPI, server: Server, *, anonymous_read: bool) -> None:
    jinja = templates()
    sessions = Sessions(server.ledger, signing_key(server.home))
    facts = CommitFacts(server.home, on_learned=server.events_woken.bump)
    api.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @api.exception_handler(NotAllowed)
    async def _refused(request: Request, exc: NotAllowed) -> Response:
        if exc.status == 401 and request.method == "GET":
            return RedirectResponse(f"/signin?next={quote(request.url.path)}", status_code=303)
        return HTMLResponse(jinja.get_template("error.html").render(person=None, message=exc.message, csrf=""),
                            status_code=exc.status)

    def reader(request: Request) -> Person:
        person = sessions.person(request.cookies.get(COOKIE))
        if not person.signed_in and not anonymous_read:
            raise NotAllowed(401, "sign in with a token to see this server's dashboard")
        return person

    async def form_of(request: Request) -> tuple[Person, dict[str, str]]:
        """The signed-in person of a POST and its fields; refused without a session or its CSRF token."""
        person = sessions.person(request.cookies.get(COOKIE))
        fields = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
        if not person.signed_in:
            raise NotAllowed(403, "sign in first: actions need a token with the right scope")
        if not sessions.csrf_ok(person, fields.get("csrf")):
            raise NotAllowed(403, "refused: this form did not come from a page of this dashboard (CSRF check)")
        return person, fields

    def page(name: str, person: Person, status: int = 200, **values: Any) -> HTMLResponse:
        html = jinja.get_template(name).render(person=person, csrf=sessions.csrf_token(person) if person.signed_in
                                               else "", anonymous_read=anonymous_read, **values)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    heads, memo, rows = HeadsCache(), RowMemo(), RowCache(jinja.get_template("_overview_row.html"))

    def render_apps() -> str:
        view = build_overview(server.ledger, facts, heads=heads.heads(server.ledger), checks=server.checks,
                              memo=memo)
        return jinja.get_template("_overview_apps.html").render(
            view=view, rows_html=rows.html(view.apps, checks=server.checks is not None))

    def render_activity() -> str:
        return jinja.get_template("_overview_ops.html").render(activity=build_activity(server.ledger))

    live_cache = LiveCache(server, facts.learned_total, activity=render_activity, apps=render_apps)

    # ------------------------------------------------------------------------------------ sign-in

    @api.get("/signin", include_in_schema=False)
    def signin_form(request: Request, next: str = "/") -> HTMLResponse:
        nonce, check = sessions.signin_nonce()
        response = page("signin.html", Person(None, [], ""), next=_local(next), signin_check=check, error="")
        response.set_cookie(SIGNIN_COOKIE, nonce, max_age=900, httponly=True, samesite="lax")
        return response

    @api.post("/signin", include_in_schema=False)
    async def signin(request: Request) -> Response:
        fields = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
        target = _local(fields.get("next", "/"))
        if not sessions.signin_ok(request.cookies.get(SIGNIN_COOKIE), fields.get("csrf")):
            raise NotAllowed(403, "refused: this sign-in form did not come from this dashboard (CSRF check)")
        signed = await anyio.to_thread.run_sync(sessions.sign_in, fields.get("token", ""))
        if signed is None:
            nonce, check = sessions.signin_nonce()
            response = page("signin.html", Person(None, [], ""), 401, next=target, signin_check=check,
                            error="that token is not valid (revoked, or never issued here)")
            response.set_cookie(SIGNIN_COOKIE, nonce, max_age=900, httponly=True, samesite="lax")
            return response
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, signed[0], max_age=MAX_AGE, httponly=True, samesite="lax",
                            secure=request.url.scheme == "https")
        response.delete_cookie(SIGNIN_COOKIE)
        return response

    @api.post("/signout", include_in_schema=False)
    async def signout(request: Request) -> Response:
        await form_of(request)
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    # ----------------------------------------------------------------------------------- overview

    @api.get("/", include_in_schema=False, response_class=HTMLResponse)
    def overview(request: Request) -> Response:
        person = reader(request)
        key = live_cache.key()
        return page("overview.html", person, activity_html=live_cache.html("activity", key),
                    apps_html=live_cache.html("apps", key))

    @api.get("/live", include_in_schema=False)
    async def live(request: Request) -> EventSourceResponse:
        """The overview's stream: `activity` (data: {html, at}: the operations and any freeze) on every change,
        `apps` (the grid) on every change it shows."""
        await anyio.to_thread.run_sync(reader, request)
        return EventSourceResponse(_changes(server, live_cache), ping=10)

    # ------------------------------------------------------------------------------------ app page

    @api.get("/apps/{app}", include_in_schema=False, response_class=HTMLResponse)
    def app_page(request: Request, app: str, before: int | None = None, env: str | None = None,
                 source: str | None = None, target: str | None = None) -> Response:
        from conveyor.pipeline.app_page import app_page_data

        person = reader(request)
        _known(server, app)
        ws = server.workspace(app)
        try:
            data = app_page_data(ws, app, env=env, before=before, source=source, target=target,
                                 limit=HISTORY_PAGE, queue=unfinished_operations(server.ledger, app))
        except ConveyorError as exc:
            raise NotAllowed(400, exc.message) from None
        finally:
            ws.close()
        return page("app.html", person, app=app, data=data, may_operate=person.may(f"operate:{app}"),
                    may_block=person.may("block"))

    @api.post("/apps/{app}/actions/{action}", include_in_schema=False)
    async def act(request: Request, app: str, action: str) -> Response:
        person, fields = await form_of(request)
        return await anyio.to_thread.run_sync(do_action, person, app, action, fields)

    def do_action(person: Person, app: str, action: str, fields: dict[str, str]) -> Response:
        _known(server, app)
        spec = actions.ACTIONS.get(action)
        if spec is None:
            raise NotAllowed(404, f"no action '{action}'")
        needed = spec.scope.format(app=app)
        if not person.may(needed):
            raise NotAllowed(403, f"token '{person.name}' lacks the scope {needed} (it has "
                                  f"{', '.join(person.scopes)})")
        identity = Identity(str(person.name), "dashboard")
        if fields.get("confirm") != "yes":
            plan = actions.plan(server, app, action, fields, identity)
            return page("confirm.html", person, app=app, action=action, spec=spec, fields=fields, plan=plan)
        outcome = actions.perform(server, app, action, fields, identity)
        if outcome.operation is not None:
            return RedirectResponse(f"/operations/{outcome.operation}", status_code=303)
        if outcome.error:
            return page("confirm.html", person, app=app, action=action, spec=spec, fields=fields,
                        plan=actions.Plan([], [], outcome.error), status=409)
        return RedirectResponse(f"/apps/{app}", status_code=303)

    # --------------------------------------------------------------------------------- release page

    @api.get("/apps/{app}/releases/{env}/{number}", include_in_schema=False, response_class=HTMLResponse)
    def release_page(request: Request, app: str, env: str, number: int) -> Response:
        from conveyor.pipeline.release_record import release_record

        person = reader(request)
        _known(server, app)
        ws = server.workspace(app)
        try:
            record = release_record(ws, app, env, number)
        except ConveyorError as exc:
            raise NotAllowed(404, exc.message) from None
        finally:
            ws.close()
        return page("release.html", person, app=app, r=record)

    # ------------------------------------------------------------------------------- operation page

    @api.get("/operations/{operation_id}", include_in_schema=False, response_class=HTMLResponse)
    def operation_page(request: Request, operation_id: int) -> Response:
        from conveyor.pipeline.queue import operation_view

        person = reader(request)
        found = server.store.get_operation(operation_id)
        if found is None:
            raise NotAllowed(404, f"no operation #{operation_id}")
        shown = server.store.events_after(operation_id, 0, limit=5000)
        return page("operation.html", person, op=operation_view(found), events=shown,
                    last_id=shown[-1].id if shown else 0, may_retry=person.may(f"operate:{found.app}"))

    @api.get("/operations/{operation_id}/live", include_in_schema=False)
    async def operation_live(request: Request, operation_id: int, after: int = 0) -> EventSourceResponse:
        """The operation's events after the page's last one (or the browser's Last-Event-ID on a reconnect)."""
        from conveyor.pipeline.queue import operation_view
        from conveyor.server.app import _stream

        await anyio.to_thread.run_sync(reader, request)
        resumed = request.headers.get("last-event-id", "")
        start = int(resumed) if resumed.isdigit() else after
        return EventSourceResponse(_stream(server, operation_id, start, operation_view), ping=10)

    # ------------------------------------------------------------------------------ delivery metrics

    @api.get("/delivery", include_in_schema=False, response_class=HTMLResponse)
    def delivery_org(request: Request) -> Response:
        return page("delivery.html", reader(request), app=None, windows=_delivery(server, None))

    @api.get("/apps/{app}/delivery", include_in_schema=False, response_class=HTMLResponse)
    def delivery_app(request: Request, app: str) -> Response:
        person = reader(request)
        _known(server, app)
        return page("delivery.html", person, app=app, windows=_delivery(server, app))


def _delivery(server: Server, app: str | None) -> list[dict[str, Any]]:
    from conveyor.pipeline.delivery import delivery_metrics
    from conveyor.pipeline.overview import stage_order
    from conveyor.server.web.charts import bar_chart

    order = stage_order(server.ledger, {})
    last_stages = {name: stages[-1] for name, stages in order.items() if stages and (app is None or name == app)}
    windows = []
    for days in (7, 30, 90):
        metrics = delivery_metrics(server.ledger, last_stages, days)
        chart = bar_chart([(d.day, d.deployments, d.failures) for d in metrics.daily])
        windows.append({"days": days, "m": metrics, "chart": chart})
    return windows


def _known(server: Server, app: str) -> None:
    if server.store.get_app(app) is None:
        raise NotAllowed(404, f"no app named '{app}' is registered")


def _local(target: str) -> str:
    """Only a path on this server is a place to go after signing in (never another site)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


class LiveCache:
    """The overview's two live parts, each rendered once per state of the ledger and shared by every viewer
    and every stream: they name nobody (no person, no CSRF token), so one rendering serves all. The key is
    the ledger's change marker (a few index-only reads) and the minute, so "5 min ago" and blocks that
    expire are at most a minute old; an operation's new event re-renders only the small activity part."""

    def __init__(self, server: Server, learned: Callable[[], int], **renderers: Callable[[], str]) -> None:
        self._server = server
        self._learned = learned  # how much git has told the overview so far (CommitFacts)
        self._renderers = renderers
        self._keys: dict[str, Any] = {}
        self._html: dict[str, str] = {}
        self._lock = threading.Lock()

    def key(self) -> Any:
        from conveyor.ledger.dashboard import change_marker

        checks = self._server.checks
        return (change_marker(self._server.ledger), int(time.time() // 60),
                (checks.generation if checks else 0, self._learned()))

    @staticmethod
    def part_key(part: str, key: Any) -> Any:
        """The activity part shows the operations' newest events; the grid shows the rest and the checks."""
        marker, minute, checked = key
        return (marker, minute) if part == "activity" else (marker[:1] + marker[2:], minute, checked)

    def html(self, part: str, key: Any) -> str:
        wanted = self.part_key(part, key)
        with self._lock:  # one rendering at a time: viewers woken by the same change share it
            if self._keys.get(part) != wanted:
                self._html[part], self._keys[part] = self._renderers[part](), wanted
            return self._html[part]


async def _changes(server: Server, live: LiveCache) -> AsyncIterator[ServerSentEvent]:
    """Each live part sent once, then again each time what it shows changes. Woken at once by this
    replica's workers (and other replicas' NOTIFY on PostgreSQL); a look every LIVE_LOOK seconds covers
    writers the server does not hear of (a CLI on the same SQLite ledger)."""
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    unsubscribe = server.events_woken.subscribe(lambda: loop.call_soon_threadsafe(woken.set))
    sent: dict[str, Any] = {}
    try:
        while True:
            woken.clear()
            key = await anyio.to_thread.run_sync(live.key)
            for part in ("activity", "apps"):
                if sent.get(part) != live.part_key(part, key):
                    sent[part] = live.part_key(part, key)
                    html = await anyio.to_thread.run_sync(live.html, part, key)
                    yield ServerSentEvent(data=json.dumps({"html": html, "at": time.time()}), event=part)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout=LIVE_LOOK)
    finally:
        unsubscribe()


class RowCache:
    """Each app's rendered overview row, kept while what it shows stays the same: after one deploy the
    grid re-renders that app's row, not 500 of them. The same row object (RowMemo) in the same minute is
    the same HTML; in a new minute only rows whose worded times ("5 min ago") changed are rendered again.
    Used under LiveCache's lock (one rendering at a time)."""

    def __init__(self, template: Any) -> None:
        self._template = template
        self._rows: dict[str, tuple[Any, Any, str]] = {}

    def html(self, apps: list[AppRow], *, checks: bool) -> str:
        now = time.time()
        quick_key = (checks, int(now // 60))
        kept: dict[str, tuple[Any, Any, str]] = {}
        for row in apps:
            known = self._rows.get(row.name)
            if known is None or known[0][0] is not row or known[0][1] != quick_key:
                full = (checks, row_key(row, now))
                html = known[2] if known is not None and known[1] == full else self._template.render(
                    row=row, checks=checks)
                known = ((row, quick_key), full, html)
            kept[row.name] = known
        self._rows = kept  # apps gone from the view are dropped
        return "".join(html for _, _, html in kept.values())


def row_key(row: AppRow, now: float) -> tuple[Any, ...]:
    """Everything an app's row shows, with its times as the row words them ("5 min ago")."""
    waiting = tuple((w.source, w.counted, w.count, tuple(w.authors), ago(w.oldest, now)) for w in row.waiting)
    return tuple(_tile_key(t, now) for t in row.tiles) + waiting


def _tile_key(t: Tile, now: float) -> tuple[Any, ...]:
    live, latest, lease, check = t.live, t.latest, t.lease, t.check
    return (t.env, t.state, t.subject, live and (live.id, ago(live.finished_at, now)),
            latest and (latest.id, latest.status),
            lease and (lease.actor, lease.operation, ago(lease.acquired_at, now)),
            tuple((b.id, ago(b.created_at, now)) for b in t.blocks),
            check and (check.word, check.detail, ago(check.checked_at, now)))
