"""Rollout verdicts over Kubernetes API objects, as plain dicts exactly as the API server returns them.

Pure functions, no client library: the caller lists the objects (Deployment, its ReplicaSets, their
Pods, ...) and asks "succeeded, failed or still progressing, and why?". The rules follow krane, the
strictest tool people use today:

- a status the controller has not caught up with (observedGeneration < generation) is never success;
- a Deployment fails early when EVERY pod of its new ReplicaSet is doomed (crash loop, image not found,
  bad container config, container cannot run, phase Failed): waiting for the progress deadline (Helm's
  behaviour) costs minutes and tells the user nothing more;
- a Progressing=False condition left over from a previous rollout is ignored (it is older than `since`);
- success means every desired replica is updated, ready and available and no old replica is left.

The API server omits zero-valued integers from status (`omitempty`), so a missing count means 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SUCCEEDED = "succeeded"
FAILED = "failed"
PROGRESSING = "progressing"

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"

# Pull errors that say the image does not exist; anything else (timeouts, auth hiccups, rate limits) may
# pass on the next try, so it does not doom the pod.
_IMAGE_MISSING = re.compile(r"not found|manifest unknown|repository does not exist", re.IGNORECASE)

# Events that say nothing a user needs when a rollout fails: filtered out of failure summaries.
ROUTINE_EVENT_REASONS = frozenset(
    {"Scheduled", "Pulling", "Pulled", "Created", "Started", "SuccessfulCreate", "ScalingReplicaSet"}
)


@dataclass
class Verdict:
    """Where one workload's rollout stands."""

    state: str  # SUCCEEDED | FAILED | PROGRESSING
    reason: str = ""  # why it failed, or what it is waiting for
    doomed_pods: list[str] = field(default_factory=list)  # names of pods that can never become ready
    # name -> doom reason for every doomed pod, so a summary can quote each one
    doom_reasons: dict[str, str] = field(default_factory=dict)
    progress: str = ""  # counts, e.g. "2/3 updated, 1/3 ready, 1/3 available"

    @property
    def done(self) -> bool:
        return self.state != PROGRESSING

    @property
    def succeeded(self) -> bool:
        return self.state == SUCCEEDED

    @property
    def failed(self) -> bool:
        return self.state == FAILED


# --- small readers ------------------------------------------------------------------------------


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _name(obj: dict[str, Any]) -> str:
    return _meta(obj).get("name", "")


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status") or {}


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("spec") or {}


def _int(value: Any, default: int = 0) -> int:
    return default if value is None else int(value)


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in _status(obj).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def parse_time(value: str | datetime | None) -> datetime | None:
    """API timestamps are RFC 3339 ("2024-05-01T12:00:00Z"); the client's to_dict() gives datetimes."""
    if value is None or value == "":
        return None
    moment = (
        value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    )
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _is_fresh(cond: dict[str, Any], since: datetime | None) -> bool:
    """Was this condition written during the current rollout?

    Condition times have whole-second resolution, so `since` is truncated to the second: a condition
    written in the same second the rollout began counts as fresh (a stale one is minutes older).
    """
    if since is None:
        return True
    since = parse_time(since)
    assert since is not None
    times = [parse_time(cond.get(k)) for k in ("lastUpdateTime", "lastTransitionTime")]
    known = [t for t in times if t is not None]
    if not known:
        return True
    return max(known) >= since.replace(microsecond=0)


def _owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    owner_uid = _meta(owner).get("uid")
    for ref in _meta(obj).get("ownerReferences") or []:
        if owner_uid and ref.get("uid") == owner_uid:
            return True
        if (
            not owner_uid
            and ref.get("kind") == owner.get("kind", ref.get("kind"))
            and ref.get("name") == _name(owner)
        ):
            return True
    return False


def _stale(obj: dict[str, Any]) -> str | None:
    """The waiting reason when the controller has not yet observed the latest spec."""
    generation = _int(_meta(obj).get("generation"), 0)
    observed = _status(obj).get("observedGeneration")
    if observed is None or int(observed) < generation:
        return f"waiting for the controller to observe generation {generation} (status is for {observed})"
    return None


# --- pods -----------------------------------------------------------------------------------------


def pod_doom(pod: dict[str, Any]) -> str | None:
    """The reason this pod can never become ready without a new deploy, else None.

    Init containers are checked first: a crash-looping init container blocks the pod just as surely.
    """
    status = _status(pod)
    statuses = [("init container", s) for s in status.get("initContainerStatuses") or []] + [
        ("container", s) for s in status.get("containerStatuses") or []
    ]
    for label, cs in statuses:
        reason = _container_doom(cs)
        if reason:
            return f'{label} "{cs.get("name", "?")}" {reason}'
    if status.get("phase") == "Failed":
        why = status.get("reason") or "Failed"
        message = status.get("message") or _terminated_summary(statuses)
        return f"pod phase Failed ({why}){': ' + message if message else ''}"
    return None


def _container_doom(cs: dict[str, Any]) -> str | None:
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason", "")
    message = waiting.get("message", "")
    if reason == "CrashLoopBackOff":
        last = (cs.get("lastState") or {}).get("terminated") or {}
        exit_code = last.get("exitCode")
        exit_part = f" (last exit code {exit_code})" if exit_code is not None else ""
        return f"is in CrashLoopBackOff{exit_part}: {message or 'restarting failed container'}"
    if reason in ("ErrImagePull", "ImagePullBackOff") and _IMAGE_MISSING.search(message):
        return f"cannot pull image {cs.get('image', '')}: {reason}: {message}"
    if reason == "CreateContainerConfigError":
        # The kubelet reports this transiently while its configmap/secret cache warms up.
        lowered = message.lower()
        if "failed to sync" in lowered and "cache" in lowered:
            return None
        return f"has a bad configuration: CreateContainerConfigError: {message}"
    for terminated in (state.get("terminated"), (cs.get("lastState") or {}).get("terminated")):
        # Exit 128 is what the runtime reports for failures it retries (e.g. a busy device).
        if (
            terminated
            and terminated.get("reason") == "ContainerCannotRun"
            and terminated.get("exitCode") != 128
        ):
            return (
                f"cannot run (ContainerCannotRun, exit code {terminated.get('exitCode')}): "
                f"{terminated.get('message', '')}"
            )
    return None


def _terminated_summary(statuses: list[tuple[str, dict[str, Any]]]) -> str:
    for label, cs in statuses:
        terminated = (cs.get("state") or {}).get("terminated") or {}
        if terminated and terminated.get("exitCode", 0) != 0:
            code, why = terminated["exitCode"], terminated.get("reason")
            return f'{label} "{cs.get("name")}" exited with code {code} ({why})'
    return ""


def _doomed(pods: Iterable[dict[str, Any]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for pod in pods:
        reason = pod_doom(pod)
        if reason:
            found[_name(pod)] = reason
    return found


def _doom_text(doomed: dict[str, str], total: int) -> str:
    first_name, first_reason = next(iter(doomed.items()))
    more = f" (and {len(doomed) - 1} more)" if len(doomed) > 1 else ""
    return f"{len(doomed)}/{total} pods doomed: pod {first_name}: {first_reason}{more}"


def _is_ready(pod: dict[str, Any]) -> bool:
    cond = _condition(pod, "Ready")
    return bool(cond and cond.get("status") == "True")


# --- workloads ----------------------------------------------------------------------------------


def find_new_replica_set(
    deployment: dict[str, Any], replica_sets: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The ReplicaSet of the Deployment's current revision (the controller copies the number over)."""
    revision = (_meta(deployment).get("annotations") or {}).get(REVISION_ANNOTATION)
    if revision is None:
        return None
    for rs in replica_sets:
        rs_revision = (_meta(rs).get("annotations") or {}).get(REVISION_ANNOTATION)
        if rs_revision == revision and _owned_by(rs, deployment):
            return rs
    return None


def deployment_verdict(
    deployment: dict[str, Any],
    replica_sets: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    since: datetime | None = None,
) -> Verdict:
    """Judge a Deployment rollout; `since` is when this rollout began (older Progressing=False is stale)."""
    stale = _stale(deployment)
    if stale:
        # The revision annotation and counts may still describe the previous rollout: judge nothing.
        return Verdict(PROGRESSING, stale)

    name = _name(deployment)
    status = _status(deployment)
    desired = _int(_spec(deployment).get("replicas"), 1)
    progressing = _condition(deployment, "Progressing")
    deadline_hit = (
        progressing is not None
        and progressing.get("status") == "False"
        and progressing.get("reason") == "ProgressDeadlineExceeded"
        and _is_fresh(progressing, since)
    )

    new_rs = find_new_replica_set(deployment, replica_sets)
    new_pods = [p for p in pods if new_rs is not None and _owned_by(p, new_rs)]
    doomed = _doomed(new_pods)
    updated = _int(status.get("updatedReplicas"))
    ready = _int(status.get("readyReplicas"))
    available = _int(status.get("availableReplicas"))
    total = _int(status.get("replicas"))
    old_left = sum(
        _int(_status(rs).get("replicas"))
        for rs in replica_sets
        if rs is not new_rs and _owned_by(rs, deployment)
    )
    progress = f"{updated}/{desired} updated, {ready}/{desired} ready, {available}/{desired} available"
    if old_left:
        progress += f", {old_left} old replicas left"
    base = Verdict(PROGRESSING, doomed_pods=list(doomed), doom_reasons=doomed, progress=progress)

    if new_pods and len(doomed) == len(new_pods):
        base.state, base.reason = FAILED, f"Deployment {name}: {_doom_text(doomed, len(new_pods))}"
        return base
    if deadline_hit:
        assert progressing is not None
        base.state = FAILED
        base.reason = (
            f"Deployment {name}: ProgressDeadlineExceeded: {progressing.get('message', '')} ({progress})"
        )
        return base

    rs_status = _status(new_rs) if new_rs is not None else {}
    new_rs_done = new_rs is not None and (
        _int(rs_status.get("replicas")) == desired
        and _int(rs_status.get("readyReplicas")) == desired
        and _int(rs_status.get("availableReplicas")) == desired
    )
    if new_rs_done and updated == total == ready == available == desired and old_left == 0:
        base.state, base.reason = SUCCEEDED, f"Deployment {name}: {progress}"
        return base
    if new_rs is None:
        base.reason = f"Deployment {name}: waiting for the new ReplicaSet"
    else:
        base.reason = f"Deployment {name}: {progress}"
    return base


def statefulset_verdict(sts: dict[str, Any], pods: list[dict[str, Any]]) -> Verdict:
    """StatefulSets roll one pod at a time, so ANY doomed pod stops the rollout for good."""
    stale = _stale(sts)
    if stale:
        return Verdict(PROGRESSING, stale)
    name = _name(sts)
    status = _status(sts)
    spec = _spec(sts)
    desired = _int(spec.get("replicas"), 1)
    ready = _int(status.get("readyReplicas"))
    updated = _int(status.get("updatedReplicas"))
    progress = f"{updated}/{desired} updated, {ready}/{desired} ready"
    doomed = _doomed(pods)
    if doomed:
        return Verdict(
            FAILED, f"StatefulSet {name}: {_doom_text(doomed, len(pods))}", list(doomed), doomed, progress
        )

    strategy = spec.get("updateStrategy") or {}
    if strategy.get("type", "RollingUpdate") == "OnDelete":
        # Pods are only replaced when someone deletes them: readiness is all that can be checked.
        done = ready == desired and _int(status.get("replicas")) == desired
    else:
        partition = _int((strategy.get("rollingUpdate") or {}).get("partition"))
        revisions_match = status.get("currentRevision") == status.get("updateRevision")
        if partition:
            done = updated >= desired - partition and ready == desired
        else:
            done = revisions_match and updated == desired and ready == desired
        done = done and _int(status.get("replicas")) == desired
    state = SUCCEEDED if done else PROGRESSING
    return Verdict(state, f"StatefulSet {name}: {progress}", progress=progress)


def daemonset_verdict(ds: dict[str, Any], pods: list[dict[str, Any]]) -> Verdict:
    stale = _stale(ds)
    if stale:
        return Verdict(PROGRESSING, stale)
    name = _name(ds)
    status = _status(ds)
    desired = _int(status.get("desiredNumberScheduled"))
    updated = _int(status.get("updatedNumberScheduled"))
    available = _int(status.get("numberAvailable"))
    ready = _int(status.get("numberReady"))
    progress = f"{updated}/{desired} updated, {ready}/{desired} ready, {available}/{desired} available"
    doomed = _doomed(pods)
    if doomed:
        return Verdict(
            FAILED, f"DaemonSet {name}: {_doom_text(doomed, len(pods))}", list(doomed), doomed, progress
        )
    done = updated == desired and available == desired and ready == desired
    return Verdict(SUCCEEDED if done else PROGRESSING, f"DaemonSet {name}: {progress}", progress=progress)


def job_verdict(job: dict[str, Any], pods: list[dict[str, Any]]) -> Verdict:
    """A Job (e.g. a migration) is done when enough pods succeeded; it fails on its Failed condition,
    on exceeding backoffLimit, or early when every still-active pod is stuck for good (an image that
    does not exist keeps a Job pending forever)."""
    name = _name(job)
    status = _status(job)
    spec = _spec(job)
    completions = _int(spec.get("completions"), 1)
    succeeded = _int(status.get("succeeded"))
    failed = _int(status.get("failed"))
    progress = f"{succeeded}/{completions} succeeded, {failed} failed"
    doomed = _doomed(pods)

    failed_cond = _condition(job, "Failed")
    if failed_cond and failed_cond.get("status") == "True":
        reason = f"Job {name}: {failed_cond.get('reason', 'Failed')}: {failed_cond.get('message', '')}"
        return Verdict(FAILED, reason, list(doomed), doomed, progress)
    complete = _condition(job, "Complete")
    if succeeded >= completions or (complete and complete.get("status") == "True"):
        return Verdict(SUCCEEDED, f"Job {name}: {progress}", progress=progress)
    backoff_limit = _int(spec.get("backoffLimit"), 6)
    if failed > backoff_limit:
        return Verdict(
            FAILED,
            f"Job {name}: backoffLimit {backoff_limit} exceeded ({progress})",
            list(doomed),
            doomed,
            progress,
        )
    active = [p for p in pods if _status(p).get("phase") not in ("Succeeded", "Failed")]
    stuck = {n: r for n, r in doomed.items() if any(_name(p) == n for p in active)}
    if active and len(stuck) == len(active):
        return Verdict(
            FAILED, f"Job {name}: {_doom_text(stuck, len(active))}", list(doomed), doomed, progress
        )
    return Verdict(PROGRESSING, f"Job {name}: {progress}", list(doomed), doomed, progress)


def pod_verdict(pod: dict[str, Any]) -> Verdict:
    """A bare Pod. One that runs to completion (restartPolicy Never/OnFailure, e.g. a migration task)
    succeeds at phase Succeeded; a long-running one (restartPolicy Always) when its Ready condition is
    True."""
    name = _name(pod)
    phase = _status(pod).get("phase", "Pending")
    doom = pod_doom(pod)
    if doom:
        return Verdict(FAILED, f"Pod {name}: {doom}", [name], {name: doom}, phase)
    restart_policy = _spec(pod).get("restartPolicy", "Always")
    done = phase == "Succeeded" if restart_policy in ("Never", "OnFailure") else _is_ready(pod)
    return Verdict(SUCCEEDED if done else PROGRESSING, f"Pod {name}: {phase}", progress=phase)


# --- explaining a timeout and filtering events ----------------------------------------------------


def describe_probe(probe: dict[str, Any]) -> str:
    """'httpGet /healthz on port 8080', 'tcpSocket on port 5432', 'exec [pg_isready]', 'grpc on port 9000'."""
    if "httpGet" in probe:
        http = probe["httpGet"]
        scheme = "https " if str(http.get("scheme", "HTTP")).upper() == "HTTPS" else ""
        return f"httpGet {scheme}{http.get('path', '/')} on port {http.get('port')}"
    if "tcpSocket" in probe:
        return f"tcpSocket on port {probe['tcpSocket'].get('port')}"
    if "exec" in probe:
        return f"exec {' '.join(probe['exec'].get('command') or [])}"
    if "grpc" in probe:
        return f"grpc on port {probe['grpc'].get('port')}"
    return "a probe"


def _pod_timeout_problem(pod: dict[str, Any]) -> str | None:
    scheduled = _condition(pod, "PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        why = scheduled.get("reason", "Unschedulable")
        return f"cannot be scheduled ({why}): {scheduled.get('message', '')}"
    if _status(pod).get("phase") in ("Succeeded",) or _is_ready(pod):
        return None
    specs = {c.get("name"): c for c in _spec(pod).get("containers") or []}
    problems = []
    for cs in _status(pod).get("containerStatuses") or []:
        if cs.get("ready"):
            continue
        cname = cs.get("name")
        state = cs.get("state") or {}
        if "waiting" in state:
            waiting = state["waiting"]
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            problems.append(f'container "{cname}" is waiting ({waiting.get("reason", "")}){detail}')
            continue
        probe = (specs.get(cname) or {}).get("readinessProbe")
        if probe:
            problems.append(f'container "{cname}" never passed its readinessProbe ({describe_probe(probe)})')
        else:
            problems.append(f'container "{cname}" is not ready')
    if not problems:
        return f"is {_status(pod).get('phase', 'Pending')}"
    return "; ".join(problems)


def timeout_reason(kind: str, obj: dict[str, Any], pods: list[dict[str, Any]]) -> str:
    """What to tell the user when a rollout ran out of time: why the pods are not ready.

    Identical problems across pods are grouped ("pods a, b: ...") so a 30-replica Deployment stays readable.
    """
    grouped: dict[str, list[str]] = {}
    for pod in pods:
        problem = _pod_timeout_problem(pod)
        if problem:
            grouped.setdefault(problem, []).append(_name(pod))
    head = f"{kind} {_name(obj)} timed out"
    progress = _status(obj)
    if kind == "Deployment":
        desired = _int(_spec(obj).get("replicas"), 1)
        head += f" ({_int(progress.get('availableReplicas'))}/{desired} available)"
    if not grouped:
        return head if pods else f"{head}: no pods were created"
    parts = []
    for problem, names in grouped.items():
        label = f"pod {names[0]}" if len(names) == 1 else f"pods {', '.join(names)}"
        parts.append(f"{label} {problem}" if problem.startswith(("cannot", "is ")) else f"{label}: {problem}")
    return f"{head}: " + "; ".join(parts)


def is_routine_event(event: dict[str, Any]) -> bool:
    """True for the events every healthy rollout produces; failure summaries leave them out."""
    return event.get("reason") in ROUTINE_EVENT_REASONS
