"""Bounds on what a client may send: a request body is read whole before any route sees it, at most
MAX_BODY bytes (413 beyond), and a client that stops sending half-way is cut off after BODY_TIMEOUT (408).
Idle keep-alive connections are closed by uvicorn (server/run.py); slow request headers are the fronting
TLS proxy's to time out (README: serving behind TLS)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

MAX_BODY = 64 * 1024
# GitHub's push deliveries list every commit pushed: a large push is well beyond an API call's size.
WEBHOOK_MAX_BODY = 1024 * 1024
BODY_TIMEOUT = float(os.environ.get("CONVEYOR_SERVER_BODY_TIMEOUT", "10"))  # seconds; the tests shorten it

Scope = dict[str, Any]


class BoundedRequests:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = WEBHOOK_MAX_BODY if scope["path"].startswith("/webhooks/") else MAX_BODY
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _refuse(send, 413, f"request bodies are limited to {limit} bytes")
            return
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=BODY_TIMEOUT)
            except TimeoutError:
                await _refuse(send, 408, f"the request body did not arrive within {BODY_TIMEOUT:.0f} s")
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _refuse(send, 413, f"request bodies are limited to {limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only the disconnect is left to hear

        await self.app(scope, replay, send)


async def _refuse(send: Any, status: int, message: str) -> None:
    kind = "too_large" if status == 413 else "timeout"
    body = json.dumps({"error": {"kind": kind, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
