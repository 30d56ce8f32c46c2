"""Server-side printing: `Accept: application/json;as=Table;g=meta.k8s.io;v=v1` answers a meta.k8s.io/v1
Table with the columns the real server's printers give each kind (pkg/printers/internalversion), so
`kubectl get` and `kubectl get -o wide` look as they do against a cluster. Kinds without a printer here
get NAME and AGE.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .resources import Resource

Obj = dict[str, Any]
Column = tuple[str, str, int, Callable[[Obj], Any]]  # (name, type, priority, cell)


def wants_table(accept: str) -> bool:
    return any(
        "as=table" in part.lower().replace(" ", "") and "g=meta.k8s.io" in part.replace(" ", "")
        for part in accept.split(",")
    )


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration: `45s`, `3m20s`, `25m`, `5h3m`, `3d4h`, `40d`, `2y10d`."""
    s = int(seconds)
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes, hours, days = s // 60, s // 3600, s // 86400
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 730:
        return f"{days}d"
    years = days // 365
    return f"{years}y{days % 365}d" if years < 8 and days % 365 else f"{years}y"


def _since(stamp: str | None) -> str:
    if not stamp:
        return "<unknown>"
    then = datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return human_duration((datetime.now(UTC) - then).total_seconds())


def _meta(o: Obj) -> Obj:
    return o.get("metadata") or {}


def _spec(o: Obj) -> Obj:
    return o.get("spec") or {}


def _status(o: Obj) -> Obj:
    return o.get("status") or {}


def _age(o: Obj) -> str:
    return _since(_meta(o).get("creationTimestamp"))


def _containers(o: Obj) -> list[Obj]:
    return ((_spec(o).get("template") or {}).get("spec") or {}).get("containers") or []


def _names(o: Obj) -> str:
    return ",".join(c.get("name", "") for c in _containers(o))


def _images(o: Obj) -> str:
    return ",".join(c.get("image", "") for c in _containers(o))


def _selector(o: Obj) -> str:
    selector = _spec(o).get("selector") or {}
    labels = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


def _pod_status(pod: Obj) -> str:
    """What the STATUS column shows: a waiting or terminated container's reason beats the phase."""
    if _meta(pod).get("deletionTimestamp"):
        return "Terminating"
    reason = _status(pod).get("reason") or _status(pod).get("phase") or "Pending"
    for cs in _status(pod).get("initContainerStatuses") or []:
        state = cs.get("state") or {}
        if "waiting" in state and state["waiting"].get("reason") not in (None, "PodInitializing"):
            return f"Init:{state['waiting']['reason']}"
        if "terminated" in state and state["terminated"].get("exitCode", 0) != 0:
            return f"Init:{state['terminated'].get('reason') or 'Error'}"
    for cs in reversed(_status(pod).get("containerStatuses") or []):
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            reason = state["terminated"].get("reason") or f"ExitCode:{state['terminated'].get('exitCode', 0)}"
    return str(reason)


def _pod_ready(pod: Obj) -> str:
    statuses = _status(pod).get("containerStatuses") or []
    total = len(_spec(pod).get("containers") or [])
    return f"{sum(1 for cs in statuses if cs.get('ready'))}/{total}"


def _restarts(pod: Obj) -> str:
    return str(sum(cs.get("restartCount", 0) for cs in _status(pod).get("containerStatuses") or []))


def _ports(svc: Obj) -> str:
    ports = _spec(svc).get("ports") or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _job_status(job: Obj) -> str:
    for cond in _status(job).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"])
    return "Running"


def _job_duration(job: Obj) -> str:
    start, end = _status(job).get("startTime"), _status(job).get("completionTime")
    if not start:
        return ""
    if not end:
        return _since(start)
    parse = lambda s: datetime.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")  # noqa: E731
    return human_duration((parse(end) - parse(start)).total_seconds())


def _event_object(e: Obj) -> str:
    involved = e.get("involvedObject") or {}
    return f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}"


NAME: Column = ("Name", "string", 0, lambda o: _meta(o).get("name", ""))
AGE: Column = ("Age", "string", 0, _age)
CONTAINERS: Column = ("Containers", "string", 1, _names)
IMAGES: Column = ("Images", "string", 1, _images)
SELECTOR: Column = ("Selector", "string", 1, _selector)

COLUMNS: dict[str, list[Column]] = {
    "Deployment": [
        NAME,
        ("Ready", "string", 0, lambda o: f"{_status(o).get('readyReplicas', 0)}/{_spec(o).get('replicas', 1)}"),
        ("Up-to-date", "integer", 0, lambda o: _status(o).get("updatedReplicas", 0)),
        ("Available", "integer", 0, lambda o: _status(o).get("availableReplicas", 0)),
        AGE, CONTAINERS, IMAGES, SELECTOR,
    ],
    "ReplicaSet": [
        NAME,
        ("Desired", "integer", 0, lambda o: _spec(o).get("replicas", 1)),
        ("Current", "integer", 0, lambda o: _status(o).get("replicas", 0)),
        ("Ready", "integer", 0, lambda o: _status(o).get("readyReplicas", 0)),
        AGE, CONTAINERS, IMAGES, SELECTOR,
    ],
    "StatefulSet": [
        NAME,
        ("Ready", "string", 0, lambda o: f"{_status(o).get('readyReplicas', 0)}/{_spec(o).get('replicas', 1)}"),
        AGE, CONTAINERS, IMAGES,
    ],
    "DaemonSet": [
        NAME,
        ("Desired", "integer", 0, lambda o: _status(o).get("desiredNumberScheduled", 0)),
        ("Current", "integer", 0, lambda o: _status(o).get("currentNumberScheduled", 0)),
        ("Ready", "integer", 0, lambda o: _status(o).get("numberReady", 0)),
        ("Up-to-date", "integer", 0, lambda o: _status(o).get("updatedNumberScheduled", 0)),
        ("Available", "integer", 0, lambda o: _status(o).get("numberAvailable", 0)),
        ("Node Selector", "string", 0, lambda o: ",".join(
            f"{k}={v}" for k, v in ((_spec(o).get("template") or {}).get("spec") or {}).get("nodeSelector", {}).items()
        ) or "<none>"),
        AGE, CONTAINERS, IMAGES, SELECTOR,
    ],
    "Pod": [
        NAME,
        ("Ready", "string", 0, _pod_ready),
        ("Status", "string", 0, _pod_status),
        ("Restarts", "string", 0, _restarts),
        AGE,
        ("IP", "string", 1, lambda o: _status(o).get("podIP") or "<none>"),
        ("Node", "string", 1, lambda o: _spec(o).get("nodeName") or "<none>"),
        ("Nominated Node", "string", 1, lambda o: _status(o).get("nominatedNodeName") or "<none>"),
        ("Readiness Gates", "string", 1, lambda o: "<none>"),
    ],
    "Service": [
        NAME,
        ("Type", "string", 0, lambda o: _spec(o).get("type", "ClusterIP")),
        ("Cluster-IP", "string", 0, lambda o: _spec(o).get("clusterIP") or "<none>"),
        ("External-IP", "string", 0, lambda o: "<none>"),
        ("Port(s)", "string", 0, _ports),
        AGE,
        ("Selector", "string", 1, lambda o: ",".join(
            f"{k}={v}" for k, v in sorted((_spec(o).get("selector") or {}).items())) or "<none>"),
    ],
    "Job": [
        NAME,
        ("Status", "string", 0, _job_status),
        ("Completions", "string", 0, lambda o: f"{_status(o).get('succeeded', 0)}/{_spec(o).get('completions', 1)}"),
        ("Duration", "string", 0, _job_duration),
        AGE, CONTAINERS, IMAGES, SELECTOR,
    ],
    "ConfigMap": [
        NAME,
        ("Data", "integer", 0, lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {})),
        AGE,
    ],
    "Secret": [
        NAME,
        ("Type", "string", 0, lambda o: o.get("type", "Opaque")),
        ("Data", "integer", 0, lambda o: len(o.get("data") or {})),
        AGE,
    ],
    "Namespace": [NAME, ("Status", "string", 0, lambda o: _status(o).get("phase", "Active")), AGE],
    "ServiceAccount": [NAME, ("Secrets", "integer", 0, lambda o: len(o.get("secrets") or [])), AGE],
    "Event": [
        ("Last Seen", "string", 0, lambda o: _since(o.get("lastTimestamp") or o.get("eventTime"))),
        ("Type", "string", 0, lambda o: o.get("type", "")),
        ("Reason", "string", 0, lambda o: o.get("reason", "")),
        ("Object", "string", 0, _event_object),
        ("Subobject", "string", 1, lambda o: (o.get("involvedObject") or {}).get("fieldPath", "")),
        ("Source", "string", 1, lambda o: (o.get("source") or {}).get("component", "")),
        ("Message", "string", 0, lambda o: o.get("message", "")),
        ("First Seen", "string", 1, lambda o: _since(o.get("firstTimestamp") or o.get("eventTime"))),
        ("Count", "integer", 1, lambda o: o.get("count", 1)),
        ("Name", "string", 1, lambda o: _meta(o).get("name", "")),
    ],
}


def table(res: Resource, objects: list[Obj], resource_version: str, include: str) -> Obj:
    """A meta.k8s.io/v1 Table of `objects`; include: the includeObject parameter (Metadata by default)."""
    columns = COLUMNS.get(res.kind, [NAME, AGE])
    definitions = [
        {
            "name": name,
            "type": kind,
            "format": "name" if (name, priority) == ("Name", 0) else "",
            "description": f"{res.kind} {name.lower()}",
            "priority": priority,
        }
        for name, kind, priority, _ in columns
    ]
    rows = []
    for obj in objects:
        row: Obj = {"cells": [cell(obj) for _, _, _, cell in columns]}
        if include == "Object":
            row["object"] = {"kind": res.kind, "apiVersion": res.api_version, **obj}
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": _meta(obj),
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }
