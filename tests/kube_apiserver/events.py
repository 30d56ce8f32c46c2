"""core/v1 Events as controllers and the kubelet record them, aggregated by (object, reason, message)."""

from __future__ import annotations

import threading
import time
from typing import Any

from .resources import BY_KIND
from .store import Store, now_ts

EVENTS = BY_KIND["Event"]


class Recorder:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str, str], tuple[str, str]] = {}

    def emit(
        self,
        obj: dict[str, Any],
        etype: str,
        reason: str,
        message: str,
        component: str,
        host: str | None = None,
        field_path: str | None = None,
    ) -> None:
        meta = obj["metadata"]
        ns = meta.get("namespace") or "default"
        key = (meta["uid"], reason, message, field_path or "")
        stamp = now_ts()
        with self._lock:
            known = self._seen.get(key)
            if known is not None:
                # The same thing happened again: the real recorder bumps count and lastTimestamp.
                bumped = self.store.mutate(
                    EVENTS,
                    known[0],
                    known[1],
                    lambda e: e.update(count=e.get("count", 1) + 1, lastTimestamp=stamp),
                    component,
                )
                if bumped is not None:
                    return
            involved: dict[str, Any] = {
                "kind": obj.get("kind", ""),
                "namespace": ns,
                "name": meta["name"],
                "uid": meta["uid"],
                "apiVersion": obj.get("apiVersion", "v1"),
                "resourceVersion": meta.get("resourceVersion", ""),
            }
            if field_path:
                involved["fieldPath"] = field_path
            name = f"{meta['name']}.{time.time_ns() & 0xFFFFFFFFFFFFFFFF:016x}"
            event = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": involved,
                "reason": reason,
                "message": message,
                "source": {"component": component, **({"host": host} if host else {})},
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
                "type": etype,
                "eventTime": None,
                "reportingComponent": component,
                "reportingInstance": host or "",
            }
            self.store.create(EVENTS, ns, event, manager=component)
            self._seen[key] = (ns, name)
