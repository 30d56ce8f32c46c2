"""In-repo servers for the two deploy-marker APIs conveyor posts to, over real HTTP on free ports, checking
what the real ones check:

* Grafana: `POST /api/annotations` with `Authorization: Bearer <service account token>` and a JSON body
  with `time` (ms), `tags` (strings) and `text`; answers `{"id": N, "message": "Annotation added"}`, 401
  for a wrong token.
* Datadog: `POST /api/v1/events` with the `DD-API-KEY` header and a JSON body with `title`, `text`, `tags`;
  answers 202 `{"status": "ok", "event": {...}}`, 403 for a wrong key.

`down()` makes either answer 503 (an outage), `up()` ends it.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Fake:
    path = ""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.outage = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def down(self) -> None:
        self.outage = True

    def up(self) -> None:
        self.outage = False

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, headers: dict[str, str], body: Any) -> tuple[int, dict[str, Any]]:
        raise NotImplementedError


class FakeGrafana(_Fake):
    path = "/api/annotations"

    def answer(self, headers: dict[str, str], body: Any) -> tuple[int, dict[str, Any]]:
        if headers.get("authorization") != f"Bearer {self.secret}":
            return 401, {"message": "Unauthorized"}
        if not (isinstance(body, dict) and isinstance(body.get("time"), int) and isinstance(body.get("text"), str)
                and isinstance(body.get("tags"), list) and all(isinstance(t, str) for t in body["tags"])):
            return 400, {"message": "bad request data"}
        self.received.append(body)
        return 200, {"id": len(self.received), "message": "Annotation added"}


class FakeDatadog(_Fake):
    path = "/api/v1/events"

    def answer(self, headers: dict[str, str], body: Any) -> tuple[int, dict[str, Any]]:
        if headers.get("dd-api-key") != self.secret:
            return 403, {"errors": ["Forbidden"]}
        if not (isinstance(body, dict) and body.get("title") and isinstance(body.get("text"), str)
                and isinstance(body.get("tags"), list)):
            return 400, {"errors": ["Event title is required"]}
        self.received.append(body)
        return 202, {"status": "ok", "event": {"id": len(self.received), **body}}


def _handler(fake: _Fake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {key.lower(): value for key, value in self.headers.items()}
            fake.headers.append(headers)
            if fake.outage:
                status, body = 503, {"message": "service unavailable"}
            elif self.path != fake.path:
                status, body = 404, {"message": "not found"}
            else:
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = None
                status, body = fake.answer(headers, parsed)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server API
            pass

    return Handler
