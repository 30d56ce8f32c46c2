"""The HTTP API of `conveyor server`: routes parse, check the token's scope, call pipeline/, render JSON.

FastAPI (on Starlette) because the request bodies are pydantic models we already depend on, and it writes
the OpenAPI document from the same models the routes validate with, so the published schema cannot drift
from what the server accepts; schemathesis checks the server against it in the tests.

No `from __future__ import annotations` here: FastAPI reads the routes' annotations (the local `Auth`
dependency among them) when they are defined.
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from conveyor.errors import BadInput, ConveyorError, InfrastructureMissing, Refused
from conveyor.ledger.server_store import FINISHED_STATES, OPERATION_STATES, Operation
from conveyor.pipeline import queue as queue_ops
from conveyor.pipeline.apps import app_view
from conveyor.pipeline.identity import Identity
from conveyor.pipeline.tokens import allows, authenticate, check_scopes, create_token, revoke_token, token_view
from conveyor.pipeline.worker import Server
from conveyor.server import schemas as s
from conveyor.server.limits import BoundedRequests
from conveyor.server.logs import add_request_logs
from conveyor.server.metrics import add_metrics
from conveyor.server.webhooks import add_webhooks
from conveyor.tracing import valid_traceparent

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": s.ErrorBody, "description": what}
    for code, what in ((400, "Bad input"), (401, "No token, or not a valid one"),
                       (403, "The token's scopes do not allow this"), (404, "No such app or operation"),
                       (409, "Refused: a lock, block, policy, or the operation's state"),
                       (503, "A system the server needs is unreachable"))
}
MAX_PAGE = 500


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def _error_response(status: int, kind: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"kind": kind, "message": message}}, status_code=status, headers=headers)


def create_app(server: Server, *, anonymous_read: bool = False) -> FastAPI:
    api = FastAPI(title="conveyor", version="1", openapi_url="/api/openapi.json", docs_url=None, redoc_url=None,
                  responses=ERRORS)
    api.add_middleware(BoundedRequests)
    # Big pages (the overview of hundreds of apps, long histories) go gzipped to a client that takes it;
    # Starlette's middleware leaves event streams alone.
    api.add_middleware(GZipMiddleware, minimum_size=16_384, compresslevel=5)
    bearer = HTTPBearer(auto_error=False, description="A token from `conveyor server token create`.")

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.kind, exc.message)

    @api.exception_handler(ConveyorError)
    async def _conveyor_error(request: Request, exc: ConveyorError) -> JSONResponse:
        status = 503 if isinstance(exc, InfrastructureMissing) else 400 if isinstance(exc, BadInput) \
            else 409 if isinstance(exc, Refused) else 500
        kind = "infrastructure_missing" if status == 503 else "bad_input" if status == 400 else \
            "refused" if status == 409 else "failed"
        return _error_response(status, kind, exc.message)

    class Caller:
        def __init__(self, name: str, scopes: list[str], origin: str, traceparent: str = "") -> None:
            self.name, self.scopes, self.origin = name, scopes, origin
            self.traceparent = traceparent  # the caller's W3C trace context: its operations join that trace

        def need(self, scope: str) -> None:
            if not allows(self.scopes, scope):
                raise ApiError(403, "forbidden", f"token '{self.name}' lacks the scope {scope} "
                                                 f"(it has {', '.join(self.scopes)})")

        @property
        def identity(self) -> Identity:
            return Identity(self.name, self.origin)

    def caller(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
               x_conveyor_origin: Annotated[str | None, Header(max_length=500)] = None) -> Caller:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(401, "unauthenticated", "send Authorization: Bearer TOKEN "
                                                   "(create one with `conveyor server token create`)")
        token = authenticate(server.ledger, credentials.credentials)
        if token is None:
            raise ApiError(401, "unauthenticated", "that token is not valid (revoked, or never issued here)")
        client = request.client.host if request.client else "unknown"
        origin = "".join(ch for ch in (x_conveyor_origin or "") if ch.isprintable()).strip()
        return Caller(token.name, token.scopes, origin or f"api from {client}",
                      valid_traceparent(request.headers.get("traceparent")))

    Auth = Annotated[Caller, Depends(caller)]

    # Scopes are checked as dependencies, so a token too narrow for a route is told 403 before its body is
    # even validated (a caller must not learn more than "not allowed").
    def scoped(scope: str) -> Any:
        def check(who: Auth) -> Caller:
            who.need(scope)
            return who

        return Annotated[Caller, Depends(check)]

    def operate_caller(request: Request, who: Auth) -> Caller:
        who.need(f"operate:{request.path_params['app']}")
        return who

    def cancel_caller(request: Request, who: Auth) -> Caller:
        number = str(request.path_params["operation_id"])
        found = server.store.get_operation(int(number)) if number.isdigit() and len(number) < 19 else None
        who.need(f"operate:{found.app if found else '*'}")
        return who

    Reader, Blocker, Admin = scoped("read"), scoped("block"), scoped("admin")
    Operator = Annotated[Caller, Depends(operate_caller)]
    Canceller = Annotated[Caller, Depends(cancel_caller)]
    add_webhooks(api, server, Reader, Admin)

    @contextmanager
    def workspace(app: str, who: Caller | None = None) -> Iterator[Any]:
        if server.store.get_app(app) is None:
            raise ApiError(404, "not_found", f"no app named '{app}' is registered")
        ws = server.workspace(app, identity=who.identity if who else None)
        try:
            yield ws
        finally:
            ws.close()

    def operation_or_404(operation_id: int) -> Operation:
        operation = server.store.get_operation(operation_id)
        if operation is None:
            raise ApiError(404, "not_found", f"no operation #{operation_id}")
        return operation

    def view(operation: Operation) -> dict[str, Any]:
        position = server.store.queue_position(operation) if operation.state == "queued" else None
        return queue_ops.operation_view(operation, position)

    # ------------------------------------------------------------------------------------------ health

    @api.get("/api/health", response_model=s.Health, tags=["server"])
    def health() -> dict[str, Any]:
        """Unauthenticated: whether this replica is up, and what it runs."""
        return {"ok": True, "replica": server.replica, "running": server.running()}

    # -------------------------------------------------------------------------------------------- apps

    @api.get("/api/apps", response_model=list[s.AppOut], tags=["apps"])
    def list_apps(who: Reader) -> list[dict[str, Any]]:
        return [app_view(app) for app in server.store.list_apps()]

    @api.post("/api/apps", response_model=s.AppOut, status_code=201, tags=["apps"])
    def add_app(body: s.AppIn, who: Admin) -> dict[str, Any]:
        from conveyor.pipeline.apps import add_app as add

        return app_view(add(server.ledger, server.home, body.name, body.repo_url, who.name))

    @api.delete("/api/apps/{app}", response_model=s.Removed, tags=["apps"])
    def remove_app(app: str, who: Admin) -> dict[str, Any]:
        from conveyor.pipeline.apps import remove_app as remove

        if server.store.get_app(app) is None:
            raise ApiError(404, "not_found", f"no app named '{app}' is registered")
        remove(server.ledger, server.home, app)
        return {"removed": app}

    # ------------------------------------------------------------------------------------------- views

    Days = Annotated[int, Query(ge=1, le=365, description="The window: the last N days.")]

    @api.get("/api/delivery", response_model=s.Delivery, tags=["views"])
    def org_delivery(who: Reader, days: Days = 30) -> dict[str, Any]:
        """Delivery metrics for the organisation: every registered app at its last stage."""
        from conveyor.pipeline.delivery import delivery_metrics, last_stages

        return delivery_metrics(server.ledger, last_stages(server.store.stages_by_app()), days).as_dict()

    @api.get("/api/apps/{app}/delivery", response_model=s.Delivery, tags=["views"])
    def app_delivery(app: str, who: Reader, days: Days = 30) -> dict[str, Any]:
        from conveyor.pipeline.delivery import delivery_metrics, last_stages

        if server.store.get_app(app) is None:
            raise ApiError(404, "not_found", f"no app named '{app}' is registered")
        stages = last_stages(server.store.stages_by_app(), app)
        if not stages:  # no server has read its config yet: read it now (and remember its stages)
            with workspace(app) as ws:
                stages = {app: ws.config.environments[-1].name}
        return delivery_metrics(server.ledger, stages, days).as_dict()

    @api.get("/api/apps/{app}/status", response_model=dict[str, Any], tags=["views"])
    def status(app: str, who: Reader) -> dict[str, Any]:
        """What `conveyor status --json` prints."""
        from conveyor.pipeline.views import status_report

        with workspace(app) as ws:
            return status_report(ws)

    @api.get("/api/apps/{app}/history", response_model=s.History, tags=["views"])
    def history(app: str, who: Reader, env: Annotated[str | None, Query(pattern=s.NAME, max_length=63)] = None,
                limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
                before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None) -> dict[str, Any]:
        """Releases newest first, a page at a time: pass the page's `next_before` as `before` for the next."""
        from conveyor.pipeline.views import history_page

        with workspace(app) as ws:
            rows, next_before = history_page(ws, env, limit, before_id=before)
        return {"releases": rows, "next_before": next_before}

    @api.get("/api/apps/{app}/diff", response_model=dict[str, Any], tags=["views"])
    def diff(app: str, who: Reader, source: Annotated[str | None, Query(pattern=s.NAME, max_length=63)] = None,
             target: Annotated[str | None, Query(pattern=s.NAME, max_length=63)] = None) -> dict[str, Any]:
        """What `conveyor diff [FROM TO] --json` prints: the commits TO lacks that FROM runs."""
        from conveyor.pipeline.diff import diff as diff_view

        with workspace(app) as ws:
            return diff_view(ws, source, target, human=False).as_dict()

    @api.get("/api/apps/{app}/outbox", response_model=list[dict[str, Any]], tags=["views"])
    def outbox(app: str, who: Reader) -> list[dict[str, Any]]:
        from conveyor.pipeline.views import outbox_view

        with workspace(app) as ws:
            return outbox_view(ws)

    @api.post("/api/apps/{app}/outbox/flush", response_model=s.Flushed, tags=["recovery"])
    def flush_outbox(app: str, body: s.ReasonIn, who: Blocker) -> dict[str, Any]:
        """Retry every undelivered item now (scope block); recorded with the token's name and the reason."""
        from conveyor.pipeline.outbox import retry_all
        from conveyor.pipeline.views import outbox_view

        with workspace(app, who) as ws:
            retry_all(ws, body.reason)
            return {"undelivered": outbox_view(ws)}

    # ------------------------------------------------------------------------------------------ blocks

    @api.get("/api/apps/{app}/blocks", response_model=list[dict[str, Any]], tags=["blocks"])
    def blocks(app: str, who: Reader) -> list[dict[str, Any]]:
        from conveyor.pipeline.views import app_blocks

        with workspace(app) as ws:
            return app_blocks(ws)

    @api.post("/api/apps/{app}/blocks", response_model=dict[str, Any], status_code=201, tags=["blocks"])
    def lock(app: str, body: s.LockIn, who: Blocker) -> dict[str, Any]:
        """Lock an environment, the app, or (scope org) every app: what `conveyor lock --json` prints."""
        from conveyor.pipeline.blocks import add_block
        from conveyor.pipeline.views import block_view

        with workspace(app, who) as ws:
            return block_view(add_block(ws, body.env, body.scope, body.reason, body.until))

    @api.delete("/api/apps/{app}/blocks", response_model=s.Unlocked, tags=["blocks"])
    def unlock(app: str, who: Blocker, env: Annotated[str | None, Query(pattern=s.NAME, max_length=63)] = None,
               scope: Annotated[str, Query(pattern="^(env|app|org|triggers)$")] = "env") -> dict[str, Any]:
        from conveyor.pipeline.blocks import lift_block
        from conveyor.pipeline.views import block_view

        with workspace(app, who) as ws:
            lifted = lift_block(ws, env, scope)
            return {"lifted": lifted.count, "still_blocked_by": [block_view(b) for b in lifted.still_blocking]}

    # -------------------------------------------------------------------------------------- operations

    def submit(app: str, kind: str, params: dict[str, Any], who: Caller) -> dict[str, Any]:
        if server.store.get_app(app) is None:
            raise ApiError(404, "not_found", f"no app named '{app}' is registered")
        operation, ahead = queue_ops.submit(server, app, kind, params, actor=who.name, origin=who.origin,
                                            traceparent=who.traceparent)
        return queue_ops.operation_view(operation, ahead)

    @api.post("/api/apps/{app}/build", response_model=s.OperationOut, status_code=202, tags=["operations"])
    def build(app: str, body: s.BuildIn, who: Operator) -> dict[str, Any]:
        return submit(app, "build", body.model_dump(), who)

    @api.post("/api/apps/{app}/deploy", response_model=s.OperationOut, status_code=202, tags=["operations"])
    def deploy(app: str, body: s.DeployIn, who: Operator) -> dict[str, Any]:
        return submit(app, "deploy", body.model_dump(), who)

    @api.post("/api/apps/{app}/promote", response_model=s.OperationOut, status_code=202, tags=["operations"])
    def promote(app: str, body: s.PromoteIn, who: Operator) -> dict[str, Any]:
        if (body.source is None) != (body.target is None):
            raise ApiError(400, "bad_input", "promote takes both source and target, or neither")
        return submit(app, "promote", body.model_dump(), who)

    @api.post("/api/apps/{app}/rollback", response_model=s.OperationOut, status_code=202, tags=["operations"])
    def rollback(app: str, body: s.RollbackIn, who: Operator) -> dict[str, Any]:
        return submit(app, "rollback", body.model_dump(), who)

    @api.get("/api/operations", response_model=s.OperationList, tags=["operations"])
    def operations(who: Reader, app: Annotated[str | None, Query(pattern=s.NAME, max_length=63)] = None,
                   state: Annotated[list[str] | None, Query()] = None,
                   limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
                   before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None) -> dict[str, Any]:
        """Queued, running and finished operations, newest first; `state` may repeat."""
        states = tuple(state or ())
        unknown = [name for name in states if name not in OPERATION_STATES]
        if unknown:
            raise ApiError(400, "bad_input", f"unknown state {unknown[0]!r}: {', '.join(OPERATION_STATES)}")
        rows = server.store.list_operations(states=states or None, app=app, before_id=before, limit=limit + 1)
        page = rows[:limit]
        return {"operations": [view(op) for op in page], "next_before": page[-1].id if len(rows) > limit else None}

    @api.get("/api/operations/{operation_id}", response_model=s.OperationOut, tags=["operations"])
    def operation(operation_id: Annotated[int, Path(ge=1, le=2**63 - 1)], who: Reader) -> dict[str, Any]:
        return view(operation_or_404(operation_id))

    @api.post("/api/operations/{operation_id}/cancel", response_model=s.OperationOut, tags=["operations"])
    def cancel(operation_id: Annotated[int, Path(ge=1, le=2**63 - 1)], who: Canceller) -> dict[str, Any]:
        """Cancel a queued operation (one that runs is never cut short by the API)."""
        return view(queue_ops.cancel(server.store, operation_id, who.name))

    @api.get("/api/operations/{operation_id}/events", tags=["operations"],
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "Server-Sent Events: `progress` (data: one event as "
                                             "`--events json` prints it; id: resume from it with "
                                             "Last-Event-ID), then `end` (data: the operation)."}})
    async def events(operation_id: Annotated[int, Path(ge=1, le=2**63 - 1)], who: Reader,
                     last_event_id: Annotated[str | None, Header(max_length=30)] = None) -> EventSourceResponse:
        await anyio.to_thread.run_sync(operation_or_404, operation_id)
        after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        return EventSourceResponse(_stream(server, operation_id, after, view), ping=10)

    # ---------------------------------------------------------------------------------------- recovery

    @api.get("/api/recovery", response_model=s.Recovery, tags=["recovery"])
    def recovery(who: Reader) -> dict[str, Any]:
        """What needs a person: leases whose holder died, releases left unfinished or interrupted,
        undelivered outbox items, and operations whose replica stopped renewing them."""
        from conveyor.pipeline.recovery import recovery_report

        lapsed = queue_ops.lapsed(server.store, MAX_PAGE)
        return {**recovery_report(server.ledger), "lapsed_operations": [view(op) for op in lapsed]}

    @api.post("/api/apps/{app}/environments/{env}/recover", response_model=s.Recovered, tags=["recovery"])
    def recover(app: str, env: str, body: s.ReasonIn, who: Blocker) -> dict[str, Any]:
        """`conveyor recover ENV`: take over a dead holder's lease and record its release interrupted."""
        from conveyor.pipeline.repair import recover as recover_env
        from conveyor.pipeline.views import release_view

        with workspace(app, who) as ws:
            return {"interrupted": [release_view(r) for r in recover_env(ws, env, body.reason, force=body.force)]}

    # ------------------------------------------------------------------------------------------ tokens

    @api.get("/api/tokens", response_model=list[s.TokenOut], tags=["tokens"])
    def tokens(who: Admin) -> list[dict[str, Any]]:
        return [token_view(t) for t in server.store.list_tokens()]

    @api.post("/api/tokens", response_model=s.NewToken, status_code=201, tags=["tokens"])
    def new_token(body: s.TokenIn, who: Admin) -> dict[str, Any]:
        check_scopes(body.scopes)
        token = create_token(server.ledger, body.name, body.scopes)
        created = next(t for t in server.store.list_tokens() if t.name == body.name)
        return {**token_view(created), "token": token}

    @api.delete("/api/tokens/{name}", response_model=s.Removed, tags=["tokens"])
    def drop_token(name: str, who: Admin) -> dict[str, Any]:
        if not any(t.name == name for t in server.store.list_tokens()):
            raise ApiError(404, "not_found", f"no token named '{name}'")
        revoke_token(server.ledger, name)
        return {"removed": name}

    add_metrics(api, server)
    add_request_logs(api, server)

    from conveyor.server.web import add_dashboard

    add_dashboard(api, server, anonymous_read=anonymous_read)
    return api


async def _stream(server: Server, operation_id: int, after: int,
                  view: Any) -> AsyncIterator[ServerSentEvent]:
    """An operation's events from `after` on, as they are recorded, then `end` once it has finished."""
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    unsubscribe = server.events_woken.subscribe(lambda: loop.call_soon_threadsafe(woken.set))
    position: int | None = None
    try:
        while True:
            woken.clear()
            operation, batch = await anyio.to_thread.run_sync(server.store.progress, operation_id, after)
            for event in batch:
                after = event.id
                yield ServerSentEvent(data=json.dumps(event.payload, sort_keys=True), event="progress",
                                      id=str(event.id))
            if batch:
                continue
            if operation is not None and operation.state == "queued":
                # Not recorded (no id): where it waits, each time that changes, so a follower never stares at
                # silence while operations ahead of it run.
                ahead = await anyio.to_thread.run_sync(server.store.queue_position, operation)
                if ahead != position:
                    position = ahead
                    lane = operation.lane or "the build lane"
                    note = {"step": "queue", "status": "info", "data": {"ahead": ahead}, "release": None,
                            "shown": True, "message": f"waiting: {ahead} operation(s) ahead of it in {lane}"
                            if ahead else f"next in {lane}: waiting for a worker"}
                    yield ServerSentEvent(data=json.dumps(note, sort_keys=True), event="progress")
            if operation is None or operation.state in FINISHED_STATES:
                final = await anyio.to_thread.run_sync(view, operation) if operation else None
                yield ServerSentEvent(data=json.dumps(final, sort_keys=True), event="end")
                return
            with contextlib.suppress(TimeoutError):  # woken up, or a look at the ledger anyway each second
                await asyncio.wait_for(woken.wait(), timeout=1.0)
    finally:
        unsubscribe()
