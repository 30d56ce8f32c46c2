"""The server's structured log: one JSON object per line on stderr for every request and every step of an
operation, with the request id and, where there is one, the operation id and trace id.

What a line may hold is a fixed list of fields (FIELDS); headers are never logged (the Authorization
header holds the token), nor query strings, and step messages are the redacted ones the event stream shows.
The server's own remarks ("listening on …", draining) stay plain text lines.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI

from conveyor.pipeline.worker import Server
from conveyor.tracing import valid_traceparent

LOGGER = "conveyor"
FIELDS = ("request_id", "method", "path", "route", "status", "duration_ms", "client", "operation_id", "trace_id",
          "app", "env", "kind", "step", "step_status", "release", "detail", "state")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

log = logging.getLogger("conveyor.server.requests")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
        }
        line.update({name: getattr(record, name) for name in FIELDS if getattr(record, name, None) is not None})
        if record.exc_info:
            line["error"] = f"{record.exc_info[0].__name__ if record.exc_info[0] else 'error'}: {record.exc_info[1]}"
        return json.dumps(line, ensure_ascii=False, default=str)


def configure() -> None:
    """conveyor's loggers write JSON lines to stderr from INFO up (the server calls this once)."""
    logger = logging.getLogger(LOGGER)
    if any(isinstance(handler.formatter, JsonLines) for handler in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def add_request_logs(api: FastAPI, server: Server) -> None:
    api.add_middleware(RequestLog)


class RequestLog:
    """Pure ASGI: gives each request an id (the caller's X-Request-ID if it is a plain token, else a new one),
    answers it in `x-request-id`, and logs one line when the answer has been sent."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        started = time.perf_counter()
        status = {"code": 500}

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            traceparent = valid_traceparent(headers.get("traceparent"))
            operation = (scope.get("path_params") or {}).get("operation_id")
            log.info("request", extra={
                "request_id": request_id, "method": scope["method"], "path": scope["path"],
                "route": getattr(scope.get("route"), "path", None), "status": status["code"],
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "client": (scope.get("client") or ("", 0))[0], "operation_id": operation,
                "trace_id": traceparent.split("-")[1] if traceparent else None,
            })
