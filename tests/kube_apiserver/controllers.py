"""The deployment, replicaset and job controllers, scripted and simplified but with real shapes.

The deployment controller follows upstream's rolling update arithmetic (maxSurge rounds up,
maxUnavailable rounds down, old ReplicaSets are scaled down only as far as availability allows), names
ReplicaSets `<deployment>-<pod-template-hash>`, keeps revision annotations, and writes the status and
conditions (Progressing/Available with NewReplicaSetCreated, ReplicaSetUpdated, NewReplicaSetAvailable,
ProgressDeadlineExceeded) a real one writes. StatefulSets and DaemonSets are stored but not driven.
"""

from __future__ import annotations

import math
import threading
import traceback
from datetime import UTC, datetime
from typing import Any

from .events import Recorder
from .kubelet import Behaviour, Kubelet
from .resources import BY_KIND
from .store import Store, now_ts, random_suffix

DEPLOYMENTS, REPLICASETS, PODS, JOBS = (BY_KIND[k] for k in ("Deployment", "ReplicaSet", "Pod", "Job"))
REVISION = "deployment.kubernetes.io/revision"
_SAFE = "bcdfghjklmnpqrstvwxz2456789"
MANAGER = "kube-controller-manager"


def template_hash(template: dict[str, Any]) -> str:
    """pod-template-hash the way upstream builds it: FNV-32a of the template, "safe"-encoded."""
    import json

    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_SAFE[ord(ch) % len(_SAFE)] for ch in str(h))


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def _owner_ref(owner: dict[str, Any], kind: str, api_version: str) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _is_ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _scaled(value: Any, desired: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = desired * int(value[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value or 0)


def _revision(rs: dict[str, Any]) -> int:
    return int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))


def _omit_zero(status: dict[str, Any], *keys: str) -> dict[str, Any]:
    # the API omits zero-valued omitempty integers
    for key in keys:
        if not status.get(key):
            status.pop(key, None)
    return status


class Controllers:
    def __init__(self, store: Store, step: float = 0.1) -> None:
        self.store = store
        self.step = step
        self.behaviours: dict[str, Behaviour] = {}
        self.recorder = Recorder(store)
        self.kubelet = Kubelet(store, self.recorder, self.behaviour_for, step)
        self.errors: list[str] = []
        self.paused = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kube-controllers", daemon=True)

    def behaviour_for(self, image: str, task: bool) -> Behaviour:
        repo = image.split("@")[0]
        if ":" in repo.rsplit("/", 1)[-1]:
            repo = repo.rsplit(":", 1)[0]
        found = self.behaviours.get(image) or self.behaviours.get(repo)
        if found is not None:
            return found
        return Behaviour("succeeds" if task else "healthy")

    def start(self) -> Controllers:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.step / 2):
            if self.paused.is_set():
                continue
            try:
                self.tick()
            except Exception as exc:  # keep running, but let the fixture fail the test
                self.errors.append("".join(traceback.format_exception(exc)))

    def tick(self) -> None:
        for d in self.store.list(DEPLOYMENTS)[0]:
            self.sync_deployment(d)
        for rs in self.store.list(REPLICASETS)[0]:
            self.sync_replica_set(rs)
        for job in self.store.list(JOBS)[0]:
            self.sync_job(job)
        self.kubelet.sync_all()

    # --- Deployment ------------------------------------------------------------------------------------

    def sync_deployment(self, d: dict[str, Any]) -> None:
        meta, spec = d["metadata"], d["spec"]
        ns, uid = meta["namespace"], meta["uid"]
        desired = int(spec.get("replicas", 1))
        template = spec["template"]
        owned = [rs for rs in self.store.list(REPLICASETS, ns)[0] if _owned_by(rs, uid)]
        wanted_hash = template_hash(template)
        new_rs = next(
            (rs for rs in owned if rs["metadata"].get("labels", {}).get("pod-template-hash") == wanted_hash),
            None,
        )
        max_revision = max((_revision(rs) for rs in owned), default=0)
        created_new = False
        if new_rs is None:
            new_rs = self._create_replica_set(d, wanted_hash, max_revision + 1)
            created_new = True
        elif _revision(new_rs) < max_revision:  # rolled back to an older template: it becomes the newest
            new_rs = self._annotate(REPLICASETS, new_rs, {REVISION: str(max_revision + 1)}) or new_rs
        revision = str(_revision(new_rs))
        if (meta.get("annotations") or {}).get(REVISION) != revision:
            self._annotate(DEPLOYMENTS, d, {REVISION: revision})
        old = [rs for rs in owned if rs["metadata"]["name"] != new_rs["metadata"]["name"]]

        strategy = spec.get("strategy") or {}
        rolling = strategy.get("rollingUpdate") or {}
        surge = _scaled(rolling.get("maxSurge", "25%"), desired, round_up=True)
        unavailable = _scaled(rolling.get("maxUnavailable", "25%"), desired, round_up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        if strategy.get("type") == "Recreate":
            for rs in old:
                self._scale(d, rs, 0)
            if not any(
                _owned_by(p, rs["metadata"]["uid"]) for p in self.store.list(PODS, ns)[0] for rs in old
            ):
                self._scale(d, new_rs, desired)
        else:
            self._roll(d, new_rs, old, desired, surge, unavailable)
        self._deployment_status(d, new_rs, created_new, desired, unavailable)

    def _create_replica_set(self, d: dict[str, Any], pod_hash: str, revision: int) -> dict[str, Any]:
        import copy

        meta, spec = d["metadata"], d["spec"]
        template = copy.deepcopy(spec["template"])
        labels = dict((template.get("metadata") or {}).get("labels") or {}, **{"pod-template-hash": pod_hash})
        template.setdefault("metadata", {})["labels"] = labels
        desired = int(spec.get("replicas", 1))
        surge = _scaled(
            ((spec.get("strategy") or {}).get("rollingUpdate") or {}).get("maxSurge", "25%"),
            desired,
            round_up=True,
        )
        selector = copy.deepcopy(spec["selector"])
        selector.setdefault("matchLabels", {})["pod-template-hash"] = pod_hash
        body = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{meta['name']}-{pod_hash}",
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": {
                    "deployment.kubernetes.io/desired-replicas": str(desired),
                    "deployment.kubernetes.io/max-replicas": str(desired + surge),
                    REVISION: str(revision),
                },
                "ownerReferences": [_owner_ref(d, "Deployment", "apps/v1")],
            },
            "spec": {
                "replicas": 0,
                "minReadySeconds": spec.get("minReadySeconds", 0),
                "selector": selector,
                "template": template,
            },
        }
        return self.store.create(REPLICASETS, meta["namespace"], body, MANAGER)

    def _annotate(self, res: Any, obj: dict[str, Any], values: dict[str, str]) -> dict[str, Any] | None:
        meta = obj["metadata"]
        return self.store.mutate(
            res,
            meta.get("namespace", ""),
            meta["name"],
            lambda o: o["metadata"].setdefault("annotations", {}).update(values),
            MANAGER,
        )

    def _scale(self, d: dict[str, Any], rs: dict[str, Any], replicas: int) -> None:
        current = int(rs["spec"].get("replicas", 0))
        if current == replicas:
            return
        rs_meta = rs["metadata"]
        self.store.mutate(
            REPLICASETS,
            rs_meta["namespace"],
            rs_meta["name"],
            lambda o: o["spec"].__setitem__("replicas", replicas),
            MANAGER,
        )
        rs["spec"]["replicas"] = replicas
        direction = "up" if replicas > current else "down"
        self.recorder.emit(
            d,
            "Normal",
            "ScalingReplicaSet",
            f"Scaled {direction} replica set {rs_meta['name']} to {replicas} from {current}",
            "deployment-controller",
        )

    def _roll(
        self,
        d: dict[str, Any],
        new_rs: dict[str, Any],
        old: list[dict[str, Any]],
        desired: int,
        surge: int,
        unavailable: int,
    ) -> None:
        """Upstream's rolloutRolling: scale the new ReplicaSet up within maxSurge, then the old ones down
        within maxUnavailable, cleaning up unhealthy old replicas first."""

        def spec_replicas(rs: dict[str, Any]) -> int:
            return int(rs["spec"].get("replicas", 0))

        def available(rs: dict[str, Any]) -> int:
            return int((rs.get("status") or {}).get("availableReplicas", 0))

        everyone = [new_rs] + old
        new_count = spec_replicas(new_rs)
        if new_count > desired:
            self._scale(d, new_rs, desired)
        elif new_count < desired:
            room = desired + surge - sum(spec_replicas(rs) for rs in everyone)
            if room > 0:
                self._scale(d, new_rs, new_count + min(room, desired - new_count))
        min_available = desired - unavailable
        new_unavailable = spec_replicas(new_rs) - available(new_rs)
        max_down = sum(spec_replicas(rs) for rs in everyone) - min_available - new_unavailable
        if max_down <= 0:
            return
        cleaned = 0
        for rs in sorted(old, key=lambda r: r["metadata"]["creationTimestamp"]):
            unhealthy = spec_replicas(rs) - available(rs)
            if cleaned >= max_down or unhealthy <= 0:
                continue
            down = min(max_down - cleaned, unhealthy)
            self._scale(d, rs, spec_replicas(rs) - down)
            cleaned += down
        budget = sum(min(available(rs), spec_replicas(rs)) for rs in everyone) - min_available
        for rs in sorted(old, key=lambda r: r["metadata"]["creationTimestamp"]):
            if budget <= 0:
                break
            down = min(spec_replicas(rs), budget)
            if down > 0:
                self._scale(d, rs, spec_replicas(rs) - down)
                budget -= down

    def _deployment_status(
        self, d: dict[str, Any], new_rs: dict[str, Any], created_new: bool, desired: int, unavailable: int
    ) -> None:
        meta, spec = d["metadata"], d["spec"]
        owned = [
            rs for rs in self.store.list(REPLICASETS, meta["namespace"])[0] if _owned_by(rs, meta["uid"])
        ]
        new_status = next(
            (rs.get("status") or {} for rs in owned if rs["metadata"]["name"] == new_rs["metadata"]["name"]),
            {},
        )

        def total(key: str) -> int:
            return sum(int((rs.get("status") or {}).get(key, 0)) for rs in owned)

        counts = {
            "replicas": total("replicas"),
            "updatedReplicas": int(new_status.get("replicas", 0)),
            "readyReplicas": total("readyReplicas"),
            "availableReplicas": total("availableReplicas"),
            "unavailableReplicas": max(desired - total("availableReplicas"), 0),
        }
        old_status = d.get("status") or {}
        now = now_ts()
        conditions = {c["type"]: c for c in old_status.get("conditions") or []}
        rs_name = new_rs["metadata"]["name"]

        def set_cond(kind: str, status: str, reason: str, message: str, touch: bool) -> None:
            before = conditions.get(kind)
            same = before is not None and before["status"] == status and before.get("reason") == reason
            conditions[kind] = {
                "type": kind,
                "status": status,
                "lastUpdateTime": now if (touch or not same) else before["lastUpdateTime"],
                "lastTransitionTime": before["lastTransitionTime"]
                if before and before["status"] == status
                else now,
                "reason": reason,
                "message": message,
            }

        if counts["availableReplicas"] >= desired - unavailable:
            set_cond(
                "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.", False
            )
        else:
            set_cond(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                False,
            )
        complete = (
            counts["updatedReplicas"] == desired
            and counts["replicas"] == desired
            and counts["availableReplicas"] == desired
        )
        moved = any(int(old_status.get(k, 0)) != v for k, v in counts.items())
        new_rollout = int(old_status.get("observedGeneration", 0)) < int(meta.get("generation", 1))
        progressing = conditions.get("Progressing")
        if complete:
            set_cond(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                f'ReplicaSet "{rs_name}" has successfully progressed.',
                False,
            )
        elif created_new:
            set_cond(
                "Progressing", "True", "NewReplicaSetCreated", f'Created new replica set "{rs_name}"', True
            )
        elif moved or new_rollout or progressing is None:
            set_cond(
                "Progressing", "True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.', True
            )
        elif progressing["status"] == "True" and progressing["reason"] != "NewReplicaSetAvailable":
            since = datetime.fromisoformat(progressing["lastUpdateTime"].replace("Z", "+00:00"))
            if (datetime.now(UTC) - since).total_seconds() > int(spec.get("progressDeadlineSeconds", 600)):
                set_cond(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    f'ReplicaSet "{rs_name}" has timed out progressing.',
                    True,
                )
        status = dict(
            counts,
            observedGeneration=meta.get("generation", 1),
            conditions=[conditions[k] for k in ("Available", "Progressing") if k in conditions],
        )
        if old_status.get("collisionCount"):
            status["collisionCount"] = old_status["collisionCount"]
        status = _omit_zero(
            status, "replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"
        )
        if status != old_status:
            self.store.mutate(
                DEPLOYMENTS,
                meta["namespace"],
                meta["name"],
                lambda o: o.__setitem__("status", status),
                MANAGER,
                "status",
            )

    # --- ReplicaSet -------------------------------------------------------------------------------------

    def sync_replica_set(self, rs: dict[str, Any]) -> None:
        import copy

        meta, spec = rs["metadata"], rs["spec"]
        ns = meta["namespace"]
        pods = [
            p
            for p in self.store.list(PODS, ns)[0]
            if _owned_by(p, meta["uid"]) and not p["metadata"].get("deletionTimestamp")
        ]
        diff = int(spec.get("replicas", 1)) - len(pods)
        template = spec["template"]
        for _ in range(max(diff, 0)):
            body = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{meta['name']}-{random_suffix()}",
                    "generateName": f"{meta['name']}-",
                    "namespace": ns,
                    "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                    "ownerReferences": [_owner_ref(rs, "ReplicaSet", "apps/v1")],
                },
                "spec": copy.deepcopy(template["spec"]),
            }
            created = self.store.create(PODS, ns, body, MANAGER)
            pods.append(created)
            self.recorder.emit(
                rs,
                "Normal",
                "SuccessfulCreate",
                f"Created pod: {created['metadata']['name']}",
                "replicaset-controller",
            )
        if diff < 0:
            # Like upstream: delete not-ready pods first, then the newest.
            victims = sorted(pods, key=lambda p: (_is_ready(p), _neg_time(p)))[:-diff]
            for pod in victims:
                self.store.delete(PODS, ns, pod["metadata"]["name"])
                pods.remove(pod)
                self.recorder.emit(
                    rs,
                    "Normal",
                    "SuccessfulDelete",
                    f"Deleted pod: {pod['metadata']['name']}",
                    "replicaset-controller",
                )
        ready = sum(1 for p in pods if _is_ready(p))
        status = {
            "replicas": len(pods),
            "fullyLabeledReplicas": len(pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": meta.get("generation", 1),
        }
        status = _omit_zero(status, "fullyLabeledReplicas", "readyReplicas", "availableReplicas")
        if status != rs.get("status"):
            self.store.mutate(
                REPLICASETS, ns, meta["name"], lambda o: o.__setitem__("status", status), MANAGER, "status"
            )

    # --- Job -----------------------------------------------------------------------------------------------

    def sync_job(self, job: dict[str, Any]) -> None:
        import copy

        meta, spec = job["metadata"], job["spec"]
        ns = meta["namespace"]
        old_status = job.get("status") or {}
        if any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in old_status.get("conditions") or []
        ):
            return
        pods = [p for p in self.store.list(PODS, ns)[0] if _owned_by(p, meta["uid"])]
        phases = [(p.get("status") or {}).get("phase") for p in pods]
        succeeded = phases.count("Succeeded")
        failed = phases.count("Failed")
        active = [p for p, phase in zip(pods, phases, strict=True) if phase not in ("Succeeded", "Failed")]
        completions = int(spec.get("completions", 1))
        backoff_limit = int(spec.get("backoffLimit", 6))
        if not active and succeeded < completions and failed <= backoff_limit:
            template = spec["template"]
            body = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{meta['name']}-{random_suffix()}",
                    "generateName": f"{meta['name']}-",
                    "namespace": ns,
                    "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                    "ownerReferences": [_owner_ref(job, "Job", "batch/v1")],
                },
                "spec": copy.deepcopy(template["spec"]),
            }
            created = self.store.create(PODS, ns, body, MANAGER)
            active.append(created)
            self.recorder.emit(
                job,
                "Normal",
                "SuccessfulCreate",
                f"Created pod: {created['metadata']['name']}",
                "job-controller",
            )
        now = now_ts()
        status: dict[str, Any] = {
            "startTime": old_status.get("startTime", now),
            "active": len(active),
            "ready": sum(1 for p in active if _is_ready(p)),
            "succeeded": succeeded,
            "failed": failed,
            "terminating": 0,
            "uncountedTerminatedPods": {},
        }
        status = _omit_zero(status, "active", "succeeded", "failed")

        def conds(reason: str, message: str, kinds: tuple[str, str]) -> list[dict[str, Any]]:
            return [
                {
                    "type": k,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastProbeTime": now,
                    "lastTransitionTime": now,
                }
                for k in kinds
            ]

        if succeeded >= completions:
            status["conditions"] = conds(
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                ("SuccessCriteriaMet", "Complete"),
            )
            status["completionTime"] = now
            self.recorder.emit(job, "Normal", "Completed", "Job completed", "job-controller")
        elif failed > backoff_limit:
            status["conditions"] = conds(
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                ("FailureTarget", "Failed"),
            )
            self.recorder.emit(
                job,
                "Warning",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                "job-controller",
            )
        if status != old_status:
            self.store.mutate(
                JOBS, ns, meta["name"], lambda o: o.__setitem__("status", status), MANAGER, "status"
            )


def _neg_time(pod: dict[str, Any]) -> float:
    stamp = pod["metadata"]["creationTimestamp"]
    return -datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
