"""The end-of-operation summary: result, each resource's verdict and reason, the events since the
operation began without the routine ones, and the last log lines of each failing container."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from conveyor.targets.kubernetes.verdict import is_routine_event, parse_time
from conveyor.targets.kubernetes.verify import FAILED, TIMED_OUT, Result
from conveyor.targets.kubernetes.watch import list_raw

LOG_LINES = 25
MAX_EVENTS = 40
MAX_PODS_PER_RESOURCE = 2


def events_since(api_client: Any, namespace: str, names: set[str], since: datetime) -> list[dict[str, Any]]:
    """Events about `names` last seen at or after `since` (whole seconds, as event times are)."""
    items, _ = list_raw(api_client, "Event", namespace)
    floor = since.replace(microsecond=0)
    found = []
    for event in items:
        involved = event.get("involvedObject") or {}
        if involved.get("name") not in names or is_routine_event(event):
            continue
        moment = parse_time(event.get("lastTimestamp") or event.get("eventTime")
                            or (event.get("metadata") or {}).get("creationTimestamp"))
        if moment is None or moment < floor:
            continue
        found.append(event)
    found.sort(key=lambda e: (str(e.get("lastTimestamp") or e.get("eventTime") or ""),
                              int((e.get("metadata") or {}).get("resourceVersion") or 0)))
    return found


def describe_event(event: dict[str, Any]) -> str:
    involved = event.get("involvedObject") or {}
    count = event.get("count") or 1
    times = f" (x{count})" if count > 1 else ""
    return (f"{involved.get('kind', '?')}/{involved.get('name', '?')}: {event.get('type', '')} "
            f"{event.get('reason', '')}: {event.get('message', '')}{times}")


def _failing_containers(pod: dict[str, Any]) -> list[str]:
    status = pod.get("status") or {}
    names = []
    for cs in status.get("initContainerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated") or {}
        if terminated.get("exitCode") != 0:
            names.append(cs.get("name", ""))
    for cs in status.get("containerStatuses") or []:
        if not cs.get("ready"):
            names.append(cs.get("name", ""))
    return [n for n in names if n]


def container_logs(api_client: Any, namespace: str, pod: str, container: str, lines: int = LOG_LINES) -> list[str]:
    """The last lines of one container; of its previous run when the current one has not started (a crash
    loop between restarts). Empty when there are none (an image that never pulled)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api_client)
    for previous in (False, True):
        try:
            response = core.read_namespaced_pod_log(pod, namespace, container=container, tail_lines=lines,
                                                    previous=previous, _preload_content=False)
        except ApiException:
            continue
        text = response.data.decode("utf-8", errors="replace")
        if text.strip():
            return text.rstrip("\n").split("\n")[-lines:]
    return []


def summarise(api_client: Any, namespace: str, result: Result, pods: dict[str, dict[str, Any]]) -> list[str]:
    """Summary lines. `pods` is the verifier's cache of pods by name (for finding failing containers)."""
    lines = [f"result: {result.state}" + (f": {result.reason}" if result.reason else "")]
    width = max((len(r.key) for r in result.resources), default=0)
    for r in result.resources:
        detail = r.reason if r.state in (FAILED, TIMED_OUT) else (r.progress or r.reason)
        lines.append(f"  {r.key.ljust(width)}  {r.state}" + (f": {detail}" if detail and detail != r.state else ""))
    if result.state == "succeeded":
        return lines
    names: set[str] = set()
    for r in result.resources:
        names |= r.related | {r.name}
    try:
        events = events_since(api_client, namespace, names, result.since)
    except Exception as exc:  # the summary must not hide the failure it summarises
        lines.append(f"events: could not be read ({type(exc).__name__}: {exc})")
        events = []
    if events:
        shown = events[-MAX_EVENTS:]
        skipped = len(events) - len(shown)
        lines.append("events since the operation began (routine ones left out"
                     + (f", {skipped} older ones too" if skipped else "") + "):")
        lines += [f"  {describe_event(e)}" for e in shown]
    for r in result.failing:
        chosen = list(r.doom_reasons) or r.pods
        for pod_name in chosen[:MAX_PODS_PER_RESOURCE]:
            pod = pods.get(pod_name) or {}
            for container in _failing_containers(pod) or [c.get("name") for c in (pod.get("spec") or {}).get(
                    "containers") or []]:
                try:
                    tail = container_logs(api_client, namespace, pod_name, container)
                except Exception:  # as above: best effort
                    tail = []
                if tail:
                    lines.append(f"last {len(tail)} log lines of pod {pod_name}, container {container}:")
                    lines += [f"  | {line}" for line in tail]
    return lines
