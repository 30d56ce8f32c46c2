"""Watch-based caches (a small informer): LIST once, then WATCH from that resourceVersion, one thread per
resource type, every change pushed onto one queue the caller's thread reads.

Nothing here sleeps in a loop: a change reaches the queue as soon as the API server streams it. A watch
that ends (server timeout) resumes from the last resourceVersion seen; one the server answers with
410 Gone (history compacted) re-LISTs and replaces that type's cache, so no change is ever lost.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# kind -> (typed API class, its namespaced list function). The typed functions stream raw JSON lines
# with _preload_content=False, so objects stay exactly as the API server sent them (camelCase dicts),
# which is what the verdict functions read.
LISTERS = {
    "Pod": ("CoreV1Api", "list_namespaced_pod"),
    "Event": ("CoreV1Api", "list_namespaced_event"),
    "ReplicaSet": ("AppsV1Api", "list_namespaced_replica_set"),
    "Deployment": ("AppsV1Api", "list_namespaced_deployment"),
    "StatefulSet": ("AppsV1Api", "list_namespaced_stateful_set"),
    "DaemonSet": ("AppsV1Api", "list_namespaced_daemon_set"),
    "Job": ("BatchV1Api", "list_namespaced_job"),
}
WATCH_SECONDS = 240  # each watch request; then it resumes from the last resourceVersion


@dataclass
class Change:
    """One item on the queue: kind "sync" (a full LIST), "event" (ADDED/MODIFIED/DELETED) or "error"."""

    what: str
    kind: str
    type: str = ""
    obj: dict[str, Any] | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


def lister(api_client: Any, kind: str) -> Any:
    from kubernetes import client

    api_name, function = LISTERS[kind]
    return getattr(getattr(client, api_name)(api_client), function)


def list_raw(api_client: Any, kind: str, namespace: str, **params: Any) -> tuple[list[dict[str, Any]], str]:
    """(items, resourceVersion) as the API sent them, each item with its kind set."""
    response = lister(api_client, kind)(namespace, _preload_content=False, **params)
    data = json.loads(response.data)
    items = data.get("items") or []
    for item in items:
        item.setdefault("kind", kind)
    return items, str((data.get("metadata") or {}).get("resourceVersion", ""))


def _resource_version(obj: dict[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


class Informer:
    """Keeps one resource type of one namespace (optionally label-selected) flowing into `out`."""

    def __init__(
        self, api_client: Any, kind: str, namespace: str, out: queue.Queue[Change], *,
        label_selector: str | None = None, field_selector: str | None = None,
    ) -> None:
        self.api_client = api_client
        self.kind = kind
        self.namespace = namespace
        self.out = out
        self.params = {k: v for k, v in (("label_selector", label_selector), ("field_selector", field_selector))
                       if v is not None}
        self.relists = 0  # how many times a 410 made it start over (tests read this)
        self._stop = threading.Event()
        self._response: Any = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"watch-{kind}", daemon=True)

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            response = self._response
        if response is not None:
            _shut(response)
        self._thread.join(timeout=2)

    def _run(self) -> None:
        from kubernetes.client.rest import ApiException

        while not self._stop.is_set():
            try:
                items, rv = list_raw(self.api_client, self.kind, self.namespace, **self.params)
                self.out.put(Change("sync", self.kind, items=items))
                while not self._stop.is_set():
                    rv = self._watch_from(rv)
            except _Gone:
                self.relists += 1  # history compacted past our resourceVersion: LIST again
                continue
            except ApiException as exc:
                if self._stop.is_set():
                    return
                self.out.put(Change("error", self.kind, message=f"{exc.status} {exc.reason}"))
                self._stop.wait(1.0)  # the API refused the LIST/WATCH; try again shortly, do not spin
            except Exception as exc:
                if self._stop.is_set():
                    return
                self.out.put(Change("error", self.kind, message=f"{type(exc).__name__}: {exc}"))
                self._stop.wait(1.0)

    def _watch_from(self, rv: str) -> str:
        response = lister(self.api_client, self.kind)(
            self.namespace, watch=True, resource_version=rv, allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS, _preload_content=False, _request_timeout=(10, WATCH_SECONDS + 30),
            **self.params,
        )
        with self._lock:
            self._response = response
        try:
            for line in _lines(response):
                if self._stop.is_set():
                    break
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise RuntimeError(f"watch error: {obj.get('reason')}: {obj.get('message')}")
                rv = _resource_version(obj) or rv
                if event.get("type") == "BOOKMARK":
                    continue
                obj.setdefault("kind", self.kind)
                self.out.put(Change("event", self.kind, type=event["type"], obj=obj))
        finally:
            with self._lock:
                self._response = None
            with contextlib.suppress(Exception):  # a connection shut by stop() cannot go back to the pool
                response.release_conn()
        return rv


class _Gone(Exception):
    pass


def _lines(response: Any) -> Iterator[str]:
    from kubernetes.watch.watch import iter_resp_lines

    for line in iter_resp_lines(response):
        if line.strip():
            yield line


def _shut(response: Any) -> None:
    """Unblock a thread reading a streaming response (closing alone can wait on the read)."""
    try:
        sock = getattr(getattr(response, "connection", None), "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    with contextlib.suppress(Exception):  # already closed by the reader
        response.close()


class Cache:
    """The latest state of every object the informers report, by kind and name."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}
        self.synced: set[str] = set()
        self.errors: list[str] = []

    def apply(self, change: Change) -> None:
        if change.what == "sync":
            self.objects[change.kind] = {(o.get("metadata") or {}).get("name", ""): o for o in change.items}
            self.synced.add(change.kind)
        elif change.what == "event" and change.obj is not None:
            bucket = self.objects.setdefault(change.kind, {})
            name = (change.obj.get("metadata") or {}).get("name", "")
            if change.type == "DELETED":
                bucket.pop(name, None)
            else:
                bucket[name] = change.obj
        elif change.what == "error":
            self.errors.append(f"{change.kind}: {change.message}")

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.objects.get(kind, {}).get(name)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return list(self.objects.get(kind, {}).values())


class Watchers:
    """Informers for several kinds feeding one queue; a context manager that stops them all."""

    def __init__(self, api_client: Any, namespace: str, kinds: list[str], label_selector: str | None) -> None:
        self.queue: queue.Queue[Change] = queue.Queue()
        self.cache = Cache()
        self.informers = [Informer(api_client, kind, namespace, self.queue, label_selector=label_selector)
                          for kind in kinds]

    def __enter__(self) -> Watchers:
        for informer in self.informers:
            informer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for informer in self.informers:
            informer._stop.set()
        for informer in self.informers:
            informer.stop()

    def next(self, timeout: float) -> bool:
        """Wait up to `timeout` for a change; apply it and every change already queued. False if none came."""
        try:
            change = self.queue.get(timeout=max(timeout, 0))
        except queue.Empty:
            return False
        self.cache.apply(change)
        while True:
            try:
                self.cache.apply(self.queue.get_nowait())
            except queue.Empty:
                return True

    def wait_synced(self, timeout: float) -> None:
        import time

        deadline = time.monotonic() + timeout
        wanted = {i.kind for i in self.informers}
        while not wanted <= self.cache.synced:
            if not self.next(deadline - time.monotonic()) and time.monotonic() >= deadline:
                raise TimeoutError(f"no initial LIST of {', '.join(sorted(wanted - self.cache.synced))} "
                                   f"within {timeout:g}s")
