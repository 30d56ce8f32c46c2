"""Sending the rendered manifests: server-side dry run of everything first, then server-side apply with
field manager `conveyor` in krane's order, and opt-in pruning.

Order: the PRIORITY_KINDS groups one after another (each applied, then read back, before the next),
then pre-deploy tasks (the target runs them between the two calls), then everything else.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor.errors import BadInput
from conveyor.targets.kubernetes.client import FIELD_MANAGER, Session
from conveyor.targets.kubernetes.manifests import (
    A_RELEASE,
    L_APP,
    L_ENV,
    L_ROLE,
    PRIORITY_KINDS,
    PROTECTED_KINDS,
    SECRET_PREFIX,
    WORKLOAD_KINDS,
    secret_names,
    substitute,
    unescape,
)

Report = Callable[[str, str], None]

# Kinds pruning looks at, besides those in the current manifests (an object whose kind left the
# manifests entirely must still be found).
PRUNABLE_KINDS = (
    "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "ResourceQuota", "Service",
    "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "Ingress", "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
)


class ApplyError(Exception):
    def __init__(self, message: str, changed: bool) -> None:
        super().__init__(message)
        self.message = message
        self.changed = changed  # False: nothing in the cluster was modified before the failure


@dataclass
class Prepared:
    """One manifest ready to send: its API resource (from discovery) and the exact body."""

    kind: str
    name: str
    source: str
    timeout: float
    resource: Any  # kubernetes.dynamic.Resource
    body: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def namespaced(self) -> bool:
        return bool(self.resource.namespaced)


@dataclass
class Applied:
    kind: str
    name: str
    uid: str
    generation: int | None
    resource_version: str
    obj: dict[str, Any]


def api_message(exc: Exception) -> str:
    """The API's own message from a Status body, else the exception text."""
    body = getattr(exc, "body", None)
    if body:
        try:
            data = json.loads(body)
            if isinstance(data, dict) and data.get("message"):
                return str(data["message"])
        except (TypeError, ValueError):
            pass
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status:
        return f"{status} {reason or ''}".strip()
    return f"{type(exc).__name__}: {exc}"


def resolve(session: Session, api_version: str, kind: str) -> Any:
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    try:
        return session.dynamic.resources.get(api_version=api_version, kind=kind)
    except ResourceNotFoundError:
        raise BadInput(f"the cluster does not serve {kind} in {api_version} (is its CRD installed?)") from None


def secret_values(spec: dict[str, Any]) -> dict[str, str]:
    """The values of the secrets the spec names, from conveyor's environment, read at apply time."""
    values, missing = {}, []
    for name in spec.get("secrets") or []:
        value = os.environ.get(name)
        if value is None:
            missing.append(name)
        else:
            values[f"{SECRET_PREFIX}{name}"] = value
    needed = set()
    for entry in spec.get("manifests") or []:
        needed |= secret_names(entry["object"])
    missing = [n for n in missing if n in needed]
    if missing:
        raise BadInput(f"secret env var(s) not set in conveyor's environment: {', '.join(missing)} "
                       f"(the manifests of {spec['app']}/{spec['env']} use them)")
    return values


def finish_object(obj: dict[str, Any], secrets: dict[str, str]) -> dict[str, Any]:
    """The body to send: secrets filled in, `$${…}` escapes made literal."""
    return unescape(substitute(copy.deepcopy(obj), secrets.get))


def prepare(session: Session, spec: dict[str, Any], release_label: str | None) -> list[Prepared]:
    secrets = secret_values(spec)
    out = []
    for entry in spec["manifests"]:
        resource = resolve(session, entry["apiVersion"], entry["kind"])
        body = finish_object(entry["object"], secrets)
        meta = body.setdefault("metadata", {})
        if resource.namespaced:
            meta["namespace"] = spec["namespace"]
        else:
            meta.pop("namespace", None)
        if release_label and entry["kind"] in WORKLOAD_KINDS:
            # Says which release last applied the workload (read back by `conveyor status`).
            meta["annotations"] = {**(meta.get("annotations") or {}), A_RELEASE: release_label}
        out.append(Prepared(entry["kind"], entry["name"], entry["source"], float(entry["timeout"]), resource, body))
    return out


def groups(prepared: list[Prepared]) -> tuple[list[list[Prepared]], list[Prepared]]:
    """(the priority groups in krane's order, skipping empty ones; everything else in manifest order)."""
    first = [[p for p in prepared if p.kind == kind] for kind in PRIORITY_KINDS]
    rest = [p for p in prepared if p.kind not in PRIORITY_KINDS]
    return [g for g in first if g], rest


def _apply(session: Session, item: Prepared, dry_run: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"field_manager": FIELD_MANAGER, "force_conflicts": True}
    if dry_run:
        kwargs["dry_run"] = "All"
    # force: conveyor is the deploy tool of record; a field someone changed by hand (kubectl edit, set
    # image) is taken back, as `kubectl apply --server-side --force-conflicts` would.
    result = session.dynamic.server_side_apply(
        item.resource, body=item.body, name=item.name,
        namespace=item.body["metadata"].get("namespace") if item.namespaced else None, **kwargs,
    )
    return result.to_dict()


def dry_run(session: Session, prepared: list[Prepared]) -> list[str]:
    """Every object the API server would refuse, with its message; empty when all would apply."""
    problems = []
    for item in prepared:
        try:
            _apply(session, item, dry_run=True)
        except Exception as exc:
            if not hasattr(exc, "status"):
                raise
            problems.append(f"{item.key} ({item.source}): {api_message(exc)}")
    return problems


def apply_items(session: Session, items: list[Prepared], report: Report, changed_before: bool) -> dict[str, Applied]:
    applied: dict[str, Applied] = {}
    for item in items:
        try:
            obj = _apply(session, item, dry_run=False)
        except Exception as exc:  # refused, or the connection broke: either way say what may have changed
            raise ApplyError(f"applying {item.key} ({item.source}) failed: {api_message(exc)}",
                             changed=changed_before or bool(applied)) from None
        meta = obj.get("metadata") or {}
        applied[item.key] = Applied(item.kind, item.name, meta.get("uid", ""), meta.get("generation"),
                                    str(meta.get("resourceVersion", "")), obj)
        report("apply", f"{item.key} applied")
    return applied


def confirm(session: Session, items: list[Prepared], applied: dict[str, Applied]) -> None:
    """Read each object of a group back before the next group goes: it exists, is the one we applied,
    and (a PVC) is not Lost."""
    for item in items:
        try:
            live = session.dynamic.get(item.resource, name=item.name,
                                       namespace=item.body["metadata"].get("namespace")).to_dict()
        except Exception as exc:
            if not hasattr(exc, "status"):
                raise
            raise ApplyError(f"{item.key} was applied but cannot be read back: {api_message(exc)}", True) from None
        uid = (live.get("metadata") or {}).get("uid")
        if uid != applied[item.key].uid:
            raise ApplyError(f"{item.key} was replaced by someone else while conveyor applied it", True)
        if item.kind == "PersistentVolumeClaim" and (live.get("status") or {}).get("phase") == "Lost":
            raise ApplyError(f"{item.key} is Lost: its volume is gone", True)


def prune(session: Session, spec: dict[str, Any], keep: set[str], report: Report) -> list[str]:
    """Delete this app+env's objects that left the manifests: only objects with both conveyor labels, not
    owned by another object, not a task pod, never cluster-scoped and never a protected kind."""
    selector = f"{L_APP}={spec['app']},{L_ENV}={spec['env']}"
    kinds = (set(PRUNABLE_KINDS) | {e["kind"] for e in spec["manifests"]}) - set(PROTECTED_KINDS)
    removed: list[str] = []
    seen_kinds: set[str] = set()
    for found in session.dynamic.resources:
        # discovery yields a list per kind when a kind is served in several versions
        for resource in found if isinstance(found, list) else [found]:
            verbs = resource.verbs or []
            if (resource.kind not in kinds or resource.kind in seen_kinds or "/" in resource.name
                    or not resource.namespaced or "list" not in verbs or "delete" not in verbs):
                continue
            seen_kinds.add(resource.kind)  # one version per kind, so nothing is listed twice
            removed += _prune_kind(session, spec, resource, selector, keep, report)
    return removed


def _prune_kind(session: Session, spec: dict[str, Any], resource: Any, selector: str, keep: set[str],
                report: Report) -> list[str]:
    from kubernetes.dynamic.exceptions import NotFoundError

    removed = []
    found = session.dynamic.get(resource, namespace=spec["namespace"], label_selector=selector).to_dict()
    for obj in found.get("items") or []:
        meta = obj.get("metadata") or {}
        key = f"{resource.kind}/{meta.get('name')}"
        labels = meta.get("labels") or {}
        if key in keep or meta.get("ownerReferences") or labels.get(L_ROLE) == "task":
            continue
        try:
            session.dynamic.delete(resource, name=meta["name"], namespace=spec["namespace"],
                                   body={"propagationPolicy": "Background"})
        except NotFoundError:
            continue
        removed.append(key)
        report("prune", f"deleted {key}: it is no longer in the manifests")
    return removed
