"""A webhook receiver on a free port that verifies every delivery with the `standardwebhooks` library (the
spec's reference implementation, not ours) and keeps what it accepted. `status` is what it answers (410 to
say the endpoint is gone)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class WebhookReceiver:
    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.accepted: list[tuple[str, dict[str, Any]]] = []  # (webhook-id, payload), verified
        self.rejected: list[str] = []
        self.status = 204
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/conveyor"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def receive(self, body: bytes, headers: dict[str, str]) -> int:
        try:
            payload = self.verifier.verify(body, headers)
        except WebhookVerificationError as exc:
            self.rejected.append(str(exc))
            return 400
        if self.status < 300:
            self.accepted.append((headers["webhook-id"], payload))
        return self.status

    def payloads(self) -> list[dict[str, Any]]:
        """Each announcement once: a receiver deduplicates on webhook-id, as the spec says."""
        unique = {message_id: payload for message_id, payload in self.accepted}
        return list(unique.values())

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status = receiver.receive(body, {k.lower(): v for k, v in self.headers.items()})
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server API
            pass

    return Handler
