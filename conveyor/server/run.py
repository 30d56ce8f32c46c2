"""`conveyor server`: the API and the queue's workers in one process, on one ledger.

SIGTERM (or Ctrl-C) drains: workers start nothing new, the operations under way finish while the API keeps
answering (followers see them end), then the process exits 0. Another signal while draining only says what
is still running: cutting a release short is what kill -9 is for, and the next replica recovers from it.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from conveyor.errors import BadInput
from conveyor.pipeline.poller import start_poller
from conveyor.pipeline.worker import Server, WorkerPool
from conveyor.server.app import create_app

log = logging.getLogger("conveyor.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, pool: WorkerPool, say: Callable[[str], None]) -> None:
        super().__init__(config)
        self.pool = pool
        self.say = say
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:
            running = self.pool.running()
            self.say(f"still draining: waiting for operation(s) {', '.join(f'#{n}' for n in running) or 'none'} "
                     "to finish (kill -9 stops now; another replica then takes them over)")
            return
        self._draining = True
        running = self.pool.running()
        self.say(f"{signal.Signals(sig).name}: draining. No new operation starts; "
                 f"waiting for {len(running)} running: {', '.join(f'#{n}' for n in running) or 'none'}")
        threading.Thread(target=self._drain_then_exit, name="drain", daemon=True).start()

    def _drain_then_exit(self) -> None:
        self.pool.drain()
        self.say("drained: every operation this replica ran has finished; exiting")
        self.should_exit = True


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise BadInput(f"--bind {bind!r}: give HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def notify_defaults(path: Path | None) -> list[Any]:
    """The org-wide announcement destinations from FILE's `notify:` (the same shape as in conveyor.yml);
    every app announces to them as well as to its own (an app's destination of the same name wins)."""
    if path is None:
        return []
    from conveyor.config.loader import load_notify

    return load_notify(path).destinations


def check_public_url(url: str | None) -> str | None:
    if url is None:
        return None
    if not url.startswith(("http://", "https://")) or any(ch.isspace() for ch in url):
        raise BadInput(f"--public-url {url!r}: give the URL people open, e.g. https://deploys.example.com")
    return url.rstrip("/")


def serve(*, bind: str, workers: int, ttl: float, home: Path, say: Callable[[str], None],
          notify: Path | None = None, anonymous_read: bool = False, public_url: str | None = None) -> None:
    from conveyor.ledger import open_ledger
    from conveyor.ledger.server_store import EVENTS_CHANNEL, listen
    from conveyor.pipeline.live_checks import LiveChecks, check_interval
    from conveyor.server.logs import configure

    defaults = notify_defaults(notify)
    check_every = check_interval()
    public_url = check_public_url(public_url)
    host, port = parse_bind(bind)
    configure()
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise BadInput(f"cannot listen on {bind}: {exc.strerror or exc}") from None
    # Accepted connections inherit this (Linux). asyncio sets it only on sockets created with proto
    # IPPROTO_TCP, which create_server's are not: without it a keep-alive client waits out a delayed ACK
    # (~40 ms) on every response written in two parts (head, then body).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ledger = open_ledger()
    server = Server(ledger, home, notify_defaults=defaults, public_url=public_url)
    pool = WorkerPool(server, workers=workers, ttl=ttl)
    stop_listening = threading.Event()
    if ledger._postgres:

        def heard(channel: str, payload: str) -> None:
            (server.events_woken if channel == EVENTS_CHANNEL else server.queue_woken).bump()

        threading.Thread(target=listen, args=(ledger, heard, stop_listening), name="listen", daemon=True).start()
    config = uvicorn.Config(create_app(server, anonymous_read=anonymous_read), log_level="warning",
                            timeout_keep_alive=5, timeout_graceful_shutdown=5, lifespan="off", access_log=False)
    runner = DrainingServer(config, pool, say)
    start_poller(server, stop_listening)
    if check_every:
        server.checks = LiveChecks(server, check_every)
        server.checks.start(stop_listening)
    pool.start()
    bound = sock.getsockname()
    say(f"conveyor server listening on http://{bound[0]}:{bound[1]} (replica {server.replica}, {workers} "
        f"worker(s), ledger {ledger.url})")
    try:
        runner.run(sockets=[sock])
    finally:
        stop_listening.set()
        pool.drain(timeout=0)
        ledger.close()
        from conveyor import tracing

        tracing.flush()
    if not runner._draining:
        sys.exit(1)  # uvicorn stopped on its own: not the drain a signal asks for
