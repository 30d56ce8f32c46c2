"""The Kubernetes target against a REAL cluster (kind), where one is reachable: TLS, a real kubelet, real
image pulls. Skipped, with the reason, everywhere else (no kube-apiserver can run on the development
machines; see /work/shared/MACHINE.md and docs/kubernetes.md).

Run it where Docker and a network exist:

    kind create cluster --name conveyor
    CONVEYOR_KIND_CONTEXT=kind-conveyor .venv/bin/pytest tests/test_kube_kind.py

It deploys busybox (pulled from Docker Hub, pinned to its digest) into a fresh namespace, fails a deploy
with an image that does not exist (early failure, not a timeout), re-applies the previous spec, runs a
pre-deploy task and `conveyor run`, and deletes the namespace afterwards.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.config.loader import parse_config
from conveyor.targets.base import Artifact
from conveyor.targets.kubernetes.target import Kubernetes

IMAGE_REPO = "docker.io/library/busybox"
IMAGE_TAG = "1.36"


def _kind_context() -> tuple[str | None, str | None, str]:
    """(kubeconfig, context) of a reachable kind cluster, or Nones and why not."""
    kubeconfig = os.environ.get("CONVEYOR_KIND_KUBECONFIG") or os.environ.get("KUBECONFIG") or str(
        Path.home() / ".kube" / "config")
    if not Path(kubeconfig.split(os.pathsep)[0]).expanduser().is_file():
        return None, None, f"no kubeconfig at {kubeconfig} (create a kind cluster, or set CONVEYOR_KIND_KUBECONFIG)"
    try:
        import yaml

        data = yaml.safe_load(Path(kubeconfig.split(os.pathsep)[0]).expanduser().read_text()) or {}
    except Exception as exc:
        return None, None, f"unreadable kubeconfig {kubeconfig}: {exc}"
    contexts = [c["name"] for c in data.get("contexts") or []]
    wanted = os.environ.get("CONVEYOR_KIND_CONTEXT") or next((c for c in contexts if c.startswith("kind-")), None)
    if wanted is None or wanted not in contexts:
        return None, None, f"no kind-* context in {kubeconfig} (contexts: {contexts or 'none'})"
    from conveyor.targets.kubernetes.client import load_configuration

    try:
        from kubernetes import client

        configuration, _ = load_configuration({"kubeconfig": kubeconfig, "context": wanted})
        client.VersionApi(client.ApiClient(configuration)).get_code(_request_timeout=3)
    except Exception as exc:
        return None, None, f"context {wanted} is not reachable: {type(exc).__name__}: {exc}"
    return kubeconfig, wanted, ""


KUBECONFIG, CONTEXT, WHY_NOT = _kind_context()
pytestmark = pytest.mark.skipif(KUBECONFIG is None, reason=f"no real cluster (kind) reachable: {WHY_NOT}")


def _digest(tag: str) -> str:
    from conveyor.registry.client import Registry

    registry = Registry(IMAGE_REPO)
    try:
        found = registry.digest_for_tag(tag)
    finally:
        registry.close()
    if found is None:
        pytest.skip(f"cannot resolve {IMAGE_REPO}:{tag} (no network to Docker Hub?)")
    return found


MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: docker.io/library/busybox:1.36
          command: [sh, -c, "echo serving $APP_VERSION; exec sleep 3600"]
          readinessProbe: {exec: {command: ["true"]}, periodSeconds: 1}
"""


@pytest.fixture
def real(tmp_path: Path) -> Iterator[dict[str, Any]]:
    from kubernetes import client

    from conveyor.targets.kubernetes.client import connect

    namespace = f"conveyor-test-{uuid.uuid4().hex[:8]}"
    repo = tmp_path / "repo"
    (repo / "deploy").mkdir(parents=True)
    (repo / "deploy" / "web.yaml").write_text(MANIFEST)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "web"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True,
                         text=True).stdout.strip()
    session = connect({"kubeconfig": KUBECONFIG, "context": CONTEXT, "in_cluster": False}, tmp_path / "admin")
    core = client.CoreV1Api(session.api)
    core.create_namespace({"metadata": {"name": namespace}})
    config = parse_config(textwrap.dedent(f"""\
        app: web
        image: {IMAGE_REPO}
        tasks: [{{name: migrate, command: [sh, -c, "echo migrating; echo done"], timeout: 120}}]
        environments:
          - name: staging
            target: {{type: kubernetes, kubeconfig: {KUBECONFIG}, context: {CONTEXT}, namespace: {namespace},
                      manifests: deploy, timeout: 180}}
            env: {{APP_VERSION: staging}}
        """))
    target = Kubernetes(tmp_path / "home", repo)
    yield {"target": target, "config": config, "sha": sha, "core": core, "namespace": namespace}
    target.close()
    core.delete_namespace(namespace)
    session.close()


def test_deploy_fail_fast_reapply_task_and_run_on_a_real_cluster(real: dict[str, Any]) -> None:
    target: Kubernetes = real["target"]
    env = real["config"].environments[0]
    good = Artifact(IMAGE_REPO, real["sha"], _digest(IMAGE_TAG))
    spec = target.render(real["config"], env, good)
    lines: list[str] = []

    def report(step: str, message: str) -> None:
        lines.append(f"{step}: {message}")

    target.preflight(spec)
    target.run_task(spec, spec["tasks"][0], report)
    assert "task: migrating" in lines
    outcome = target.deploy(spec, "staging#1", report)
    assert outcome.succeeded, "\n".join(lines)
    assert target.live("web", "staging", spec).image == good.image

    missing = Artifact(IMAGE_REPO, real["sha"], "sha256:" + "0" * 64)
    started = time.monotonic()
    outcome = target.deploy(target.render(real["config"], env, missing), "staging#2", report)
    assert not outcome.succeeded and "cannot pull image" in outcome.reason
    assert time.monotonic() - started < 120  # an early failure, well before the 180 s timeout

    assert target.deploy(spec, "staging#1", report).succeeded  # what the automatic rollback does
    output: list[str] = []
    code = target.run_command(spec, ["sh", "-c", "echo from-run; exit 3"],
                              lambda step, message: output.append(message) if step == "output" else None)
    assert code == 3 and "from-run" in output
