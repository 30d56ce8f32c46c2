"""`GET /metrics`: the Prometheus text exposition of the ledger's metrics (pipeline/metrics.py) and this
process's own observations: HTTP request durations and the durations of the release steps its workers ran.

Auth: a token with the `read` scope as a bearer token (Prometheus sends one with `authorization:
{credentials_file: …}` in its scrape_config), unless the server runs with CONVEYOR_METRICS_PUBLIC=1, which
serves /metrics to anyone who can reach the bind address (for a scraper that cannot send a token; the
figures hold no secret, but they do name apps, environments and SHAs).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from conveyor.pipeline.metrics import CONTENT_TYPE, STEP_BUCKETS, LedgerMetrics, Lines, add_step_observer, render
from conveyor.pipeline.tokens import allows, authenticate
from conveyor.pipeline.worker import Server

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def metrics_public() -> bool:
    return os.environ.get("CONVEYOR_METRICS_PUBLIC", "").strip().lower() in ("1", "true", "yes")


def add_metrics(api: FastAPI, server: Server) -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    ledger_metrics = LedgerMetrics(server.ledger, background=True)
    # The first snapshot aggregates every release once: done now, not by the first scrape.
    threading.Thread(target=_warm_up, args=(ledger_metrics,), name="metrics-warm-up", daemon=True).start()
    registry = CollectorRegistry(auto_describe=False)  # this process's own observations
    requests = Histogram("conveyor_http_request_duration_seconds", "API requests this replica answered, by "
                         "route template.", ["method", "route", "status"], buckets=REQUEST_BUCKETS,
                         registry=registry)
    steps = Histogram("conveyor_step_duration_seconds", "Release steps this replica's workers ran (lease wait, "
                      "copy, task, deploy), by outcome.", ["step", "outcome"], buckets=STEP_BUCKETS,
                      registry=registry)
    add_step_observer(lambda step, outcome, seconds: steps.labels(step, outcome).observe(seconds))
    public = metrics_public()
    lines = Lines()

    @api.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        if not public:
            refusal = _refusal(server, request.headers.get("authorization", ""))
            if refusal is not None:
                return refusal
        body = render(ledger_metrics.snapshot(), lines).encode() + generate_latest(registry)
        return Response(body, media_type=CONTENT_TYPE)

    api.add_middleware(RequestDurations, observe=lambda method, route, status, seconds:
                       requests.labels(method, route, status).observe(seconds))


def _warm_up(metrics: LedgerMetrics) -> None:
    try:
        metrics.snapshot()
    except Exception as exc:  # the first scrape tries again, and reports it
        logging.getLogger("conveyor.metrics").warning("cannot read the ledger's metrics: %s: %s",
                                                      type(exc).__name__, exc)


def _refusal(server: Server, authorization: str) -> Response | None:
    scheme, _, credentials = authorization.partition(" ")
    token = authenticate(server.ledger, credentials.strip()) if scheme.lower() == "bearer" else None
    if token is None:
        return Response("send Authorization: Bearer TOKEN (a token with the read scope), or run the server "
                        "with CONVEYOR_METRICS_PUBLIC=1\n", status_code=401, headers={"WWW-Authenticate": "Bearer"})
    if not allows(token.scopes, "read"):
        return Response(f"token '{token.name}' lacks the scope read\n", status_code=403)
    return None


class RequestDurations:
    """Pure ASGI (it leaves event streams alone): each HTTP request's duration, labelled with the route's
    template (`/api/operations/{operation_id}`), never the raw path, so the label set stays bounded."""

    def __init__(self, app: Any, observe: Any) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.observe(scope["method"], route, str(status["code"]), time.perf_counter() - started)
