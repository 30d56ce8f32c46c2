"""The in-memory object store: what etcd plus the apiserver's registry layer do for a deploy tool.

- one global, monotonically increasing resourceVersion; every write gets the next one;
- metadata.generation starts at 1 and moves only when `spec` changes (not metadata, not status);
- writes that change nothing are not writes: no new resourceVersion, no watch event;
- a bounded history of watch events; a watch from a resourceVersion older than it gets 410 Expired;
- server-side apply with per-manager field ownership in metadata.managedFields (see fields.py);
- cascading deletion through ownerReferences, like the garbage collector's background propagation.

Every public method takes the store's lock; it is held only while touching memory, never while a
response is written, so watches stream without blocking writers.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import admission
from .fields import (
    Path,
    del_path,
    dotted,
    field_paths,
    from_fields_v1,
    get_path,
    same_value,
    set_path,
    to_fields_v1,
)
from .resources import BY_KIND, Resource, resource_for
from .selectors import Matcher
from .status import (
    ApiError,
    already_exists,
    apply_conflict,
    expired,
    namespace_missing,
    not_found,
    stale_write,
)

Obj = dict[str, Any]
OwnerKey = tuple[str, str, str]  # (manager, operation "Apply"|"Update", subresource "" | "status")

INITIAL_EVENTS_END = "k8s.io/initial-events-end"
_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet the real server uses for generateName


def now_ts() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(n: int = 5) -> str:
    return "".join(random.choice(_SUFFIX_CHARS) for _ in range(n))


@dataclass
class WatchEvent:
    rv: int
    key: str  # Resource.key
    namespace: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    old: Obj | None


class Store:
    def __init__(self, history_size: int = 1000) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.rv = 1000  # a fresh real cluster is already in the hundreds
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {}
        self.history: deque[WatchEvent] = deque()
        self.history_size = history_size
        self.compacted_rv = 0  # events at or below this resourceVersion are gone from history
        self.logs: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
        self.closed = False
        # Real servers send a bookmark about once a minute on a quiet watch; tests ask for one directly.
        self.bookmark_interval = 60.0
        self.bookmark_generation = 0
        # Called with every committed WatchEvent, under the lock, right after the write: tests and the
        # failure-detection bench use it to timestamp when the API first showed a state.
        self.listeners: list[Callable[[WatchEvent], None]] = []
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(BY_KIND["Namespace"], "", {"metadata": {"name": ns}}, manager="kube-apiserver")

    # --- reads ---------------------------------------------------------------------------------

    def get(self, res: Resource, namespace: str, name: str) -> Obj | None:
        with self.cond:
            obj = self.objects.get(res.key, {}).get((self._ns(res, namespace), name))
            return copy.deepcopy(obj) if obj is not None else None

    def require(self, res: Resource, namespace: str, name: str) -> Obj:
        obj = self.get(res, namespace, name)
        if obj is None:
            raise not_found(res, name)
        return obj

    def list(
        self,
        res: Resource,
        namespace: str | None = None,
        labels: Matcher | None = None,
        fields: Matcher | None = None,
    ) -> tuple[list[Obj], int]:
        """Matching objects sorted by (namespace, name), and the resourceVersion of this snapshot."""
        with self.cond:
            items = [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(self.objects.get(res.key, {}).items())
                if (namespace is None or ns == namespace)
                and (labels is None or labels(obj))
                and (fields is None or fields(obj))
            ]
            return items, self.rv

    def list_page(
        self,
        res: Resource,
        namespace: str | None,
        labels: Matcher,
        fields: Matcher,
        limit: int | None,
        token: str | None,
    ) -> tuple[list[Obj], int, str | None, int | None]:
        """LIST with limit/continue. A continue token older than the history is 410 Expired, as on a real
        server after etcd compaction. (Pages show the current state, not a snapshot.)"""
        start = ""
        if token:
            try:
                data = json.loads(base64.urlsafe_b64decode(token.encode()))
                token_rv, start = int(data["rv"]), str(data["start"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ApiError(400, "BadRequest", f"continue key is not valid: {exc}") from exc
            if token_rv < self.compacted_rv:
                raise expired(
                    "The provided continue parameter is too old to display a consistent list result. "
                    "You can start a new list without the continue parameter, or use the continue token in "
                    "this response to retrieve the remainder of the results. Continuing with the provided "
                    "token results in an inconsistent list - objects that were created, modified, or deleted "
                    "between the time the first chunk was returned and now may show up in the list."
                )
        items, rv = self.list(res, namespace, labels, fields)
        if start:
            items = [o for o in items if _sort_key(o) > start]
        if not limit or len(items) <= limit:
            return items, rv, None, None
        page = items[:limit]
        next_token = base64.urlsafe_b64encode(
            json.dumps({"rv": rv, "start": _sort_key(page[-1])}).encode()
        ).decode()
        return page, rv, next_token, len(items) - limit

    def current_rv(self) -> int:
        with self.cond:
            return self.rv

    # --- writes: the public API verbs -------------------------------------------------------------

    def create(self, res: Resource, namespace: str, body: Obj, manager: str, dry_run: bool = False) -> Obj:
        with self.cond:
            obj = copy.deepcopy(body)
            _check_type(res, obj)
            meta = obj.setdefault("metadata", {})
            ns = self._ns(res, namespace or meta.get("namespace", ""))
            admission.check_name_matches(res, obj, None, ns)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + random_suffix()
            if res.namespaced:
                meta["namespace"] = ns
                if self.objects.get("v1/namespaces", {}).get(("", ns)) is None:
                    raise namespace_missing(ns)
            if self.objects.get(res.key, {}).get((ns, meta.get("name", ""))) is not None:
                raise already_exists(res, meta["name"])
            owned = {p for p in field_paths(obj) if _in_scope(res, p, "")}
            return self._write(res, None, obj, {(manager, "Update", ""): owned}, dry_run)

    def replace(
        self,
        res: Resource,
        namespace: str,
        name: str,
        body: Obj,
        manager: str,
        subresource: str = "",
        dry_run: bool = False,
    ) -> Obj:
        with self.cond:
            old = self._stored(res, namespace, name)
            new = copy.deepcopy(body)
            _check_type(res, new)
            admission.check_name_matches(res, new, name, namespace)
            self._check_precondition(res, old, new)
            return self._update(res, old, new, manager, subresource, dry_run)

    def merge_patch(
        self,
        res: Resource,
        namespace: str,
        name: str,
        patch: Obj,
        manager: str,
        subresource: str = "",
        dry_run: bool = False,
    ) -> Obj:
        from .fields import merge_patch

        with self.cond:
            old = self._stored(res, namespace, name)
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            new = merge_patch(old, patch)
            self._check_precondition(res, old, patch)
            return self._update(res, old, new, manager, subresource, dry_run)

    def apply(
        self,
        res: Resource,
        namespace: str,
        name: str,
        body: Obj,
        manager: str,
        force: bool,
        subresource: str = "",
        dry_run: bool = False,
    ) -> Obj:
        """Server-side apply: create if missing, else merge the applied fields under `manager`'s ownership."""
        with self.cond:
            body = copy.deepcopy(body)
            _check_type(res, body, required=True)
            admission.check_name_matches(res, body, name, namespace)
            body["metadata"].pop("managedFields", None)
            body.setdefault("metadata", {})["name"] = name
            if res.kind == "Secret":
                admission.default(res, body, creating=False)  # stringData -> data, so ownership is of data
            applied = {p for p in field_paths(body) if _in_scope(res, p, subresource)}
            mine: OwnerKey = (manager, "Apply", subresource)
            old = self.objects.get(res.key, {}).get((self._ns(res, namespace), name))
            if old is None:
                if subresource:
                    raise not_found(res, name)
                obj = copy.deepcopy(body)
                obj["metadata"]["namespace"] = namespace
                return self._create_applied(res, namespace, obj, {mine: applied}, dry_run)
            self._check_precondition(res, old, body)
            owners = _owners(old)
            previous = owners.get(mine, set())
            candidate = copy.deepcopy(old)
            for path in applied:
                set_path(candidate, path, get_path(body, path))
            for key in ("ownerReferences", "finalizers"):
                if key in body["metadata"] and subresource != "status":  # /status writes touch status only
                    candidate["metadata"][key] = copy.deepcopy(body["metadata"][key])
            for path in previous - applied:  # no longer applied and nobody else holds it: remove
                if not any(path in paths for k, paths in owners.items() if k != mine):
                    del_path(candidate, path)
            admission.default(res, candidate, creating=False)
            conflicts = [
                (k, path)
                for k, paths in sorted(owners.items())
                if k != mine
                for path in sorted(applied & paths)
                if not same_value(candidate, old, path)
            ]
            if conflicts and not force:
                raise apply_conflict(res, name, [(k[0], dotted(p)) for k, p in conflicts])
            for k, path in conflicts:  # forced: the other managers lose those fields
                owners[k].discard(path)
            owners[mine] = applied
            return self._write(res, old, candidate, owners, dry_run, changed_by=mine)

    def _create_applied(
        self, res: Resource, namespace: str, obj: Obj, owners: dict[OwnerKey, set[Path]], dry_run: bool
    ) -> Obj:
        if res.namespaced and self.objects.get("v1/namespaces", {}).get(("", namespace)) is None:
            raise namespace_missing(namespace)
        return self._write(res, None, obj, owners, dry_run)

    def delete(
        self, res: Resource, namespace: str, name: str, propagation: str = "Background", dry_run: bool = False
    ) -> Obj:
        """Delete and cascade to dependents (ownerReferences), or orphan them. Returns the last state."""
        with self.cond:
            old = self._stored(res, namespace, name)
            gone = copy.deepcopy(old)
            gone["metadata"]["deletionTimestamp"] = now_ts()
            if res.kind == "Pod":
                gone["metadata"]["deletionGracePeriodSeconds"] = 0
            if dry_run:
                return gone
            uid = old["metadata"]["uid"]
            self._commit(res, gone, old, "DELETED")
            if res.kind == "Namespace":
                for other_key, objs in list(self.objects.items()):
                    other = resource_for(other_key.rsplit("/", 1)[1])
                    for ns, other_name in list(objs):
                        if ns == name and (ns, other_name) in objs:
                            self.delete(other, ns, other_name)
            for other_key, objs in list(self.objects.items()):
                other = resource_for(other_key.rsplit("/", 1)[1])
                for (ns, other_name), obj in list(objs.items()):
                    refs = obj["metadata"].get("ownerReferences") or []
                    if not any(r.get("uid") == uid for r in refs):
                        continue
                    if propagation == "Orphan":
                        self.mutate(
                            other,
                            ns,
                            other_name,
                            lambda o, u=uid: _drop_owner(o, u),
                            "kube-controller-manager",
                        )
                    elif (ns, other_name) in self.objects.get(other_key, {}):
                        self.delete(other, ns, other_name, propagation)
            return gone

    # --- writes: for the scripted controllers -------------------------------------------------------

    def mutate(
        self,
        res: Resource,
        namespace: str,
        name: str,
        change: Callable[[Obj], None],
        manager: str = "kube-controller-manager",
        subresource: str = "",
    ) -> Obj | None:
        """Read-modify-write under the lock (so controllers never lose a race with the API)."""
        with self.cond:
            old = self.objects.get(res.key, {}).get((self._ns(res, namespace), name))
            if old is None:
                return None
            new = copy.deepcopy(old)
            change(new)
            return self._update(res, old, new, manager, subresource, dry_run=False)

    # --- logs ------------------------------------------------------------------------------------------

    def append_log(self, namespace: str, pod: str, container: str, lines: list[str]) -> None:
        with self.cond:
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            self.logs.setdefault((namespace, pod, container), []).extend((stamp, line) for line in lines)
            self.cond.notify_all()

    def read_log(self, namespace: str, pod: str, container: str) -> list[tuple[str, str]]:
        with self.cond:
            return list(self.logs.get((namespace, pod, container), []))

    # --- watch -----------------------------------------------------------------------------------------

    def watch(
        self,
        res: Resource,
        namespace: str | None,
        resource_version: str | None,
        labels: Matcher,
        fields: Matcher,
        timeout: float,
        send_initial_events: bool = False,
        bookmarks: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Yield watch events ({"type", "object"}) until `timeout` seconds pass or the store closes.

        No resourceVersion (or "0") starts with a synthetic ADDED per existing object, as the real
        server does. An object that stops matching a label selector is reported DELETED, one that
        starts matching ADDED.
        send_initial_events (watch-list, what client-go's reflector asks for by default): the current
        objects as ADDED, then a BOOKMARK annotated `k8s.io/initial-events-end`, then the changes.
        bookmarks (allowWatchBookmarks): a BOOKMARK with the latest resourceVersion every
        `bookmark_interval` seconds of a quiet watch, and whenever a test calls `request_bookmarks`.
        """
        deadline = time.monotonic() + timeout
        with self.cond:
            bookmark_generation = self.bookmark_generation
            if send_initial_events or resource_version in (None, "", "0"):
                current, cursor = self.list(res, namespace, labels, fields)
                initial = [{"type": "ADDED", "object": _with_type(res, obj)} for obj in current]
                if send_initial_events:
                    initial.append(_bookmark(res, cursor, {INITIAL_EVENTS_END: "true"}))
            else:
                cursor = int(resource_version)
                if cursor < self.compacted_rv:
                    yield self._expired_event(cursor)
                    return
                initial = []
        yield from initial
        quiet_since = time.monotonic()
        while True:
            bookmark = None
            with self.cond:
                if cursor < self.compacted_rv:  # we fell behind the bounded history
                    expired_event = self._expired_event(cursor)
                    batch = None
                else:
                    batch = [
                        e
                        for e in self.history
                        if e.rv > cursor
                        and e.key == res.key
                        and (namespace is None or e.namespace == namespace)
                    ]
                    if self.history:
                        cursor = max(cursor, self.history[-1].rv)
                    remaining = deadline - time.monotonic()
                    due = self.bookmark_generation != bookmark_generation or (
                        time.monotonic() - quiet_since >= self.bookmark_interval
                    )
                    if bookmarks and not batch and due:
                        bookmark_generation = self.bookmark_generation
                        bookmark = _bookmark(res, max(cursor, self.rv))
                    elif not batch and remaining > 0 and not self.closed:
                        self.cond.wait(timeout=min(remaining, 0.5))
                        continue
            if batch is None:
                yield expired_event
                return
            if bookmark is not None:
                quiet_since = time.monotonic()
                yield bookmark
                continue
            for event in batch:
                translated = _translate(event, labels, fields)
                if translated:
                    quiet_since = time.monotonic()
                    yield {"type": translated, "object": _with_type(res, event.obj)}
            if self.closed or time.monotonic() >= deadline:
                return

    def request_bookmarks(self) -> None:
        """Every open watch that allows bookmarks sends one now (a test's handle on "a long quiet watch")."""
        with self.cond:
            self.bookmark_generation += 1
            self.cond.notify_all()

    def compact(self) -> int:
        """Forget all watch history, like etcd compaction: older resourceVersions now answer 410."""
        with self.cond:
            self.history.clear()
            self.compacted_rv = self.rv
            return self.rv

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _expired_event(self, cursor: int) -> dict[str, Any]:
        status = expired(f"too old resource version: {cursor} ({self.compacted_rv + 1})").status()
        return {"type": "ERROR", "object": status}

    # --- internals ---------------------------------------------------------------------------------------

    @staticmethod
    def _ns(res: Resource, namespace: str | None) -> str:
        return (namespace or "default") if res.namespaced else ""

    def _stored(self, res: Resource, namespace: str, name: str) -> Obj:
        obj = self.objects.get(res.key, {}).get((self._ns(res, namespace), name))
        if obj is None:
            raise not_found(res, name)
        return obj

    @staticmethod
    def _check_precondition(res: Resource, old: Obj, body: Obj) -> None:
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise stale_write(res, old["metadata"]["name"])

    def _update(
        self, res: Resource, old: Obj, new: Obj, manager: str, subresource: str, dry_run: bool
    ) -> Obj:
        """PUT / merge-patch / controller write: Update operations never conflict, they take ownership
        of the fields they changed away from whoever held them."""
        new = _scoped(res, old, new, subresource)
        admission.default(res, new, creating=False)
        owners = _owners(old)
        changed = {
            p
            for p in field_paths(old) | field_paths(new)
            if _in_scope(res, p, subresource) and not same_value(old, new, p)
        }
        mine: OwnerKey = (manager, "Update", subresource)
        for key in owners:
            if key != mine:
                owners[key] -= changed
        owners[mine] = owners.get(mine, set()) | changed
        return self._write(res, old, new, owners, dry_run, changed_by=mine if changed else None)

    def _write(
        self,
        res: Resource,
        old: Obj | None,
        new: Obj,
        owners: dict[OwnerKey, set[Path]],
        dry_run: bool,
        changed_by: OwnerKey | None = None,
    ) -> Obj:
        creating = old is None
        new = _with_type(res, new)  # stored objects carry kind/apiVersion; LIST strips them from items
        meta = new.setdefault("metadata", {})
        meta.pop("managedFields", None)
        if creating:
            if res.has_status:
                new.pop("status", None)  # status is the controllers' to write
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_ts()
            for key in ("resourceVersion", "deletionTimestamp", "generation"):
                meta.pop(key, None)
            if res.has_generation:
                meta["generation"] = 1
        else:
            assert old is not None
            for key in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp", "generation"):
                if key in old["metadata"]:
                    meta[key] = old["metadata"][key]
                else:
                    meta.pop(key, None)
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        admission.default(res, new, creating=creating)
        if old is not None and res.has_generation and old.get("spec") != new.get("spec"):
            meta["generation"] = old["metadata"].get("generation", 1) + 1
        admission.validate(res, new, old)
        stamp = now_ts()
        previous_entries = {
            (e["manager"], e["operation"], e.get("subresource", "")): e
            for e in (old or {}).get("metadata", {}).get("managedFields") or []
        }
        entries = []
        for key, paths in sorted(owners.items()):
            if not paths:
                continue
            before = previous_entries.get(key)
            # An entry's time moves only when its manager wrote or its field set changed.
            keep = before is not None and key != changed_by and from_fields_v1(before["fieldsV1"]) == paths
            entry = {
                "manager": key[0],
                "operation": key[1],
                "apiVersion": res.api_version,
                "time": before["time"] if keep and before else stamp,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(paths),
            }
            if key[2]:
                entry["subresource"] = key[2]
            entries.append(entry)
        meta["managedFields"] = entries
        if not creating and _same_object(old, new):
            return copy.deepcopy(old)  # a no-op write is not a write
        if dry_run:
            if creating:
                meta.pop("resourceVersion", None)
            return _with_type(res, new)
        self._commit(res, new, old, "ADDED" if creating else "MODIFIED")
        return _with_type(res, new)

    def _commit(self, res: Resource, obj: Obj, old: Obj | None, event_type: str) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        ns = obj["metadata"].get("namespace", "") if res.namespaced else ""
        bucket = self.objects.setdefault(res.key, {})
        key = (ns, obj["metadata"]["name"])
        if event_type == "DELETED":
            bucket.pop(key, None)
        else:
            bucket[key] = copy.deepcopy(obj)
        self.history.append(
            WatchEvent(
                self.rv,
                res.key,
                ns,
                event_type,
                copy.deepcopy(obj),
                copy.deepcopy(old) if old is not None else None,
            )
        )
        while len(self.history) > self.history_size:
            self.compacted_rv = self.history.popleft().rv
        for listener in list(self.listeners):
            listener(self.history[-1] if self.history else WatchEvent(self.rv, res.key, ns, event_type, obj, old))
        self.cond.notify_all()


def _sort_key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _check_type(res: Resource, obj: Obj, required: bool = False) -> None:
    if not isinstance(obj, dict):
        raise ApiError(400, "BadRequest", "the request body must be an object")
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if required and (not api_version or not kind):
        raise ApiError(400, "BadRequest", "apiVersion and kind must be set in an apply patch")
    if api_version and api_version != res.api_version:
        raise ApiError(
            400,
            "BadRequest",
            f"the API version in the data ({api_version}) does not match the "
            f"expected API version ({res.api_version})",
        )
    if kind and kind != res.kind:
        raise ApiError(
            400, "BadRequest", f"the kind in the data ({kind}) does not match the expected kind ({res.kind})"
        )
    obj.setdefault("metadata", {})


def _in_scope(res: Resource, path: Path, subresource: str) -> bool:
    """Writes to /status touch only status; writes to the main resource never touch status."""
    if not res.has_status:
        return True
    return (path[0] == "status") == (subresource == "status")


def _scoped(res: Resource, old: Obj, new: Obj, subresource: str) -> Obj:
    if not res.has_status:
        return new
    if subresource == "status":
        result = copy.deepcopy(old)
        result["status"] = copy.deepcopy(new.get("status") or {})
        return result
    new["status"] = copy.deepcopy(old.get("status") or {})
    return new


def _owners(obj: Obj) -> dict[OwnerKey, set[Path]]:
    return {
        (e["manager"], e["operation"], e.get("subresource", "")): from_fields_v1(e.get("fieldsV1") or {})
        for e in obj.get("metadata", {}).get("managedFields") or []
    }


def _same_object(a: Obj | None, b: Obj) -> bool:
    if a is None:
        return False
    strip = lambda o: {**o, "metadata": {k: v for k, v in o["metadata"].items() if k != "managedFields"}}  # noqa: E731
    if strip(a) != strip(b):
        return False
    # managedFields times differ on every write; compare only who owns what.
    return _owners(a) == _owners(b)


def _drop_owner(obj: Obj, uid: str) -> None:
    refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
    if refs:
        obj["metadata"]["ownerReferences"] = refs
    else:
        obj["metadata"].pop("ownerReferences", None)


def _with_type(res: Resource, obj: Obj) -> Obj:
    out = {"kind": res.kind, "apiVersion": res.api_version}
    out.update({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
    return out


def _bookmark(res: Resource, rv: int, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A BOOKMARK event: only the kind and a resourceVersion the client may resume from, as upstream."""
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if annotations:
        meta["annotations"] = annotations
    return {"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version, "metadata": meta}}


def _translate(event: WatchEvent, labels: Matcher, fields: Matcher) -> str | None:
    now_matches = labels(event.obj) and fields(event.obj)
    if event.type == "DELETED":
        return "DELETED" if now_matches else None
    was_matching = event.old is not None and labels(event.old) and fields(event.old)
    if event.type == "ADDED":
        return "ADDED" if now_matches else None
    if now_matches and was_matching:
        return "MODIFIED"
    if now_matches:
        return "ADDED"
    if was_matching:
        return "DELETED"
    return None
