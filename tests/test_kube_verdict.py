"""Rollout verdicts over real-shaped API objects (tests/kube_fixtures, `kubectl get -o yaml` output)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.targets.kubernetes.verdict import (
    FAILED,
    PROGRESSING,
    SUCCEEDED,
    daemonset_verdict,
    deployment_verdict,
    find_new_replica_set,
    is_routine_event,
    job_verdict,
    pod_doom,
    pod_verdict,
    statefulset_verdict,
    timeout_reason,
)

FIXTURES = Path(__file__).parent / "kube_fixtures"
ROLLOUT_BEGAN = datetime(2024, 5, 14, 10, 0, 0, tzinfo=UTC)


def load(name: str) -> dict[str, list[dict[str, Any]]]:
    """A fixture file as {kind: [objects]}; a single object file gives one kind."""
    doc = yaml.safe_load((FIXTURES / name).read_text())
    items = doc["items"] if doc.get("kind") == "List" else [doc]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_kind.setdefault(item["kind"], []).append(item)
    return by_kind


def pod(name: str) -> dict[str, Any]:
    return load(name)["Pod"][0]


def judge_deployment(name: str, since: datetime | None = ROLLOUT_BEGAN):
    objs = load(name)
    return deployment_verdict(
        objs["Deployment"][0], objs.get("ReplicaSet", []), objs.get("Pod", []), since=since
    )


# --- Deployments ----------------------------------------------------------------------------------


def test_healthy_rollout_succeeds() -> None:
    verdict = judge_deployment("deployment_healthy.yaml")
    assert verdict.state == SUCCEEDED, verdict.reason
    assert verdict.doomed_pods == []
    assert "2/2 updated, 2/2 ready, 2/2 available" in verdict.progress


def test_new_replica_set_is_found_by_revision_and_owner() -> None:
    objs = load("deployment_healthy.yaml")
    rs = find_new_replica_set(objs["Deployment"][0], objs["ReplicaSet"])
    assert rs is not None and rs["metadata"]["name"] == "web-7b9c6d5f48"
    stranger = dict(
        rs,
        metadata=dict(
            rs["metadata"],
            ownerReferences=[
                dict(rs["metadata"]["ownerReferences"][0], uid="00000000-0000-4000-8000-000000000000")
            ],
        ),
    )
    assert find_new_replica_set(objs["Deployment"][0], [stranger]) is None


def test_stale_generation_is_never_success() -> None:
    # Status looks finished, but it describes generation 2 and the spec is generation 3.
    verdict = judge_deployment("deployment_stale_generation.yaml")
    assert verdict.state == PROGRESSING
    assert "generation 3" in verdict.reason


def test_old_replicas_left_is_not_success() -> None:
    objs = load("deployment_healthy.yaml")
    old_rs = objs["ReplicaSet"][0]
    old_rs["status"]["replicas"] = 1
    verdict = deployment_verdict(objs["Deployment"][0], objs["ReplicaSet"], objs["Pod"], since=ROLLOUT_BEGAN)
    assert verdict.state == PROGRESSING
    assert "1 old replicas left" in verdict.progress


def test_stale_progress_deadline_from_previous_rollout_is_ignored() -> None:
    verdict = judge_deployment("deployment_stale_deadline.yaml")
    assert verdict.state == PROGRESSING, verdict.reason
    # Without knowing when this rollout began, the same condition reads as a failure.
    assert judge_deployment("deployment_stale_deadline.yaml", since=None).state == FAILED


def test_fresh_progress_deadline_exceeded_fails() -> None:
    verdict = judge_deployment("deployment_deadline_exceeded.yaml")
    assert verdict.state == FAILED
    assert "ProgressDeadlineExceeded" in verdict.reason
    assert 'ReplicaSet "web-6f5d4c8b7a" has timed out progressing.' in verdict.reason


def test_every_new_pod_crash_looping_fails_early() -> None:
    verdict = judge_deployment("deployment_crashloop.yaml")
    assert verdict.state == FAILED
    assert verdict.doomed_pods == ["web-6f5d4c8b7a-h5n2w"]
    assert "CrashLoopBackOff" in verdict.reason and '"web"' in verdict.reason
    # The revision-2 pods keep serving; they are not part of the verdict's doom.
    assert "x2kqp" not in " ".join(verdict.doomed_pods)


def test_only_some_new_pods_doomed_is_still_progressing() -> None:
    verdict = judge_deployment("deployment_partially_doomed.yaml")
    assert verdict.state == PROGRESSING
    assert verdict.doomed_pods == ["web-6f5d4c8b7a-h5n2w"]
    assert "CrashLoopBackOff" in verdict.doom_reasons["web-6f5d4c8b7a-h5n2w"]


# --- pod doom signals -------------------------------------------------------------------------------


def test_crash_loop_in_container() -> None:
    reason = pod_doom(pod("pod_crashloop.yaml"))
    assert reason is not None
    assert reason.startswith('container "web" is in CrashLoopBackOff (last exit code 1)')
    assert "back-off 1m20s restarting failed container=web" in reason


def test_crash_loop_in_init_container() -> None:
    reason = pod_doom(pod("pod_init_crashloop.yaml"))
    assert reason is not None and reason.startswith('init container "wait-for-db" is in CrashLoopBackOff')


@pytest.mark.parametrize(
    "fixture",
    [
        "pod_err_image_pull_not_found.yaml",
        "pod_image_pull_backoff_not_found.yaml",
        "pod_image_pull_backoff_manifest_unknown.yaml",
    ],
)
def test_image_not_found_is_doomed(fixture: str) -> None:
    reason = pod_doom(pod(fixture))
    assert reason is not None
    assert reason.startswith('container "web" cannot pull image registry.example.com/shop/web:9e8d7c6')
    assert "not found" in reason


def test_transient_pull_error_is_not_doomed() -> None:
    assert pod_doom(pod("pod_err_image_pull_transient.yaml")) is None


def test_create_container_config_error_is_doomed() -> None:
    reason = pod_doom(pod("pod_config_error.yaml"))
    assert reason == (
        'container "web" has a bad configuration: '
        'CreateContainerConfigError: configmap "web-config" not found'
    )


def test_config_cache_sync_is_transient() -> None:
    assert pod_doom(pod("pod_config_cache_transient.yaml")) is None


def test_container_cannot_run() -> None:
    reason = pod_doom(pod("pod_cannot_run.yaml"))
    assert reason is not None
    assert reason.startswith('container "web" cannot run (ContainerCannotRun, exit code 127)')
    assert "/app/bin/server" in reason
    # Exit 128 is retried by the runtime.
    assert pod_doom(pod("pod_cannot_run_128.yaml")) is None


def test_phase_failed_is_doomed() -> None:
    reason = pod_doom(pod("pod_phase_failed.yaml"))
    assert reason is not None
    assert reason.startswith("pod phase Failed (Evicted): The node was low on resource: memory.")


def test_healthy_and_starting_pods_are_not_doomed() -> None:
    for p in load("deployment_healthy.yaml")["Pod"]:
        assert pod_doom(p) is None
    assert pod_doom(pod("pod_not_ready.yaml")) is None


# --- StatefulSet, DaemonSet, Job, Pod ---------------------------------------------------------------


def test_statefulset_verdicts() -> None:
    rolled = load("statefulset_rolled.yaml")
    assert statefulset_verdict(rolled["StatefulSet"][0], rolled["Pod"]).state == SUCCEEDED
    rolling = load("statefulset_rolling.yaml")
    verdict = statefulset_verdict(rolling["StatefulSet"][0], rolling["Pod"])
    assert verdict.state == PROGRESSING and "1/2 updated" in verdict.reason
    doomed = load("statefulset_doomed.yaml")
    verdict = statefulset_verdict(doomed["StatefulSet"][0], doomed["Pod"])
    assert verdict.state == FAILED and verdict.doomed_pods == ["queue-1"]
    stale = rolled["StatefulSet"][0]
    stale["metadata"]["generation"] = 6
    assert statefulset_verdict(stale, rolled["Pod"]).state == PROGRESSING


def test_daemonset_verdicts() -> None:
    rolled = load("daemonset_rolled.yaml")
    assert daemonset_verdict(rolled["DaemonSet"][0], rolled["Pod"]).state == SUCCEEDED
    doomed = load("daemonset_doomed.yaml")
    verdict = daemonset_verdict(doomed["DaemonSet"][0], doomed["Pod"])
    assert verdict.state == FAILED
    assert verdict.doomed_pods == ["agent-w8fzr"]
    # Only one of three pods is doomed, and for a DaemonSet that is enough.
    assert "1/3 pods doomed" in verdict.reason


def test_job_verdicts() -> None:
    ok = load("job_succeeded.yaml")
    assert job_verdict(ok["Job"][0], ok["Pod"]).state == SUCCEEDED
    failed = load("job_failed.yaml")
    verdict = job_verdict(failed["Job"][0], failed["Pod"])
    assert verdict.state == FAILED
    assert "BackoffLimitExceeded: Job has reached the specified backoff limit" in verdict.reason
    running = load("job_running.yaml")
    assert job_verdict(running["Job"][0], running["Pod"]).state == PROGRESSING
    missing = load("job_image_not_found.yaml")
    verdict = job_verdict(missing["Job"][0], missing["Pod"])
    assert verdict.state == FAILED and "not found" in verdict.reason


def test_job_backoff_limit_exceeded_without_condition() -> None:
    # Between the pod failing and the controller writing the Failed condition, counts already tell.
    job = load("job_running.yaml")["Job"][0]
    job["status"] = {"failed": 1, "startTime": job["status"]["startTime"]}
    verdict = job_verdict(job, [])
    assert verdict.state == FAILED and "backoffLimit 0 exceeded" in verdict.reason


def test_pod_verdicts() -> None:
    assert pod_verdict(pod("pod_ready.yaml")).state == SUCCEEDED
    assert pod_verdict(pod("pod_not_ready.yaml")).state == PROGRESSING
    assert pod_verdict(pod("pod_task_succeeded.yaml")).state == SUCCEEDED
    verdict = pod_verdict(pod("pod_task_failed.yaml"))
    assert verdict.state == FAILED
    assert 'container "web" exited with code 1 (Error)' in verdict.reason
    assert pod_verdict(pod("pod_crashloop.yaml")).state == FAILED


# --- timeouts and events ------------------------------------------------------------------------------


def test_timeout_reason_quotes_the_scheduler() -> None:
    objs = load("deployment_timeout_unschedulable.yaml")
    reason = timeout_reason("Deployment", objs["Deployment"][0], objs["Pod"])
    assert reason.startswith(
        "Deployment web timed out (2/2 available): pods web-6f5d4c8b7a-bd9rs, web-6f5d4c8b7a-fw6lp"
    )
    assert "cannot be scheduled (Unschedulable): 0/3 nodes are available: 3 Insufficient cpu." in reason


def test_timeout_reason_names_the_readiness_probe() -> None:
    objs = load("deployment_timeout_readiness.yaml")
    reason = timeout_reason("Deployment", objs["Deployment"][0], objs["Pod"])
    assert (
        'pod web-6f5d4c8b7a-mzl8c: container "web" never passed its readinessProbe '
        "(httpGet /healthz on port 8080)" in reason
    )


def test_timeout_reason_for_waiting_container() -> None:
    reason = timeout_reason(
        "Pod", pod("pod_err_image_pull_transient.yaml"), [pod("pod_err_image_pull_transient.yaml")]
    )
    assert 'container "web" is waiting (ErrImagePull): rpc error' in reason


def test_routine_events_are_filtered() -> None:
    events = load("events_crashloop.yaml")["Event"]
    notable = [e["reason"] for e in events if not is_routine_event(e)]
    assert notable == ["BackOff", "FailedScheduling"]
