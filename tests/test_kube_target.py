"""The Kubernetes target against the in-repo API server (real wire protocol, scripted kubelet): render,
auth, apply order, dry run, pruning, pre-deploy tasks, watch-based verification, summary, drift, run."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.config.loader import parse_config
from conveyor.errors import BadInput, ConveyorError, InfrastructureMissing, TargetError
from conveyor.targets.base import Artifact
from conveyor.targets.kubernetes.target import Kubernetes
from tests.kube_apiserver.cluster import KubeApi

pytest_plugins = ["tests.kube_apiserver.fixture"]

REPO = "registry.test/web"

CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config}
data: {GREETING: "hello from ${CONVEYOR_ENV}", LITERAL: "$${CONVEYOR_ENV} and ${HOME} stay"}
"""
SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


def deployment(name: str = "web", image: str = f"{REPO}:latest", replicas: int = 2, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: {name}}}
        spec:
          replicas: {replicas}
          selector: {{matchLabels: {{app: {name}}}}}
          template:
            metadata: {{labels: {{app: {name}}}}}
            spec:
              serviceAccountName: web-runner
              containers:
                - name: {name}
                  image: {image}
                  envFrom: [{{configMapRef: {{name: web-config}}}}]
                  env: [{{name: FROM_MANIFEST, value: "1"}}]
                  readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}}}
                  ports: [{{containerPort: 8080}}]
                - name: sidecar
                  image: registry.test/proxy:1.2
        {extra}""")


APP = {"deploy/config.yaml": CONFIGMAP, "deploy/app.yaml": deployment() + "---\n" + SERVICE}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "config", "user.email", "dev@example.com")
        git(repo, "config", "user.name", "Dev")
    for old in (repo / "deploy").glob("*.yaml") if (repo / "deploy").exists() else []:
        old.unlink()
    for path, text in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


@dataclass
class Reports:
    lines: list[tuple[float, str, str]] = field(default_factory=list)
    hooks: list[Callable[[str, str], None]] = field(default_factory=list)

    def __call__(self, step: str, message: str) -> None:
        self.lines.append((time.monotonic(), step, message))
        for hook in self.hooks:
            hook(step, message)

    def text(self, step: str | None = None) -> str:
        return "\n".join(f"{s}: {m}" for _, s, m in self.lines if step is None or s == step)

    def first(self, step: str) -> float:
        return next(t for t, s, _ in self.lines if s == step)


@dataclass
class Env:
    kube: KubeApi
    repo: Path
    home: Path
    target: Kubernetes
    config_text: str

    def config(self, **target: Any) -> Any:
        text = self.config_text
        if target:
            data = yaml.safe_load(text)
            data["environments"][0]["target"].update(target)
            text = yaml.safe_dump(data)
        return parse_config(text)

    def spec(self, files: dict[str, str] | None = None, seed: str = "v1", env: str = "staging",
             **target: Any) -> dict[str, Any]:
        sha = commit(self.repo, files or APP, seed)
        config = self.config(**target)
        return self.target.render(config, config.environment(env), Artifact(REPO, sha, digest(seed)))


@pytest.fixture
def k8s(kube_api: KubeApi, tmp_path: Path) -> Any:
    config_text = textwrap.dedent(f"""\
        app: web
        image: {REPO}
        tasks:
          - {{name: migrate, command: [bin/migrate, --all], timeout: 20}}
        environments:
          - name: staging
            target: {{type: kubernetes, kubeconfig: {kube_api.kubeconfig_path}, namespace: default,
                      manifests: deploy, timeout: 10}}
            env: {{APP_VERSION: staging}}
            secrets: [DB_PASSWORD]
          - name: production
            target: {{type: kubernetes, kubeconfig: {kube_api.kubeconfig_path}, namespace: default,
                      manifests: deploy}}
        """)
    target = Kubernetes(tmp_path / "home", tmp_path / "repo")
    yield Env(kube_api, tmp_path / "repo", tmp_path / "home", target, config_text)
    target.close()


def image_of(kube: KubeApi, name: str = "web") -> str:
    found = kube.get("Deployment", name)
    assert found is not None
    return found["spec"]["template"]["spec"]["containers"][0]["image"]


# --- 1. config and render -------------------------------------------------------------------------------


def test_render_holds_fully_rendered_pinned_manifests_and_every_setting(k8s: Env) -> None:
    spec = k8s.spec()
    assert spec["target"] == "kubernetes" and spec["namespace"] == "default"
    assert spec["cluster"] == {"kubeconfig": str(k8s.kube.kubeconfig_path), "context": None, "in_cluster": False}
    by_key = {f"{e['kind']}/{e['name']}": e for e in spec["manifests"]}
    assert list(by_key) == ["Deployment/web", "Service/web", "ConfigMap/web-config"]  # files sorted by path
    config = by_key["ConfigMap/web-config"]["object"]
    assert config["data"]["GREETING"] == "hello from staging"
    assert config["data"]["LITERAL"] == "$${CONVEYOR_ENV} and ${HOME} stay"  # unescaped only when sent
    deploy = by_key["Deployment/web"]["object"]
    web, sidecar = deploy["spec"]["template"]["spec"]["containers"]
    assert web["image"] == f"{REPO}@{digest('v1')}"  # the tag was rewritten to the release's digest
    assert sidecar["image"] == "registry.test/proxy:1.2"  # other images are left alone
    assert {"name": "APP_VERSION", "value": "staging"} in web["env"]
    assert deploy["metadata"]["labels"]["conveyor.dev/app"] == "web"
    assert deploy["spec"]["template"]["metadata"]["labels"] == {
        "app": "web", "conveyor.dev/app": "web", "conveyor.dev/env": "staging"}
    assert by_key["Deployment/web"]["timeout"] == 10
    assert any("latest pinned to" in note for note in spec["pinned"])
    task = spec["task_pod"]
    assert task["workload"] == "Deployment/web"
    assert [c["name"] for c in task["spec"]["containers"]] == ["web"]  # no sidecar, no probes, no ports
    assert "readinessProbe" not in task["spec"]["containers"][0] and task["spec"]["restartPolicy"] == "Never"
    assert task["spec"]["serviceAccountName"] == "web-runner"
    assert task["metadata"]["labels"]["conveyor.dev/role"] == "task" and "app" not in task["metadata"]["labels"]
    assert spec["tasks"] == [{"name": "migrate", "command": ["bin/migrate", "--all"], "timeout": 20.0}]
    json.dumps(spec)  # a spec is stored in the ledger as JSON


def test_manifests_come_from_the_commit_not_the_working_tree(k8s: Env) -> None:
    spec = k8s.spec()
    (k8s.repo / "deploy" / "config.yaml").write_text(CONFIGMAP.replace("hello", "uncommitted"))
    sha = git(k8s.repo, "rev-parse", "HEAD")
    config = k8s.config()
    again = k8s.target.render(config, config.environment("staging"), Artifact(REPO, sha, digest("v1")))
    assert again["manifests"] == spec["manifests"]


def test_render_refuses_what_it_cannot_apply_safely(k8s: Env) -> None:
    cases = {
        "unknown placeholder ${CONVEYOR_NOPE}": {"deploy/a.yaml": deployment(image="${CONVEYOR_NOPE}")},
        "names secret 'API_KEY'": {"deploy/a.yaml": deployment() + "---\n" + textwrap.dedent("""\
            apiVersion: v1
            kind: Secret
            metadata: {name: creds}
            stringData: {key: "${CONVEYOR_SECRET_API_KEY}"}
            """)},
        "holds a literal value": {"deploy/a.yaml": deployment() + "---\n" + textwrap.dedent("""\
            apiVersion: v1
            kind: Secret
            metadata: {name: creds}
            stringData: {password: hunter2}
            """)},
        "no container in the manifests runs": {"deploy/a.yaml": SERVICE},
        "names namespace 'other'": {
            "deploy/a.yaml": deployment().replace("{name: web}", "{name: web, namespace: other}", 1)},
        "Namespace objects are not deployed": {"deploy/a.yaml": deployment() + "---\napiVersion: v1\nkind: Namespace\n"
                                                                               "metadata: {name: x}\n"},
        "already defined": {"deploy/a.yaml": deployment(), "deploy/b.yaml": deployment()},
    }
    for expected, files in cases.items():
        with pytest.raises(BadInput) as caught:
            k8s.spec(files)
        assert expected in caught.value.message, caught.value.message
    with pytest.raises(BadInput, match=r"deploy/a.yaml:13: unknown placeholder"):
        k8s.spec(cases["unknown placeholder ${CONVEYOR_NOPE}"])


def test_config_for_kubernetes_targets() -> None:
    base = textwrap.dedent("""\
        app: web
        image: registry.test/web
        environments:
          - name: staging
            target: {type: kubernetes, namespace: web, manifests: k8s, timeouts: {Deployment/web: 60, Job: 900}}
          - name: production
            target: {type: kubernetes, namespace: web, manifests: k8s, in_cluster: true}
          - name: qa
            target: {type: container-host, port: 8001}
          - name: qa2
            target: {port: 8002}
        """)
    config = parse_config(base)
    staging = config.environment("staging").target
    assert staging.type == "kubernetes" and staging.timeouts == {"Deployment/web": 60.0, "Job": 900.0}
    assert config.environment("qa2").target.type == "container-host"  # no type still means container-host
    with pytest.raises(BadInput) as caught:
        parse_config(base.replace("manifests: k8s, in_cluster: true", "manifests: k8s, in_cluster: true, "
                                  "context: prod")
                     .replace("namespace: web, manifests: k8s, timeouts", "namespace: Web, manifests: k8s, timeouts"))
    assert "environments[0].target.namespace" in caught.value.message
    assert "leave kubeconfig and context unset" in caught.value.message
    with pytest.raises(BadInput, match=r"environments\[0\]: .*health: does not apply to a kubernetes target"):
        parse_config(base.replace("timeouts: {Deployment/web: 60, Job: 900}}",
                                  "timeouts: {Deployment/web: 60}}\n    health: {path: /up}"))
    with pytest.raises(BadInput, match="unknown target type 'nomad'"):
        parse_config(base.replace("type: container-host", "type: nomad"))


# --- 2. auth ----------------------------------------------------------------------------------------------

EXEC_PLUGIN = """\
#!{python}
import json, os, sys
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
open({log!r}, "a").write(info["apiVersion"] + "\\n")
if os.environ.get("PLUGIN_FAILS"):
    sys.stderr.write("error: SSO session expired; run `aws sso login`\\n")
    sys.exit(1)
print(json.dumps({{"apiVersion": info["apiVersion"], "kind": "ExecCredential",
                  "status": {{"token": {token!r}, "expirationTimestamp": "2099-01-01T00:00:00Z"}}}}))
"""


def _exec_kubeconfig(kube: KubeApi, tmp_path: Path, api_version: str, fails: bool = False) -> Path:
    plugin = tmp_path / "get-token"
    plugin.write_text(EXEC_PLUGIN.format(python=sys.executable, log=str(tmp_path / "plugin.log"), token=kube.token))
    plugin.chmod(0o755)
    config = kube.kubeconfig("eks-like")
    exec_config: dict[str, Any] = {"apiVersion": api_version, "command": str(plugin), "args": ["token", "-i", "web"],
                                   "interactiveMode": "Never"}
    if fails:
        exec_config["env"] = [{"name": "PLUGIN_FAILS", "value": "1"}]
    config["users"][0]["user"] = {"exec": exec_config}
    path = tmp_path / f"kubeconfig-{api_version.rsplit('/', 1)[1]}"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("api_version", ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"])
def test_exec_credential_plugin(k8s: Env, tmp_path: Path, api_version: str) -> None:
    kubeconfig = _exec_kubeconfig(k8s.kube, tmp_path, api_version)
    spec = k8s.spec(kubeconfig=str(kubeconfig))
    k8s.target.preflight(spec)
    assert k8s.target.deploy(spec, "staging#1", Reports()).succeeded
    assert (tmp_path / "plugin.log").read_text().splitlines()[0] == api_version


def test_a_failing_exec_plugin_is_reported_with_its_message(k8s: Env, tmp_path: Path,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    kubeconfig = _exec_kubeconfig(k8s.kube, tmp_path, "client.authentication.k8s.io/v1", fails=True)
    spec = k8s.spec(kubeconfig=str(kubeconfig))
    with pytest.raises(InfrastructureMissing) as caught:
        k8s.target.preflight(spec)
    assert "context eks-like: getting credentials failed" in caught.value.message
    assert "SSO session expired" in caught.value.message
    assert not any(r.method != "GET" or "/namespaces" in r.path for r in k8s.kube.requests)  # nothing sent
    assert "exec:" not in capfd.readouterr().err  # the client's log line did not leak to the terminal


def test_token_auth_and_context_choice(k8s: Env, tmp_path: Path) -> None:
    config = k8s.kube.kubeconfig("good")
    bad = k8s.kube.kubeconfig("bad")
    bad["users"][0]["user"]["token"] = "not-the-token"
    config["clusters"] += bad["clusters"]
    config["users"] += bad["users"]
    config["contexts"] += bad["contexts"]
    config["current-context"] = "bad"
    path = tmp_path / "two-contexts"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConveyorError, match="Unauthorized"):
        k8s.target.preflight(k8s.spec(kubeconfig=str(path)))
    k8s.target.preflight(k8s.spec(kubeconfig=str(path), context="good"))
    with pytest.raises(InfrastructureMissing, match="no kubeconfig"):
        k8s.target.preflight(k8s.spec(kubeconfig=str(tmp_path / "missing")))


def test_in_cluster_service_account_and_client_certificates_are_loaded(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Configuration only: the in-cluster service account needs a pod. The kubeconfig's certificates are
    exercised on the wire by the TLS tests below."""
    from kubernetes.config import incluster_config

    from conveyor.targets.kubernetes.client import load_configuration

    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-token-123")
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    configuration, context = load_configuration({"in_cluster": True})
    assert configuration.host == "https://10.96.0.1:443" and context == "in-cluster"
    assert configuration.api_key["BearerToken"].lower() == "bearer sa-token-123"

    pem = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://k8s.example:6443",
                                               "certificate-authority-data": pem}}],
        "users": [{"name": "c", "user": {"client-certificate-data": pem, "client-key-data": pem}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "c"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    configuration, context = load_configuration({"kubeconfig": str(path), "context": None})
    assert context == "c" and configuration.host == "https://k8s.example:6443"
    assert Path(configuration.cert_file).read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    assert configuration.key_file and configuration.ssl_ca_cert


@pytest.mark.parametrize(("credentials", "ca", "user"), [
    ("token", "data", "conveyor-admin"),
    ("token", "file", "conveyor-admin"),
    ("client-certificate-data", "data", "deployer-by-cert"),
    ("client-certificate-files", "file", "ci-by-cert-file"),
])
def test_tls_with_the_kubeconfigs_ca_and_each_kind_of_credential(k8s: Env, tmp_path: Path, credentials: str,
                                                                 ca: str, user: str) -> None:
    path = tmp_path / "kubeconfig-tls"
    path.write_text(yaml.safe_dump(k8s.kube.kubeconfig(credentials=credentials, ca=ca, user=user)))
    spec = k8s.spec(kubeconfig=str(path))
    k8s.target.preflight(spec)
    assert spec["cluster"]["kubeconfig"] == str(path) and k8s.kube.url.startswith("https://")
    seen = {r.user for r in k8s.kube.requests if r.path != "/healthz"}
    assert seen == {user}  # the token's user, or the client certificate's CN
    if credentials == "client-certificate-data":  # and a whole deploy over it
        assert k8s.target.deploy(spec, "staging#1", Reports()).succeeded


def test_an_unknown_client_certificate_or_token_is_unauthorized(k8s: Env, tmp_path: Path) -> None:
    config = k8s.kube.kubeconfig(credentials="client-certificate-data")
    config["users"][0]["user"]["token"] = "not-the-token"  # a wrong token is refused despite a good cert
    path = tmp_path / "kubeconfig-bad-token"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(TargetError, match="Unauthorized"):
        k8s.target.preflight(k8s.spec(kubeconfig=str(path)))


@pytest.mark.parametrize(("case", "expected"), [
    ("wrong-ca", "does not verify against the kubeconfig's certificate-authority: self-signed certificate "
                 "in certificate chain"),
    ("expired-server-certificate", "does not verify against the kubeconfig's certificate-authority: "
                                   "certificate has expired"),
    ("expired-client-certificate", "refused the handshake: certificate expired (check the kubeconfig's "
                                   "client certificate)"),
])
def test_a_wrong_ca_or_an_expired_certificate_is_bad_input_in_one_line(k8s: Env, tmp_path: Path, case: str,
                                                                       expected: str) -> None:
    kube = k8s.kube
    if case == "expired-server-certificate":
        kube = KubeApi(tmp_path, expired_certificate=True)
    try:
        config = kube.kubeconfig(ca="wrong" if case == "wrong-ca" else "data",
                                 credentials="client-certificate-data",
                                 expired_client_certificate=case == "expired-client-certificate")
        path = tmp_path / f"kubeconfig-{case}"
        path.write_text(yaml.safe_dump(config))
        with pytest.raises(BadInput) as caught:
            k8s.target.preflight(k8s.spec(kubeconfig=str(path)))
    finally:
        if kube is not k8s.kube:
            kube.close()
    assert caught.value.exit_code == 2
    assert caught.value.message == f"TLS: the {'certificate of the ' if 'verify' in expected else ''}cluster at " \
                                   f"{kube.url} {expected}"
    assert "\n" not in caught.value.message
    assert not [r for r in kube.requests if r.path != "/healthz"]  # refused before any request was read


# --- 3. apply --------------------------------------------------------------------------------------------

PRIORITY = textwrap.dedent("""\
    apiVersion: v1
    kind: ResourceQuota
    metadata: {name: web-quota}
    spec: {hard: {pods: "20"}}
    ---
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: web-netpol}
    spec: {podSelector: {matchLabels: {app: web}}}
    ---
    apiVersion: v1
    kind: PersistentVolumeClaim
    metadata: {name: web-data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: RoleBinding
    metadata: {name: web-runner}
    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: web-runner}
    subjects: [{kind: ServiceAccount, name: web-runner}]
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: Role
    metadata: {name: web-runner}
    rules: [{apiGroups: [""], resources: [configmaps], verbs: [get]}]
    ---
    apiVersion: v1
    kind: ServiceAccount
    metadata: {name: web-runner}
    ---
    apiVersion: v1
    kind: Secret
    metadata: {name: web-secret}
    stringData: {DB_PASSWORD: "${CONVEYOR_SECRET_DB_PASSWORD}"}
    """)


def _writes(kube: KubeApi) -> list[tuple[str, str, bool]]:
    """(method, path, dry run) of every write, in order."""
    return [(r.method, r.path, r.query.get("dryRun") == "All") for r in kube.requests
            if r.method in ("PATCH", "POST", "PUT", "DELETE")]


def test_dry_run_then_krane_order_then_tasks_then_the_rest(k8s: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_PASSWORD", "hunter2-secret")
    spec = k8s.spec({**APP, "deploy/priority.yaml": PRIORITY})
    assert "hunter2" not in json.dumps(spec)
    k8s.kube.behave(REPO, "healthy")
    reports = Reports()
    k8s.target.run_task(spec, spec["tasks"][0], reports)
    assert k8s.target.deploy(spec, "staging#1", reports).succeeded
    writes = _writes(k8s.kube)
    dry = [p for m, p, d in writes if d]
    real = [(m, p) for m, p, d in writes if not d and m == "PATCH"]
    objects = len(spec["manifests"])
    assert writes[:objects] == [("PATCH", p, True) for p in dry[:objects]]  # everything validated first
    kinds = [p.split("/")[-2] for _, p in real]
    assert kinds[:8] == ["configmaps", "secrets", "serviceaccounts", "roles", "rolebindings",
                         "persistentvolumeclaims", "networkpolicies", "resourcequotas"]
    first_task_pod = next(i for i, (m, p, d) in enumerate(writes) if m == "POST" and p.endswith("/pods"))
    before_task = [p.split("/")[-2] for m, p, d in writes[:first_task_pod] if not d]
    assert before_task == kinds[:8]  # the priority groups went in before the task pod ...
    after_task = [p.split("/")[-2] for m, p, d in writes[first_task_pod:] if not d and m == "PATCH"]
    assert after_task.index("deployments") > after_task.index("resourcequotas")  # ... and the rest after them
    applies = [r for r in k8s.kube.requests if r.method == "PATCH"]
    assert all(r.content_type == "application/apply-patch+yaml" and r.query["fieldManager"] == "conveyor"
               and r.query.get("force") == "true" for r in applies)
    # each priority group is read back before the next group is applied
    paths = [(r.method, r.path) for r in k8s.kube.requests if r.query.get("dryRun") != "All"]
    configmap_get = paths.index(("GET", "/api/v1/namespaces/default/configmaps/web-config"))
    secret_patch = paths.index(("PATCH", "/api/v1/namespaces/default/secrets/web-secret"))
    assert configmap_get < secret_patch
    secret = k8s.kube.get("Secret", "web-secret")
    assert base64.b64decode(secret["data"]["DB_PASSWORD"]).decode() == "hunter2-secret"
    config = k8s.kube.get("ConfigMap", "web-config")
    assert config["data"]["LITERAL"] == "${CONVEYOR_ENV} and ${HOME} stay"
    assert "hunter2" not in reports.text()


def test_a_failed_dry_run_changes_nothing(k8s: Env) -> None:
    broken = deployment().replace("metadata: {labels: {app: web}}", "metadata: {labels: {app: other}}")
    spec = k8s.spec({"deploy/config.yaml": CONFIGMAP, "deploy/app.yaml": broken})
    reports = Reports()
    outcome = k8s.target.deploy(spec, "staging#1", reports)
    assert not outcome.succeeded and outcome.previous_still_serving
    assert "nothing was changed" in outcome.reason
    assert "`selector` does not match template `labels`" in reports.text("validate")
    assert all(dry for _, _, dry in _writes(k8s.kube))
    assert k8s.kube.get("ConfigMap", "web-config") is None
    with pytest.raises(TargetError, match="dry run"):
        k8s.target.run_task(spec, spec["tasks"][0], Reports())
    assert not any(m == "POST" for m, _, _ in _writes(k8s.kube))  # no task pod either


def test_missing_secret_values_and_namespace_are_caught_in_preflight(k8s: Env, monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    monkeypatch.delenv("DB_PASSWORD", raising=False)
    spec = k8s.spec({**APP, "deploy/priority.yaml": PRIORITY})
    with pytest.raises(BadInput, match="DB_PASSWORD"):
        k8s.target.preflight(spec)
    monkeypatch.setenv("DB_PASSWORD", "x")
    k8s.target.preflight(spec)
    with pytest.raises(BadInput, match="namespace 'web-prod' does not exist"):
        k8s.target.preflight(k8s.spec(namespace="web-prod"))


def test_prune_is_opt_in_and_only_touches_conveyors_own_objects(k8s: Env) -> None:
    extra = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: old-config}\ndata: {a: b}\n"
    pvc = ("---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: web-data}\n"
           "spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n")
    assert k8s.target.deploy(k8s.spec({**APP, "deploy/extra.yaml": extra + pvc}), "staging#1", Reports()).succeeded
    k8s.kube.store.create(k8s.kube.store_resource("ConfigMap"), "default",
                          {"metadata": {"name": "not-ours", "labels": {"conveyor.dev/app": "other"}}}, "kubectl")
    assert k8s.target.deploy(k8s.spec(APP, seed="v2"), "staging#2", Reports()).succeeded
    assert k8s.kube.get("ConfigMap", "old-config") is not None  # prune is off by default
    reports = Reports()
    assert k8s.target.deploy(k8s.spec(APP, seed="v3", prune=True), "staging#3", reports).succeeded
    assert k8s.kube.get("ConfigMap", "old-config") is None
    assert "deleted ConfigMap/old-config" in reports.text("prune")
    assert k8s.kube.get("PersistentVolumeClaim", "web-data") is not None  # protected kind
    assert k8s.kube.get("ConfigMap", "not-ours") is not None
    assert k8s.kube.list("ReplicaSet") and k8s.kube.list("Pod")  # owned objects are never pruned
    assert k8s.kube.get("Namespace", "default", namespace="") is not None


# --- 4. pre-deploy tasks ----------------------------------------------------------------------------------


def _task_pods(kube: KubeApi) -> list[dict[str, Any]]:
    return [e.obj for e in kube.store.history if e.key == "v1/pods" and "-task-" in e.obj["metadata"]["name"]]


def test_task_runs_with_the_new_image_and_the_deployments_pod_settings(k8s: Env) -> None:
    spec = k8s.spec()
    k8s.kube.behave(spec["image"], "succeeds", logs=["migrating 3 tables", "done migrating"])
    reports = Reports()
    k8s.target.run_task(spec, spec["tasks"][0], reports)
    assert "migrating 3 tables\ntask: done migrating" in reports.text("task")
    pod = _task_pods(k8s.kube)[0]
    container = pod["spec"]["containers"][0]
    assert container["image"] == spec["image"] and container["command"] == ["bin/migrate", "--all"]
    assert container["envFrom"] == [{"configMapRef": {"name": "web-config"}}]
    assert {"name": "APP_VERSION", "value": "staging"} in container["env"]
    assert pod["spec"]["serviceAccountName"] == "web-runner"
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["activeDeadlineSeconds"] == 20
    assert k8s.kube.get("ConfigMap", "web-config") is not None  # priority resources are in before the task
    assert k8s.kube.get("Deployment", "web") is None  # the main apply comes after
    assert k8s.kube.wait_for(lambda: not k8s.kube.list("Pod"))  # the task pod is removed


def test_a_failing_task_fails_with_its_exit_code_and_log(k8s: Env) -> None:
    spec = k8s.spec()
    k8s.kube.behave(spec["image"], "fails", exit_code=7, logs=["migration 42 failed: column exists"])
    with pytest.raises(TargetError) as caught:
        k8s.target.run_task(spec, spec["tasks"][0], Reports())
    assert caught.value.message == "task migrate exited with 7"
    assert caught.value.logs == ["migration 42 failed: column exists"]
    assert k8s.kube.get("Deployment", "web") is None


def test_a_task_has_a_deadline_and_fails_early_when_doomed(k8s: Env) -> None:
    spec = k8s.spec()
    spec["tasks"][0]["timeout"] = 1
    k8s.kube.behave(spec["image"], "succeeds", run_seconds=30)
    started = time.monotonic()
    with pytest.raises(TargetError, match="did not run to completion: timed out after 1s"):
        k8s.target.run_task(spec, spec["tasks"][0], Reports())
    assert time.monotonic() - started < 5
    k8s.kube.behave(spec["image"], "image-not-found")
    with pytest.raises(TargetError, match="cannot pull image"):
        k8s.target.run_task(spec, {"name": "migrate", "command": ["x"], "timeout": 60}, Reports())
    assert time.monotonic() - started < 8


# --- 5. verification ----------------------------------------------------------------------------------------

DOOMED = ("CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError")


def doomed_status(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        if ((cs.get("state") or {}).get("waiting") or {}).get("reason") in DOOMED:
            return True
    return False


def test_healthy_rollout_is_verified_by_watching(k8s: Env) -> None:
    spec = k8s.spec()
    reports = Reports()
    outcome = k8s.target.deploy(spec, "staging#1", reports)
    assert outcome.succeeded, outcome.reason
    assert "Deployment/web rolled out: 2/2 updated, 2/2 ready, 2/2 available" in reports.text("rollout")
    assert image_of(k8s.kube) == spec["image"]
    watches = [r for r in k8s.kube.requests if r.query.get("watch") == "true"]
    watched = {r.path.rsplit("/", 1)[1] for r in watches}
    assert {"pods", "replicasets", "deployments"} <= watched
    assert all(r.query.get("resourceVersion") for r in watches)  # from the LIST's resourceVersion
    lists = [r for r in k8s.kube.requests if r.method == "GET" and r.path.endswith("/pods")
             and r.query.get("watch") != "true"]
    assert len(lists) == 1  # one LIST, then only the watch: no polling
    summary = reports.text("summary")
    assert "result: succeeded" in summary and "Service/web" in summary


@pytest.mark.parametrize("behaviour,expected", [
    ("crashloop", 'is in CrashLoopBackOff (last exit code 1)'),
    ("image-not-found", "cannot pull image"),
    ("config-error", "CreateContainerConfigError"),
])
def test_doomed_rollouts_fail_within_a_second_of_the_api_showing_it(
    k8s: Env, behaviour: str, expected: str
) -> None:
    assert k8s.target.deploy(k8s.spec(), "staging#1", Reports()).succeeded
    spec = k8s.spec(seed="v2")
    k8s.kube.behave(spec["image"], behaviour)
    shown = k8s.kube.first_write("Pod", doomed_status)
    reports = Reports()
    outcome = k8s.target.deploy(spec, "staging#2", reports)
    assert not outcome.succeeded and not outcome.previous_still_serving
    assert expected in outcome.reason and outcome.reason.startswith("rollout failed: Deployment web: 1/1 pods doomed")
    signal = shown()
    assert signal is not None
    assert reports.first("failed") - signal < 1.0
    summary = reports.text("summary")
    assert "result: failed" in summary and "Deployment/web" in summary and "failed: Deployment web" in summary
    for routine in ("Scheduled", "Pulling", "SuccessfulCreate", "ScalingReplicaSet"):
        assert f" {routine}:" not in summary
    if behaviour == "crashloop":
        assert "Warning BackOff" in summary
        assert "| error: could not connect to database at db:5432: connection refused" in summary
    if behaviour == "image-not-found":
        assert "Warning Failed" in summary


def test_a_crash_looping_init_container_dooms_the_rollout(k8s: Env) -> None:
    init = "      initContainers: [{name: wait, image: registry.test/init:1}]\n"
    files = {**APP, "deploy/app.yaml": deployment().replace("      containers:\n", init + "      containers:\n", 1)}
    k8s.kube.behave("registry.test/init:1", "crashloop")
    outcome = k8s.target.deploy(k8s.spec(files), "staging#1", Reports())
    assert 'init container "wait" is in CrashLoopBackOff' in outcome.reason


def test_unschedulable_and_never_ready_end_in_timeouts_that_say_why(k8s: Env) -> None:
    spec = k8s.spec(timeout=1)
    k8s.kube.behave(spec["image"], "unschedulable")
    reports = Reports()
    outcome = k8s.target.deploy(spec, "staging#1", reports)
    assert outcome.reason.startswith("rollout timed out: Deployment web timed out (0/2 available)")
    assert "cannot be scheduled (Unschedulable): 0/3 nodes are available: 3 Insufficient cpu" in outcome.reason
    assert "FailedScheduling" in reports.text("summary") and "result: timed out" in reports.text("summary")
    spec = k8s.spec(seed="v2", timeout=1)
    k8s.kube.behave(spec["image"], "stuck")
    outcome = k8s.target.deploy(spec, "staging#2", Reports())
    assert 'never passed its readinessProbe (httpGet /healthz on port 8080)' in outcome.reason


def test_per_resource_timeouts(k8s: Env) -> None:
    spec = k8s.spec(timeout=30, timeouts={"Deployment/web": 1})
    k8s.kube.behave(spec["image"], "stuck")
    started = time.monotonic()
    assert "timed out" in k8s.target.deploy(spec, "staging#1", Reports()).reason
    assert time.monotonic() - started < 6


def _hold_status_at_apply(k8s: Env, reports: Reports, change: Callable[[dict[str, Any]], None], seconds: float
                          ) -> list[float]:
    """When the Deployment is applied, stop the controllers, let `change` edit its status, and resume
    after `seconds`. Returns [resume time] once resumed."""
    resumed: list[float] = []

    def hook(step: str, message: str) -> None:
        if step == "apply" and message == "Deployment/web applied":
            k8s.kube.pause()
            time.sleep(0.15)  # let a tick already under way finish
            deployments = k8s.kube.store_resource("Deployment")
            k8s.kube.store.mutate(deployments, "default", "web", change, "kube-controller-manager", "status")

            def later() -> None:
                time.sleep(seconds)
                resumed.append(time.monotonic())
                k8s.kube.resume()

            threading.Thread(target=later, daemon=True).start()

    reports.hooks.append(hook)
    return resumed


def test_a_stale_status_is_never_read_as_success(k8s: Env) -> None:
    assert k8s.target.deploy(k8s.spec(), "staging#1", Reports()).succeeded
    reports = Reports()
    resumed = _hold_status_at_apply(k8s, reports, lambda d: None, 1.0)  # status still says "all done"
    outcome = k8s.target.deploy(k8s.spec(seed="v2"), "staging#2", reports)
    assert outcome.succeeded
    done = next(t for t, s, m in reports.lines if s == "rollout" and "rolled out" in m)
    assert resumed and done > resumed[0]


def test_a_progressing_false_left_from_an_earlier_rollout_is_ignored(k8s: Env) -> None:
    assert k8s.target.deploy(k8s.spec(), "staging#1", Reports()).succeeded

    def stale_deadline(d: dict[str, Any]) -> None:
        d["status"]["observedGeneration"] = d["metadata"]["generation"]
        d["status"]["conditions"] = [c for c in d["status"].get("conditions", []) if c["type"] != "Progressing"] + [{
            "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "web-old" has timed out progressing.',
            "lastUpdateTime": "2020-01-01T00:00:00Z", "lastTransitionTime": "2020-01-01T00:00:00Z"}]

    reports = Reports()
    _hold_status_at_apply(k8s, reports, stale_deadline, 0.6)
    outcome = k8s.target.deploy(k8s.spec(seed="v2"), "staging#2", reports)
    assert outcome.succeeded, outcome.reason


def test_watch_history_compaction_is_survived_by_relisting(k8s: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.targets.kubernetes import watch

    monkeypatch.setattr(watch, "WATCH_SECONDS", 1)  # reconnect often, so a reconnect meets the compaction
    spec = k8s.spec()
    k8s.kube.behave(spec["image"], "slow", ready_after=2.5)
    reports = Reports()
    compacted: list[int] = []

    def hook(step: str, message: str) -> None:
        if step == "rollout" and not compacted:
            # a write the pod watch does not see, then compaction: its next resume is from a version the
            # server has forgotten, and must be answered with 410 Gone
            k8s.kube.store.create(k8s.kube.store_resource("ConfigMap"), "default", {"metadata": {"name": "x"}}, "t")
            compacted.append(k8s.kube.compact())

    reports.hooks.append(hook)
    assert k8s.target.deploy(spec, "staging#1", reports).succeeded
    assert compacted
    expired = [r for r in k8s.kube.requests if r.query.get("watch") == "true"
               and int(r.query.get("resourceVersion") or 0) < compacted[0] and r.path.endswith("/pods")]
    relists = [r for r in k8s.kube.requests if r.method == "GET" and r.path.endswith("/pods")
               and r.query.get("watch") != "true"]
    assert expired and len(relists) >= 2


def _play_controller(k8s: Env, kind: str, name: str, pod: str, status: dict[str, Any],
                     node: str | None = None) -> Callable[[str, str], None]:
    """The in-repo server stores StatefulSets and DaemonSets but does not drive them: once conveyor has applied
    KIND/NAME, create its one pod (from the template, owned by it) and report the status a controller would."""

    def play(step: str, message: str) -> None:
        if step != "apply" or message != f"{kind}/{name} applied":
            return
        store, owner = k8s.kube.store, k8s.kube.get(kind, name)
        assert owner is not None
        template = owner["spec"]["template"]
        store.create(k8s.kube.store_resource("Pod"), "default", {
            "metadata": {"name": pod, "labels": template["metadata"]["labels"], "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": kind, "name": name, "uid": owner["metadata"]["uid"],
                "controller": True}]},
            "spec": {**template["spec"], **({"nodeName": node} if node else {})}}, "kube-controller-manager")
        store.mutate(k8s.kube.store_resource(kind), "default", name,
                     lambda o: o["status"].update(observedGeneration=o["metadata"]["generation"], **status),
                     "kube-controller-manager", "status")

    return play


def test_jobs_bare_pods_and_statefulsets_are_verified(k8s: Env) -> None:
    job = textwrap.dedent(f"""\
        apiVersion: batch/v1
        kind: Job
        metadata:
          name: seed-${{CONVEYOR_SHORT_SHA}}
        spec:
          template:
            spec:
              restartPolicy: Never
              containers: [{{name: seed, image: "{REPO}:seed", command: [seed]}}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: probe}}
        spec:
          containers: [{{name: probe, image: registry.test/probe:1}}]
        """)
    reports = Reports()
    outcome = k8s.target.deploy(k8s.spec({**APP, "deploy/job.yaml": job}), "staging#1", reports)
    assert outcome.succeeded, outcome.reason
    rolled = reports.text("rollout")
    assert "Job/seed-" in rolled and "Pod/probe rolled out" in rolled

    sts = textwrap.dedent("""\
        apiVersion: apps/v1
        kind: StatefulSet
        metadata: {name: db}
        spec:
          serviceName: db
          replicas: 1
          selector: {matchLabels: {app: db}}
          template:
            metadata: {labels: {app: db}}
            spec:
              containers: [{name: db, image: registry.test/db:15}]
        """)
    k8s.kube.behave("registry.test/db:15", "crashloop")
    reports = Reports()
    reports.hooks.append(_play_controller(k8s, "StatefulSet", "db", "db-0", {"replicas": 1}))
    outcome = k8s.target.deploy(k8s.spec({**APP, "deploy/db.yaml": sts}, seed="v2"), "staging#2", reports)
    assert "StatefulSet db: 1/1 pods doomed: pod db-0" in outcome.reason

    daemonset = sts.replace("StatefulSet", "DaemonSet").replace("  serviceName: db\n  replicas: 1\n", "")
    daemonset = daemonset.replace("{name: db}", "{name: agent}").replace("app: db", "app: agent")
    daemonset = daemonset.replace("registry.test/db:15", "registry.test/agent:2")
    k8s.kube.behave("registry.test/agent:2", "image-not-found")
    reports = Reports()
    reports.hooks.append(_play_controller(k8s, "DaemonSet", "agent", "agent-x7k2p",
                                          {"desiredNumberScheduled": 1, "currentNumberScheduled": 1},
                                          node="worker-1"))
    outcome = k8s.target.deploy(k8s.spec({**APP, "deploy/agent.yaml": daemonset}, seed="v3"), "staging#3", reports)
    assert "DaemonSet agent: 1/1 pods doomed: pod agent-x7k2p" in outcome.reason
    assert "cannot pull image" in outcome.reason


# --- 8 and 9: live state, drift and `conveyor run` ---------------------------------------------------------


def test_live_reads_the_served_image_and_notices_hand_edits(k8s: Env) -> None:
    spec = k8s.spec()
    assert k8s.target.live("web", "staging", None) is None
    assert k8s.target.deploy(spec, "staging#1", Reports()).succeeded
    state = k8s.target.live("web", "staging", spec)
    assert state is not None and state.image == spec["image"] and state.release_label == "staging#1"
    deployments = k8s.kube.store_resource("Deployment")
    k8s.kube.store.mutate(deployments, "default", "web",
                          lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image=f"{REPO}:hotfix"),
                          "kubectl-set")
    state = k8s.target.live("web", "staging", spec)
    assert state is not None and state.image == f"{REPO}:hotfix" and "changed outside conveyor" in state.detail
    # the next deploy takes the field back from the hand edit (server-side apply, forced)
    assert k8s.target.deploy(spec, "staging#2", Reports()).succeeded
    assert image_of(k8s.kube) == spec["image"]


def test_run_command_streams_output_passes_the_exit_code_and_removes_the_pod(k8s: Env) -> None:
    spec = k8s.spec()
    k8s.kube.behave(spec["image"], "fails", exit_code=3, logs=["rows: 12", "error: constraint"])
    reports = Reports()
    assert k8s.target.run_command(spec, ["bin/console", "--check"], reports) == 3
    assert reports.text("output").endswith("output: rows: 12\noutput: error: constraint")
    pods = [e.obj for e in k8s.kube.store.history if e.key == "v1/pods"]
    assert pods[0]["spec"]["containers"][0]["command"] == ["bin/console", "--check"]
    assert "-run-" in pods[0]["metadata"]["name"]
    assert k8s.kube.wait_for(lambda: not k8s.kube.list("Pod"))


def test_import_of_the_target_package_does_not_load_the_client() -> None:
    code = ("import sys, conveyor.targets.kubernetes, conveyor.targets.kubernetes.verdict, conveyor.config.models, "
            "conveyor.cli.main; print('kubernetes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "False"
