"""The scheduler and kubelet, scripted: each pod's status follows its image's behaviour over time.

A pod's status is a pure function of (behaviour, steps since the kubelet first saw it), and every
timestamp in it is derived from that start time, so recomputing it on every tick writes (and emits a
watch event) only when the pod actually moves to a new stage, as a real kubelet does.

Behaviours, chosen per image by the test (fixture.KubeApi.behave):
  healthy          running, ready one step after start
  slow             running, ready after `ready_after` seconds
  stuck            running, readiness never passes (Unhealthy events)
  crashloop        exits 1 after each start, CrashLoopBackOff with a rising restartCount, logs each run
  image-not-found  ErrImagePull then ImagePullBackOff, message "...: not found"
  config-error     CreateContainerConfigError (a missing ConfigMap)
  unschedulable    never scheduled: PodScheduled=False, reason Unschedulable, FailedScheduling event
  succeeds         runs `run_seconds` then exits 0 (pods with restartPolicy Never/OnFailure)
  fails            runs then exits `exit_code` (default 1)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .events import Recorder
from .resources import BY_KIND
from .store import Store

PODS = BY_KIND["Pod"]
NODE = "worker-1"
NODE_IP = "10.0.1.11"
UNSCHEDULABLE = (
    "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: "
    "3 No preemption victims found for incoming pod."
)


@dataclass
class Behaviour:
    name: str = "healthy"
    ready_after: float = 0.0  # slow: seconds from start to ready
    run_seconds: float = 0.0  # succeeds/fails: how long the command runs
    exit_code: int = 1  # fails
    logs: list[str] | None = None  # lines each run writes (default: a few realistic ones)
    message: str | None = None  # overrides the scheduler / config error message


@dataclass
class _Runtime:
    start: float  # monotonic time the kubelet first saw the pod
    wall: datetime  # the same moment in wall time, the base of every timestamp in the status
    emitted: set[str] = field(default_factory=set)
    logged_runs: dict[str, int] = field(default_factory=dict)


@dataclass
class _View:
    """One container's status at a moment."""

    state: dict[str, Any]
    last_state: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    restarts: int = 0
    started: bool = False
    runs: int = 0  # how many times the process has started (each run writes its log lines)
    exit_code: int | None = None  # set when the container finished for good
    ready_at: float | None = None
    events: list[tuple[str, str, str, str]] = field(default_factory=list)  # (key, type, reason, message)


class Kubelet:
    def __init__(
        self, store: Store, recorder: Recorder, behaviour_for: Callable[[str, bool], Behaviour], step: float
    ) -> None:
        self.store = store
        self.recorder = recorder
        self.behaviour_for = behaviour_for
        self.step = step
        self.runtime: dict[str, _Runtime] = {}

    def sync_all(self) -> None:
        pods, _ = self.store.list(PODS)
        alive = set()
        for pod in pods:
            alive.add(pod["metadata"]["uid"])
            self.sync(pod)
        for uid in list(self.runtime):
            if uid not in alive:
                del self.runtime[uid]

    def _ts(self, rt: _Runtime, steps: float) -> str:
        moment = rt.wall + timedelta(seconds=max(steps, 0) * self.step)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _clock(self, rt: _Runtime, offset: float) -> Callable[[float], str]:
        return lambda k: self._ts(rt, offset + k)

    def sync(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return
        rt = self.runtime.setdefault(meta["uid"], _Runtime(time.monotonic(), datetime.now(UTC)))
        t = (time.monotonic() - rt.start) / self.step
        task = spec.get("restartPolicy", "Always") != "Always"
        containers = spec.get("containers") or []
        inits = spec.get("initContainers") or []
        behaviours = {c["name"]: self.behaviour_for(c.get("image", ""), task) for c in containers}
        ns, name = meta.get("namespace", "default"), meta["name"]

        blocked = next((b for b in behaviours.values() if b.name == "unschedulable"), None)
        if blocked is not None:
            message = blocked.message or UNSCHEDULABLE
            status = {
                "phase": "Pending",
                "qosClass": _qos(containers),
                "conditions": [_cond("PodScheduled", "False", self._ts(rt, 0), "Unschedulable", message)],
            }
            self._write_status(pod, status)
            self._emit(
                rt,
                pod,
                f"unschedulable:{int(t // 20)}",
                "Warning",
                "FailedScheduling",
                message,
                "default-scheduler",
            )
            return
        if t < 1:
            return  # waiting for the scheduler
        if not spec.get("nodeName"):
            self.store.mutate(
                PODS, ns, name, lambda p: p["spec"].__setitem__("nodeName", NODE), "kube-scheduler"
            )
            self._emit(
                rt,
                pod,
                "scheduled",
                "Normal",
                "Scheduled",
                f"Successfully assigned {ns}/{name} to {NODE}",
                "default-scheduler",
            )

        init_behaviours: dict[str, Behaviour] = {}
        # Init containers run to completion first (a crash-looping image loops here instead).
        init_views = []
        main_start = 1.0
        for c in inits:
            b = self.behaviour_for(c.get("image", ""), True)
            if b.name in ("succeeds", "healthy", "slow", "stuck"):
                b = Behaviour("succeeds", logs=b.logs)
            init_behaviours[c["name"]] = b
            view = _timeline(
                b, t - main_start, c, name, ns, meta["uid"], self.step, True, self._clock(rt, main_start)
            )
            init_views.append((c, view))
            if view.exit_code != 0:
                break
            main_start += 2 + b.run_seconds / self.step
        init_done = all(v.exit_code == 0 for _, v in init_views) and len(init_views) == len(inits)

        views = []
        for c in containers:
            if init_done:
                view = _timeline(
                    behaviours[c["name"]],
                    t - main_start,
                    c,
                    name,
                    ns,
                    meta["uid"],
                    self.step,
                    task,
                    self._clock(rt, main_start),
                )
            else:
                view = _View({"waiting": {"reason": "PodInitializing"}})
            views.append((c, view))

        for c, view in init_views + views:
            for key, etype, reason, message in view.events:
                self._emit(
                    rt,
                    pod,
                    f"{c['name']}:{key}",
                    etype,
                    reason,
                    message,
                    "kubelet",
                    f"spec.{'initContainers' if c in inits else 'containers'}{{{c['name']}}}",
                )
            logged = rt.logged_runs.get(c["name"], 0)
            if view.runs > logged:
                chosen = init_behaviours[c["name"]] if c in inits else behaviours[c["name"]]
                lines = _log_lines(chosen, c, view.runs - logged)
                self.store.append_log(ns, name, c["name"], lines)
                rt.logged_runs[c["name"]] = view.runs
        self._write_status(pod, self._pod_status(rt, pod, init_views, views, init_done, main_start))

    def _pod_status(
        self,
        rt: _Runtime,
        pod: dict[str, Any],
        init_views: list[Any],
        views: list[Any],
        init_done: bool,
        main_start: float,
    ) -> dict[str, Any]:
        containers = pod["spec"].get("containers") or []
        statuses = [_container_status(c, v, pod["metadata"]["uid"]) for c, v in views]
        finished = [v.exit_code for _, v in views]
        if all(code is not None for code in finished) and views:
            phase = "Succeeded" if all(code == 0 for code in finished) else "Failed"
        elif init_done and any(v.runs > 0 for _, v in views):
            phase = "Running"
        else:
            phase = "Pending"
        ready = init_done and bool(views) and all(v.ready for _, v in views)
        ready_at = max((v.ready_at or 0) for _, v in views) if ready else 1
        names = " ".join(c["name"] for c, v in views if not v.ready)
        done = phase in ("Succeeded", "Failed")
        unready = (
            ("PodCompleted", None)
            if done
            else ("ContainersNotReady", f"containers with unready status: [{names}]")
        )
        incomplete = " ".join(c["name"] for c, v in init_views if v.exit_code != 0)
        conditions = [
            _cond("PodReadyToStartContainers", "False" if done else "True", self._ts(rt, 1)),
            _cond("Initialized", "True", self._ts(rt, 1))
            if init_done
            else _cond(
                "Initialized",
                "False",
                self._ts(rt, 1),
                "ContainersNotInitialized",
                f"containers with incomplete status: [{incomplete}]",
            ),
            _cond("Ready", "True", self._ts(rt, ready_at))
            if ready
            else _cond("Ready", "False", self._ts(rt, 1), *unready),
            _cond("ContainersReady", "True", self._ts(rt, ready_at))
            if ready
            else _cond("ContainersReady", "False", self._ts(rt, 1), *unready),
            _cond("PodScheduled", "True", self._ts(rt, 1)),
        ]
        ip = "10.244.1." + str(
            int(hashlib.sha256(pod["metadata"]["uid"].encode()).hexdigest(), 16) % 240 + 10
        )
        status: dict[str, Any] = {
            "conditions": conditions,
            "containerStatuses": statuses,
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
            "phase": phase,
            "qosClass": _qos(containers),
            "startTime": self._ts(rt, 1),
        }
        if init_views or pod["spec"].get("initContainers"):
            status["initContainerStatuses"] = [
                _container_status(c, v, pod["metadata"]["uid"]) for c, v in init_views
            ]
        if phase != "Pending" or any(v.runs for _, v in views):
            status["podIP"] = ip
            status["podIPs"] = [{"ip": ip}]
        return status

    def _write_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        if pod.get("status") == status:
            return
        meta = pod["metadata"]
        self.store.mutate(
            PODS,
            meta.get("namespace", "default"),
            meta["name"],
            lambda p: p.__setitem__("status", status),
            "kubelet",
            "status",
        )

    def _emit(
        self,
        rt: _Runtime,
        pod: dict[str, Any],
        key: str,
        etype: str,
        reason: str,
        message: str,
        component: str,
        field_path: str | None = None,
    ) -> None:
        if key in rt.emitted:
            return
        rt.emitted.add(key)
        host = NODE if component == "kubelet" else None
        self.recorder.emit(pod, etype, reason, message, component, host=host, field_path=field_path)


def _cond(
    kind: str, status: str, at: str, reason: str | None = None, message: str | None = None
) -> dict[str, Any]:
    cond: dict[str, Any] = {"lastProbeTime": None, "lastTransitionTime": at, "status": status, "type": kind}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _qos(containers: list[dict[str, Any]]) -> str:
    if any(
        (c.get("resources") or {}).get("requests") or (c.get("resources") or {}).get("limits")
        for c in containers
    ):
        return "Burstable"
    return "BestEffort"


def _container_id(pod_uid: str, name: str, run: int) -> str:
    return "containerd://" + hashlib.sha256(f"{pod_uid}/{name}/{run}".encode()).hexdigest()


def _image_id(image: str) -> str:
    if "@" in image:
        return image
    digest = hashlib.sha256(image.encode()).hexdigest()
    return f"{image.rsplit(':', 1)[0] if ':' in image.rsplit('/', 1)[-1] else image}@sha256:{digest}"


def _container_status(c: dict[str, Any], view: _View, pod_uid: str) -> dict[str, Any]:
    image = c.get("image", "")
    cs: dict[str, Any] = {
        "image": image,
        "imageID": _image_id(image) if view.runs else "",
        "lastState": view.last_state,
        "name": c["name"],
        "ready": view.ready,
        "restartCount": view.restarts,
        "started": view.started,
        "state": view.state,
    }
    if view.runs:
        cs["containerID"] = _container_id(pod_uid, c["name"], view.runs)
    return cs


def _timeline(
    b: Behaviour,
    t: float,
    c: dict[str, Any],
    pod: str,
    ns: str,
    uid: str,
    step: float,
    task: bool,
    at: Callable[[float], str],
) -> _View:
    """Container `c` at `t` steps after its turn to start; `at(k)` is the timestamp of step k.

    Pull during [0, 1); the first run starts at 1. A crash-looping container's run r starts at 2r-1 and
    crashes at 2r, then waits in CrashLoopBackOff for one step.
    """
    image, name = c.get("image", ""), c["name"]
    if t < 0:
        return _View({"waiting": {"reason": "PodInitializing"}})
    events = [("pulling", "Normal", "Pulling", f'Pulling image "{image}"')]
    if t < 1:
        return _View({"waiting": {"reason": "ContainerCreating"}}, events=events)

    if b.name == "image-not-found":
        ref = image.split("@")[0]
        error = (
            f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": failed to '
            f'resolve reference "{image}": {ref}: not found'
        )
        events += [
            ("pull-failed", "Warning", "Failed", f'Failed to pull image "{image}": {error}'),
            ("err-pull", "Warning", "Failed", "Error: ErrImagePull"),
        ]
        if t < 2:
            return _View({"waiting": {"reason": "ErrImagePull", "message": error}}, events=events)
        events += [
            ("backoff", "Normal", "BackOff", f'Back-off pulling image "{image}"'),
            ("err-backoff", "Warning", "Failed", "Error: ImagePullBackOff"),
        ]
        message = f'Back-off pulling image "{image}": ErrImagePull: {error}'
        return _View({"waiting": {"reason": "ImagePullBackOff", "message": message}}, events=events)

    events.append(
        (
            "pulled",
            "Normal",
            "Pulled",
            f'Successfully pulled image "{image}" in 412ms (412ms '
            "including waiting). Image size: 4868131 bytes.",
        )
    )
    if b.name == "config-error":
        message = b.message or 'configmap "app-config" not found'
        events.append(("config", "Warning", "Failed", f"Error: {message}"))
        return _View({"waiting": {"reason": "CreateContainerConfigError", "message": message}}, events=events)

    events += [
        ("created:1", "Normal", "Created", f"Created container {name}"),
        ("started:1", "Normal", "Started", f"Started container {name}"),
    ]
    first_run = {"running": {"startedAt": at(1)}}

    if b.name in ("succeeds", "fails") or (task and b.name not in ("crashloop", "stuck")):
        code = 0 if b.name != "fails" else b.exit_code
        end = 1 + max(1.0, b.run_seconds / step)
        if t < end:
            return _View(first_run, started=True, runs=1, events=events)
        terminated = {
            "terminated": {
                "containerID": _container_id(uid, name, 1),
                "exitCode": code,
                "finishedAt": at(end),
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": at(1),
            }
        }
        return _View(terminated, runs=1, exit_code=code, events=events)

    if b.name == "crashloop":
        if t < 2:
            return _View(first_run, started=True, runs=1, events=events)
        crashes = int(t // 2)
        last = {
            "terminated": {
                "containerID": _container_id(uid, name, crashes),
                "exitCode": 1,
                "finishedAt": at(2 * crashes),
                "reason": "Error",
                "startedAt": at(2 * crashes - 1),
            }
        }
        for n in range(2, crashes + 2 if t - 2 * crashes >= 1 else crashes + 1):
            events += [
                (f"created:{n}", "Normal", "Created", f"Created container {name}"),
                (f"started:{n}", "Normal", "Started", f"Started container {name}"),
            ]
        events.append(
            (
                f"backoff:{crashes}",
                "Warning",
                "BackOff",
                f"Back-off restarting failed container {name} in pod {pod}_{ns}({uid})",
            )
        )
        if t - 2 * crashes < 1:
            backoff = min(10 * 2 ** (crashes - 1), 300)
            message = f"back-off {backoff}s restarting failed container={name} pod={pod}_{ns}({uid})"
            return _View(
                {"waiting": {"reason": "CrashLoopBackOff", "message": message}},
                last,
                restarts=crashes,
                runs=crashes,
                events=events,
            )
        rerun = {"running": {"startedAt": at(2 * crashes + 1)}}
        return _View(rerun, last, restarts=crashes, started=True, runs=crashes + 1, events=events)

    if b.name == "stuck":
        probe = (c.get("readinessProbe") or {}).get("httpGet") or {}
        port, path = probe.get("port", 8080), probe.get("path", "/")
        events.append(
            (
                f"unhealthy:{int(t // 10)}",
                "Warning",
                "Unhealthy",
                f'Readiness probe failed: Get "http://10.244.1.10:{port}{path}": dial tcp '
                f"10.244.1.10:{port}: connect: connection refused",
            )
        )
        return _View(first_run, started=True, runs=1, events=events)

    ready_at = 2.0 if b.name != "slow" else 1 + max(b.ready_after / step, 1.0)
    ready = t >= ready_at
    return _View(first_run, ready=ready, started=True, runs=1, ready_at=ready_at, events=events)


def _log_lines(b: Behaviour, c: dict[str, Any], runs: int) -> list[str]:
    if b.logs is not None:
        lines = list(b.logs)
    elif b.name == "crashloop":
        lines = [
            f"{c['name']}: starting",
            "error: could not connect to database at db:5432: connection refused",
            "exiting with status 1",
        ]
    elif b.name in ("succeeds", "fails") or b.name == "healthy" and c.get("command"):
        lines = [f"running {' '.join(c.get('command') or [c['name']])}"]
        lines.append("done" if b.name != "fails" else f"error: task failed with exit code {b.exit_code}")
    else:
        lines = [f"{c['name']}: starting with image {c.get('image', '')}", "listening on :8080"]
    return lines * runs
