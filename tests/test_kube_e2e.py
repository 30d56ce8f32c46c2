"""The Kubernetes target end to end through the real CLI: a real git repo, a real OCI registry, the real
`conveyor` command in a subprocess, and the in-repo API server (real wire protocol, scripted kubelet).

Deploy, promotion, a failed deploy with automatic rollback, `conveyor rollback`, pre-deploy tasks,
drift in `conveyor status` and `conveyor run`."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sqlite3
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import Registry
from tests.e2e import App
from tests.kube_apiserver.cluster import KubeApi
from tests.kube_apiserver.kubectl import Kubectl

pytest_plugins = ["tests.kube_apiserver.fixture"]

CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: kweb-config
data:
  RELEASE_NOTE: "{note}"
  BUILT_FROM: "${{CONVEYOR_SHORT_SHA}}"
"""
APP = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: kweb
spec:
  replicas: 2
  selector: {{matchLabels: {{app: kweb}}}}
  template:
    metadata: {{labels: {{app: kweb}}}}
    spec:
      containers:
        - name: kweb
          image: {image}:latest
          envFrom: [{{configMapRef: {{name: kweb-config}}}}]
          readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}}}
---
apiVersion: v1
kind: Service
metadata:
  name: kweb
spec:
  selector: {{app: kweb}}
  ports: [{{port: 80, targetPort: 8080}}]
"""
CONFIG = """\
app: kweb
image: {image}
registry: {{insecure: true}}
tasks:
  - name: migrate
    command: [bin/migrate, --to-latest]
environments:
  - name: staging
    target: {{type: kubernetes, kubeconfig: {kubeconfig}, namespace: default, manifests: deploy, timeout: 20}}
    env: {{APP_VERSION: staging}}
  - name: production
    target: {{type: kubernetes, kubeconfig: {kubeconfig}, namespace: production, manifests: deploy, timeout: 20}}
    env: {{APP_VERSION: production}}
    policy: {{require_promotion_from: staging}}
"""


# --- a tiny image pushed straight to the registry (no builder needed: the test kubelet runs no images) ---


def _blob(registry: Registry, repo: str, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = urllib.request.Request(f"http://{registry.host}/v2/{repo}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(start) as response:
        location = response.headers["Location"]
    if location.startswith("/"):
        location = f"http://{registry.host}{location}"
    # append the digest to the upload URL's own query (its _state must be kept)
    url = f"{location}{'&' if '?' in location else '?'}digest={digest}"
    put = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(put).close()
    return {"digest": digest, "size": len(data)}


def push_image(registry: Registry, repo: str, tag: str, content: str) -> str:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = content.encode()
        info = tarfile.TarInfo("version.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers",
                                    "diff_ids": ["sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()]}}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(registry, repo, config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(registry, repo, layer)}],
    }
    request = urllib.request.Request(
        f"http://{registry.host}/v2/{repo}/manifests/{tag}", data=json.dumps(manifest).encode(), method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request) as response:
        return str(response.headers["Docker-Content-Digest"])


# --- the app ------------------------------------------------------------------------------------------------


class KubeApp(App):
    kube: KubeApi
    image: str
    shas: dict[str, str]
    digests: dict[str, str]

    def live_image(self, namespace: str = "default") -> str:
        deployment = self.kube.get("Deployment", "kweb", namespace)
        assert deployment is not None
        return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])

    def note(self, namespace: str = "default") -> str:
        config = self.kube.get("ConfigMap", "kweb-config", namespace)
        assert config is not None
        return str(config["data"]["RELEASE_NOTE"])

    def confirm_with_kubectl(self, version: str, namespace: str = "default", config_version: str = "") -> None:
        """What the cluster holds, seen through kubectl (another client, with its own token): the
        Deployment runs `version`'s image by digest, applied by field manager conveyor, and the ConfigMap
        holds `config_version`'s note (default: the same version's)."""
        kubectl = Kubectl(self.kube.kubeconfig_path, self.home.parent / "kubectl-home")
        kubectl.confirm_workload("deployment", "kweb", namespace, f"{self.image}@{self.digests[version]}")
        config = kubectl.get_json("configmap", "kweb-config", "-n", namespace)
        assert config["data"]["RELEASE_NOTE"] == f"release {config_version or version}"

    def events(self, step: str | None = None) -> list[tuple[str, str, str]]:
        with sqlite3.connect(self.home / "ledger.db") as db:
            rows = db.execute("SELECT step, status, message FROM events ORDER BY id").fetchall()
        return [(s, st, m) for s, st, m in rows if step is None or s == step]


@pytest.fixture
def kapp(tmp_path: Path, registry: Registry, kube_api: KubeApi) -> KubeApp:
    import subprocess

    repo = tmp_path / "kweb"
    repo.mkdir()
    image_repo = f"kweb-{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:10]}"
    image = f"{registry.host}/{image_repo}"
    # conveyor authenticates with a client certificate here (the target tests use the token)
    (repo / "conveyor.yml").write_text(CONFIG.format(image=image, kubeconfig=kube_api.cert_kubeconfig_path))
    (repo / "deploy").mkdir()

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)
        return done.stdout.strip()

    git("init", "-q", "-b", "main")
    git("config", "user.name", "Kube Dev")
    git("config", "user.email", "kube@example.com")
    (repo / "deploy" / "app.yaml").write_text(APP.format(image=image))
    shas, digests = {}, {}
    for version in ("v1", "v2", "bad"):
        (repo / "deploy" / "config.yaml").write_text(CONFIGMAP.format(note=f"release {version}"))
        git("add", "-A")
        git("commit", "-q", "-m", version)
        git("tag", version)
        shas[version] = git("rev-parse", "HEAD")
        digests[version] = push_image(registry, image_repo, shas[version], f"kweb {version}")
    kube_api.store.create(kube_api.store_resource("Namespace"), "", {"metadata": {"name": "production"}}, "admin")
    app = KubeApp(repo, tmp_path / "home", {})
    app.kube, app.image, app.shas, app.digests = kube_api, image, shas, digests
    return app


def test_deploy_and_promote_apply_the_commits_manifests_pinned_to_the_digest(kapp: KubeApp) -> None:
    result = kapp.ok("deploy", "staging", "v1")
    assert kapp.live_image() == f"{kapp.image}@{kapp.digests['v1']}"
    assert kapp.note() == "release v1"
    assert "Deployment/kweb rolled out: 2/2 updated, 2/2 ready, 2/2 available" in result.err
    assert "result: succeeded" in result.err
    assert "staging#1 deploy succeeded" in result.out

    kapp.ok("deploy", "staging", "v2")
    assert kapp.live_image() == f"{kapp.image}@{kapp.digests['v2']}" and kapp.note() == "release v2"
    promoted = kapp.ok("promote", "--json").json()
    assert promoted["kind"] == "promote" and promoted["digest"] == kapp.digests["v2"]
    assert kapp.live_image("production") == f"{kapp.image}@{kapp.digests['v2']}"
    assert kapp.note("production") == "release v2"  # the promoted commit's manifests, not the working tree's
    status = kapp.status()
    assert status["staging"]["drift"] is False and status["production"]["drift"] is False
    assert status["production"]["serving"] == f"{kapp.image}@{kapp.digests['v2']}"
    assert [r["status"] for r in kapp.history("staging")] == ["succeeded", "succeeded"]
    kapp.confirm_with_kubectl("v2")
    kapp.confirm_with_kubectl("v2", "production")


def test_failed_deploy_is_rolled_back_automatically_and_both_outcomes_recorded(kapp: KubeApp) -> None:
    # No pre-deploy task here: the test kubelet would crash-loop the task pod of the bad image too, and a
    # failed task stops the operation before the rollout this test is about.
    # The commits' own config runs the task: this test ships them with an explicit, recorded override.
    override = kapp.repo / "no-tasks.yml"
    override.write_text((kapp.repo / "conveyor.yml").read_text().replace(
        "    env: {APP_VERSION: staging}", "    env: {APP_VERSION: staging}\n    tasks: []"))
    kapp.ok("--config", str(override), "deploy", "staging", "v1")
    kapp.kube.behave(f"{kapp.image}@{kapp.digests['bad']}", "crashloop")
    result = kapp.run("--config", str(override), "deploy", "staging", "bad")
    assert result.code == 1, result.err
    assert "CrashLoopBackOff" in result.err
    assert "automatically rolled back to staging#1, which serves again" in result.err
    # image AND config are back to release #1's
    assert kapp.live_image() == f"{kapp.image}@{kapp.digests['v1']}"
    assert kapp.note() == "release v1"
    failed, first = kapp.history("staging")
    assert failed["status"] == "failed" and "rollout failed: Deployment kweb: 1/1 pods doomed" in failed["error"]
    assert first["status"] == "succeeded"
    assert failed["config_source"] == first["config_source"] == f"--config {override}"
    assert kapp.status()["staging"]["live"]["number"] == 1
    steps = [(s, st) for s, st, _ in kapp.events()]
    assert ("auto-rollback", "started") in steps and ("auto-rollback", "ok") in steps
    summary = [m for s, _, m in kapp.events("summary")]
    results = [line for line in summary if line.startswith("result: ")]
    # deploy #1, the failed #2, then #1's spec re-applied and verified the same way
    assert results[0] == "result: succeeded" and results[2] == "result: succeeded"
    assert results[1].startswith("result: failed: Deployment kweb: 1/1 pods doomed")
    failed_summary = summary[summary.index(results[1]):]
    assert any("Warning BackOff" in line for line in failed_summary)
    assert any(line.startswith("  | error: could not connect to database") for line in failed_summary)
    kapp.confirm_with_kubectl("v1")


def test_rollback_reapplies_the_stored_manifests_and_image(kapp: KubeApp) -> None:
    kapp.ok("deploy", "staging", "v1")
    kapp.ok("deploy", "staging", "v2")
    (kapp.repo / "conveyor.yml").write_text((kapp.repo / "conveyor.yml").read_text().replace(
        "APP_VERSION: staging", "APP_VERSION: changed-later"))
    kapp.git("commit", "-qam", "change the config after the release")
    rollback = kapp.ok("rollback", "staging", "--json").json()
    assert rollback["kind"] == "rollback" and rollback["digest"] == kapp.digests["v1"]
    assert kapp.live_image() == f"{kapp.image}@{kapp.digests['v1']}" and kapp.note() == "release v1"
    deployment = kapp.kube.get("Deployment", "kweb")
    assert deployment is not None
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "APP_VERSION", "value": "staging"} in env  # the stored spec, not today's config
    assert deployment["metadata"]["annotations"]["conveyor.dev/release"] == "staging#3"
    kapp.confirm_with_kubectl("v1")


def test_pre_deploy_task_runs_first_and_a_failing_one_stops_the_deploy(kapp: KubeApp) -> None:
    result = kapp.ok("deploy", "staging", "v1")
    assert "task: running bin/migrate --to-latest" in result.err
    assert result.err.index("pod: kweb-staging-task-migrate") < result.err.index("apply: Deployment/kweb")
    messages = [m for _, _, m in kapp.events("task")]
    assert "running bin/migrate --to-latest" in messages
    kapp.kube.behave(f"{kapp.image}@{kapp.digests['v2']}", "fails", exit_code=9, logs=["migration 7 failed"])
    failed = kapp.run("deploy", "staging", "v2")
    assert failed.code == 1 and "task migrate exited with 9" in failed.err
    assert kapp.live_image() == f"{kapp.image}@{kapp.digests['v1']}"  # the main apply never happened
    assert kapp.history("staging")[0]["status"] == "failed"
    # ConfigMaps go in before the tasks (so a task can read them): v2's is there, v1's Deployment still runs
    kapp.confirm_with_kubectl("v1", config_version="v2")


def test_status_reports_drift_after_a_hand_edit(kapp: KubeApp) -> None:
    kapp.ok("deploy", "staging", "v1")
    assert kapp.status()["staging"]["drift"] is False
    deployments = kapp.kube.store_resource("Deployment")
    kapp.kube.store.mutate(deployments, "default", "kweb", lambda d: d["spec"]["template"]["spec"]["containers"][0]
                           .update(image=f"{kapp.image}:hotfix-by-hand"), "kubectl-edit")
    row = kapp.status()["staging"]
    assert row["drift"] is True and row["serving"] == f"{kapp.image}:hotfix-by-hand"
    assert "production" in kapp.status() and kapp.status()["production"]["live"] is None
    kubectl = Kubectl(kapp.kube.kubeconfig_path, kapp.home.parent / "kubectl-home")
    edited = kubectl.get_json("deployment", "kweb")
    assert edited["spec"]["template"]["spec"]["containers"][0]["image"] == f"{kapp.image}:hotfix-by-hand"
    assert {e["manager"] for e in edited["metadata"]["managedFields"]} >= {"conveyor", "kubectl-edit"}


def test_conveyor_run_streams_output_and_passes_the_exit_code(kapp: KubeApp) -> None:
    refused = kapp.run("run", "staging", "--", "bin/console")
    assert refused.code == 2 and "no live release" in refused.err
    kapp.ok("deploy", "staging", "v1")
    kapp.kube.behave(f"{kapp.image}@{kapp.digests['v1']}", "fails", exit_code=4, logs=["42 users", "check failed"])
    result = kapp.run("run", "staging", "--", "bin/console", "--check", "-v")
    assert result.code == 4, result.err
    assert result.out == "42 users\ncheck failed\n"  # the command's output on stdout, conveyor's on stderr
    assert "running with staging#1" in result.err
    assert kapp.kube.wait_for(lambda: not [p for p in kapp.kube.list("Pod") if "-run-" in p["metadata"]["name"]])
    ran = kapp.events("run")
    assert [st for _, st, _ in ran] == ["started", "failed"] and "exited with 4" in ran[-1][2]
    assert ran[-1][2].startswith("bin/console with staging#1")  # the `--` separator is not part of the command
    kapp.kube.behave(f"{kapp.image}@{kapp.digests['v1']}", "succeeds", logs=["ok"])
    assert kapp.run("run", "staging", "--", "true").code == 0
    kapp.confirm_with_kubectl("v1")


def test_a_kubeconfig_trusting_the_wrong_ca_is_refused_in_one_line(kapp: KubeApp) -> None:
    kube = kapp.kube
    kube.cert_kubeconfig_path.write_text(yaml.safe_dump(kube.kubeconfig(credentials="client-certificate-data",
                                                                        ca="wrong")))
    result = kapp.run("deploy", "staging", "v1")
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        f"error: TLS: the certificate of the cluster at {kube.url} does not verify against the kubeconfig's "
        "certificate-authority: self-signed certificate in certificate chain"]
    assert kapp.history("staging") == [] or kapp.history("staging")[0]["status"] != "succeeded"


def test_help_does_not_import_the_kubernetes_client() -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom conveyor.cli.main import cli\n"
            "try:\n    cli.main(['--help'], standalone_mode=False)\n"
            "finally:\n    print('kubernetes' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "Usage:" in out.stdout and out.stderr.strip() == "False"
