"""An in-repo server speaking the parts of Slack's Web API conveyor uses, over real HTTP on a free port:
chat.postMessage, chat.update, users.lookupByEmail, conversations.history (with message metadata).

Answers as Slack does: HTTP 200 with `{"ok": false, "error": ...}` for API errors, 429 with Retry-After when
rate limited. The test controls it: `down()`/`up()`, `revoke()` (invalid_auth), `rate_limit(n, seconds)`,
and `hold(method)`, which records the next such call and then blocks its answer until the test releases it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    thread_ts: str | None
    metadata: dict[str, Any] | None
    updates: list[str] = field(default_factory=list)  # the text after each chat.update, in order


@dataclass
class Hold:
    method: str
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)


class FakeSlack:
    def __init__(self, token: str, channels: dict[str, str], users: dict[str, str], port: int = 0,
                 echo: bool = False) -> None:
        self.token = token
        self.echo = echo  # print each post and update (the demo's view of the channel)
        self.webhook_path = "/services/T000/B000/s3cr3tIncomingWebhookPath"
        self.channels = channels  # "#dev" -> "C0DEV"
        self.users = users  # email -> user id
        self.messages: list[Message] = []
        self.calls: list[str] = []
        self.lookups: list[str] = []
        self._lock = threading.Lock()
        self._revoked = False
        self._rate_limited = 0
        self._retry_after = 0
        self._holds: list[Hold] = []
        self._last_ts = 0.0
        self._server: ThreadingHTTPServer | None = None
        self.port = port
        self.up()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def incoming_webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.webhook_path}"

    # --- switches the test controls

    def up(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def down(self) -> None:
        """Stop listening: connections are refused, as when Slack (or the network to it) is down."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def revoke(self) -> None:
        self._revoked = True

    def rate_limit(self, calls: int, retry_after: int) -> None:
        self._rate_limited, self._retry_after = calls, retry_after

    def hold(self, method: str) -> Hold:
        hold = Hold(method)
        self._holds.append(hold)
        return hold

    def close(self) -> None:
        for hold in self._holds:
            hold.released.set()
        self.down()

    # --- views for assertions

    def top_level(self, channel: str = "#dev") -> list[Message]:
        channel_id = self.channels[channel]
        return [m for m in self.messages if m.channel == channel_id and m.thread_ts is None]

    def replies(self, ts: str) -> list[Message]:
        return [m for m in self.messages if m.thread_ts == ts]

    # --- the API

    def answer(self, method: str, auth: str, params: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self._lock:
            self.calls.append(method)
            if self._rate_limited:
                self._rate_limited -= 1
                return 429, {"Retry-After": str(self._retry_after)}, {"ok": False, "error": "ratelimited"}
            if auth != f"Bearer {self.token}" or self._revoked:
                return 200, {}, {"ok": False, "error": "invalid_auth"}
            api = getattr(self, "_" + method.replace(".", "_"), None)
            if api is None:
                return 200, {}, {"ok": False, "error": "unknown_method"}
            return 200, {}, api(params)

    def _channel(self, name: str) -> str | None:
        return self.channels.get(name) or (name if name in self.channels.values() else None)

    def _chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params.get("channel", ""))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        self._last_ts = max(time.time(), self._last_ts + 0.000001)  # Slack's ts: the post's time, unique
        message = Message(channel, f"{self._last_ts:.6f}", params.get("text", ""), params.get("thread_ts"),
                          params.get("metadata"))
        self.messages.append(message)
        self._show("posted", message)
        return {"ok": True, "channel": channel, "ts": message.ts, "message": {"text": message.text}}

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        for message in self.messages:
            if message.channel == params.get("channel") and message.ts == params.get("ts"):
                message.text = params.get("text", "")
                message.updates.append(message.text)
                self._show("updated", message)
                return {"ok": True, "channel": message.channel, "ts": message.ts}
        if self._channel(params.get("channel", "")) != params.get("channel"):
            return {"ok": False, "error": "channel_not_found"}  # chat.update takes a channel id only
        return {"ok": False, "error": "message_not_found"}

    def _users_lookupByEmail(self, params: dict[str, Any]) -> dict[str, Any]:
        email = params.get("email", "")
        self.lookups.append(email)
        if email not in self.users:
            return {"ok": False, "error": "users_not_found"}
        return {"ok": True, "user": {"id": self.users[email], "profile": {"email": email}}}

    def _conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params.get("channel", ""))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        oldest = float(params.get("oldest", 0))
        found = [{"ts": m.ts, "text": m.text, **({"metadata": m.metadata} if m.metadata else {})}
                 for m in reversed(self.messages)
                 if m.channel == channel and m.thread_ts is None and float(m.ts) >= oldest]
        return {"ok": True, "channel": channel, "messages": found}

    def _show(self, what: str, message: Message) -> None:
        if self.echo:
            where = f"thread {message.thread_ts}" if message.thread_ts else f"ts {message.ts}"
            print(f"--- {what} in {message.channel} ({where}):\n{message.text}", flush=True)

    def wait_if_held(self, method: str) -> None:
        for hold in list(self._holds):
            if hold.method == method and not hold.arrived.is_set():
                hold.arrived.set()
                hold.released.wait(120)
                return


def _handler(slack: FakeSlack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            method = self.path.rsplit("/", 1)[-1]
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/services/"):
                self._incoming_webhook(raw)
                return
            if self.headers.get("Content-Type", "").startswith("application/json"):
                params = json.loads(raw or b"{}")
            else:
                params = {key: values[0] for key, values in parse_qs(raw.decode()).items()}
            status, headers, body = slack.answer(method, self.headers.get("Authorization", ""), params)
            slack.wait_if_held(method)  # after the call took effect, before its answer: a kill here loses the ts
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the caller was killed while the answer was held

        def _incoming_webhook(self, raw: bytes) -> None:
            """An incoming webhook (its URL is the secret) posts to #dev and answers a plain `ok`."""
            with slack._lock:
                slack.calls.append("incoming-webhook")
                known = self.path == slack.webhook_path
                if known:
                    slack._chat_postMessage({"channel": "#dev", "text": json.loads(raw).get("text", "")})
            body = b"ok" if known else b"no_service"
            self.send_response(200 if known else 404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server API
            pass

    return Handler


def main() -> None:
    """Serve until interrupted, printing each message: `python -m tests.fakes.slack PORT TOKEN`."""
    import sys

    port, token = int(sys.argv[1]), sys.argv[2]
    FakeSlack(token, {"#dev": "C0DEV"}, {}, port=port, echo=True)
    print(f"fake Slack Web API at http://127.0.0.1:{port}/api (channel #dev)", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
