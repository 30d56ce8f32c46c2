"""A TCP relay in front of a registry that cuts every connection at a point the test chooses: when one blob
upload's `chunk`-th PATCH starts (its request line, `PATCH /v2/…/blobs/uploads/ID…`), nothing of it is
forwarded, every connection is closed, and new ones are turned away until heal(). No timing: the cut is at
a request boundary, wherever the copy is. (A chunk cut mid-way is no use to resume from on Distribution:
it then finds the upload's size unlike its state token and cancels the upload.)"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field

from devstack import free_port

PATCH = re.compile(rb"PATCH (/v2/\S+?/blobs/uploads/[^?\s]+)")


@dataclass
class CutRelay:
    upstream: tuple[str, int]
    chunk: int | None = None  # None: forward everything
    port: int = field(default_factory=free_port)
    cut: threading.Event = field(default_factory=threading.Event)
    _patches: Counter[bytes] = field(default_factory=Counter)
    _open: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> CutRelay:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.close()
        self._close_all()

    def cut_at_chunk(self, chunk: int) -> None:
        self.chunk = chunk

    def heal(self) -> None:
        self.chunk = None
        self.cut.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, watched: bool) -> None:
        try:
            while data := source.recv(65536):
                cut_at = self._cut_point(data) if watched else None
                if cut_at is not None:
                    sink.sendall(data[:cut_at])
                    self.cut.set()
                    self._close_all()
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _cut_point(self, data: bytes) -> int | None:
        """Where in `data` the chosen chunk's request starts, if it does."""
        if self.chunk is None:
            return None
        for found in PATCH.finditer(data):
            with self._lock:
                self._patches[found[1]] += 1
                if self._patches[found[1]] == self.chunk:
                    return found.start()
        return None

    def _close_all(self) -> None:
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
