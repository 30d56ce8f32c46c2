"""The adapter the CLI talks to a `conveyor server` through: JSON over HTTP with a bearer token, and an
operation's events followed over Server-Sent Events, resumed from the last event seen after a dropped
connection (a replica restarting, a load balancer closing an idle stream).

Errors become conveyor's own, with the server's message and the documented exit code: 400, 401, 403, 404
and 413 are bad input (2); 409 is a refusal (3); an unreachable server is missing infrastructure (2).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from conveyor.errors import BadInput, ConveyorError, InfrastructureMissing, OperationFailed, Refused

RECONNECT_FOR = 60.0  # seconds of failed reconnects before following gives up (the operation goes on)
TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class ServerClient:
    def __init__(self, url: str, token: str, *, origin: str = "") -> None:
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise BadInput(f"CONVEYOR_SERVER {url!r}: give the server's URL, e.g. http://127.0.0.1:8080")
        if not token:
            raise BadInput("set CONVEYOR_TOKEN to a token from `conveyor server token create` to use the server")
        headers = {"Authorization": f"Bearer {token}", "User-Agent": "conveyor-cli"}
        if origin:
            headers["X-Conveyor-Origin"] = "".join(ch for ch in origin if ch.isprintable())[:500]
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        try:
            response = self._http.request(method, path, json=json,
                                          params={k: v for k, v in (params or {}).items() if v is not None})
        except httpx.TransportError as exc:
            raise InfrastructureMissing(f"cannot reach the conveyor server at {self.url}: {_reason(exc)}") from None
        return _answer(response)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params=params)

    def follow(self, operation_id: int, on_event: Callable[[dict[str, Any]], None],
               on_note: Callable[[str], None]) -> dict[str, Any]:
        """Every event of the operation, in order and each once, until it ends; returns the operation."""
        from httpx_sse import SSEError, connect_sse

        last = ""
        failing_since: float | None = None
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            try:
                with connect_sse(self._http, "GET", f"/api/operations/{operation_id}/events", headers=headers,
                                 timeout=httpx.Timeout(30.0, read=None)) as source:
                    if source.response.status_code != 200:
                        source.response.read()
                        _answer(source.response)
                    failing_since = None
                    for sse in source.iter_sse():
                        if sse.event == "progress":
                            last = sse.id or last
                            on_event(sse.json())
                        elif sse.event == "end":
                            return sse.json()
            except (httpx.TransportError, SSEError) as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > RECONNECT_FOR:
                    raise InfrastructureMissing(
                        f"lost the conveyor server at {self.url} ({_reason(exc)}); operation #{operation_id} "
                        f"goes on there: `conveyor operation {operation_id}` shows how it ended") from None
                on_note(f"lost the server ({_reason(exc)}); reconnecting, operation #{operation_id} goes on there")
                time.sleep(1.0)  # a reconnect rate, not a wait for something to happen


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _answer(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success:
        return body
    message = _message(body) or f"the server answered {response.status_code} {response.reason_phrase}"
    status = response.status_code
    if status == 409:
        raise Refused(message)
    if status in (400, 401, 403, 404, 408, 413, 422):
        raise BadInput(message)
    if status == 503:
        raise InfrastructureMissing(message)
    error: ConveyorError = OperationFailed(f"the conveyor server failed ({status}): {message}")
    raise error


def _message(body: Any) -> str | None:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        detail = body.get("detail")  # a request the server's schema refused (422)
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            where = ".".join(str(part) for part in detail[0].get("loc", [])[1:])
            return f"{where}: {detail[0].get('msg', 'invalid')}" if where else str(detail[0].get("msg"))
    return None
