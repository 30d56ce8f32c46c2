"""One-off pods: pre-deploy tasks (with the NEW image) and `conveyor run` (with the live one).

The pod copies the app workload's pod settings from the spec (env, envFrom, volumes, service account, …;
see manifests.task_template), runs the command with restartPolicy Never under a deadline (enforced by
the API server too, through activeDeadlineSeconds), and its log is followed line by line as it runs.
The pod is deleted afterwards, whatever happened, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import copy
import math
import queue
import secrets as random_tokens
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conveyor.errors import BadInput, TargetError
from conveyor.targets.kubernetes.apply import api_message, finish_object, secret_values
from conveyor.targets.kubernetes.client import FIELD_MANAGER, Session
from conveyor.targets.kubernetes.verdict import pod_doom, timeout_reason
from conveyor.targets.kubernetes.watch import Change, Informer, _shut

Report = Callable[[str, str], None]
TAIL = 25
LOG_DRAIN_SECONDS = 5.0  # after the pod finished, how long its log stream may take to deliver the rest


@dataclass
class PodRun:
    name: str
    exit_code: int | None
    reason: str = ""  # why it did not run to an exit code, or how it ended
    tail: list[str] = field(default_factory=list)


def _slug(text: str) -> str:
    out = "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")
    return out or "task"


def pod_body(spec: dict[str, Any], purpose: str, command: list[str], timeout: float) -> dict[str, Any]:
    template = spec.get("task_pod")
    if not template:
        raise BadInput(f"{spec['app']}/{spec['env']}: no Deployment, StatefulSet or DaemonSet in the manifests runs "
                       f"{spec['repository']}, so there are no pod settings to run a task with (set "
                       "target.task_workload)")
    suffix = random_tokens.token_hex(3)
    base = f"{spec['app']}-{spec['env']}-{_slug(purpose)}"
    name = f"{base[:63 - len(suffix) - 1].rstrip('-')}-{suffix}"
    pod_spec = copy.deepcopy(template["spec"])
    container = pod_spec["containers"][0]
    container["image"] = spec["image"]
    container["command"] = list(command)
    container.pop("args", None)
    pod_spec["activeDeadlineSeconds"] = max(1, math.ceil(timeout))
    meta = copy.deepcopy(template.get("metadata") or {})
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": spec["namespace"], "labels": meta.get("labels") or {},
                     "annotations": meta.get("annotations") or {}},
        "spec": pod_spec,
    }
    return finish_object(body, secret_values(spec))


def _container_status(pod: dict[str, Any], container: str) -> dict[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == container:
            return cs
    return {}


def _follow_logs(session: Session, namespace: str, pod: str, container: str, out: queue.Queue[Change],
                 holder: list[Any], read_timeout: float) -> None:
    from kubernetes import client
    from kubernetes.watch.watch import iter_resp_lines

    try:
        response = client.CoreV1Api(session.api).read_namespaced_pod_log(
            pod, namespace, container=container, follow=True, _preload_content=False,
            # a quiet task may print nothing for a long time: only its own deadline bounds the wait
            _request_timeout=(10, read_timeout),
        )
        holder.append(response)
        for line in iter_resp_lines(response):
            out.put(Change("log", "Pod", message=line))
        out.put(Change("log-end", "Pod"))
    except Exception as exc:
        out.put(Change("log-end", "Pod", message=f"{type(exc).__name__}: {api_message(exc)}"))


def run_pod(session: Session, spec: dict[str, Any], purpose: str, command: list[str], timeout: float,
            report: Report, step: str) -> PodRun:
    """Run `command` in a one-off pod; stream its log through report(step, line); delete the pod."""
    from kubernetes import client

    body = pod_body(spec, purpose, command, timeout)
    name, namespace = body["metadata"]["name"], spec["namespace"]
    container = body["spec"]["containers"][0]["name"]
    core = client.CoreV1Api(session.api)
    changes: queue.Queue[Change] = queue.Queue()
    informer = Informer(session.api, "Pod", namespace, changes, field_selector=f"metadata.name={name}")
    log_holder: list[Any] = []
    log_thread: threading.Thread | None = None
    tail: deque[str] = deque(maxlen=TAIL)
    try:
        core.create_namespaced_pod(namespace, body, field_manager=FIELD_MANAGER)
    except Exception as exc:
        if not hasattr(exc, "status"):
            raise
        raise TargetError(f"could not create pod {name}: {api_message(exc)}") from None
    report("pod", f"{name} started with {spec['image']}")
    deadline = time.monotonic() + timeout
    pod: dict[str, Any] = {}
    logs_done = False
    try:
        informer.start()
        finished_at: float | None = None
        while True:
            now = time.monotonic()
            if finished_at is not None and (logs_done or log_thread is None or now - finished_at > LOG_DRAIN_SECONDS):
                break
            if finished_at is None and now >= deadline:
                why = timeout_reason("Pod", pod, [pod]) if pod else f"Pod {name} never appeared"
                return PodRun(name, None, f"timed out after {timeout:g}s: {why}", list(tail))
            limit = (finished_at + LOG_DRAIN_SECONDS) if finished_at is not None else deadline
            try:
                change = changes.get(timeout=max(0.0, limit - now))
            except queue.Empty:
                continue
            if change.what == "log":
                tail.append(change.message)
                report(step, change.message)
                continue
            if change.what == "log-end":
                logs_done = True
                if change.message:
                    report("pod", f"log stream of {name} ended: {change.message}")
                continue
            if change.what == "sync":
                pod = next(iter(change.items), pod)
            elif change.what == "event" and change.obj is not None:
                if change.type == "DELETED":
                    return PodRun(name, None, "the pod was deleted while it ran", list(tail))
                pod = change.obj
            if not pod or finished_at is not None:
                continue
            state = _container_status(pod, container).get("state") or {}
            if log_thread is None and ("running" in state or "terminated" in state):
                log_thread = threading.Thread(
                    target=_follow_logs, args=(session, namespace, name, container, changes, log_holder, timeout + 60),
                    name="task-logs", daemon=True,
                )
                log_thread.start()
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                finished_at = time.monotonic()
                continue
            doom = pod_doom(pod)
            if doom:
                return PodRun(name, None, doom, list(tail))
        terminated = (_container_status(pod, container).get("state") or {}).get("terminated") or {}
        status = pod.get("status") or {}
        code = terminated.get("exitCode")
        if code is None:
            why = status.get("reason") or "Failed"
            message = status.get("message") or pod_doom(pod) or "the container never ran to an exit code"
            return PodRun(name, None, f"{why}: {message}", list(tail))
        return PodRun(name, int(code), terminated.get("reason", ""), list(tail))
    finally:
        informer.stop()
        for response in log_holder:
            _shut(response)  # a follow of a still-running container never ends by itself
        with contextlib.suppress(Exception):
            core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
