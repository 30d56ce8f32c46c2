"""The in-repo API server, driven by the unmodified `kubernetes` client, and judged by Part A's verdicts."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, dynamic, watch
from kubernetes.client.rest import ApiException

from conveyor.targets.kubernetes.verdict import (
    FAILED,
    SUCCEEDED,
    deployment_verdict,
    is_routine_event,
    job_verdict,
    pod_verdict,
    timeout_reason,
)
from tests.kube_apiserver.cluster import KubeApi

pytest_plugins = ["tests.kube_apiserver.fixture"]

APPLY = "application/apply-patch+yaml"


# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def api_client(kube_api: KubeApi) -> client.ApiClient:
    config.load_kube_config(config_file=str(kube_api.kubeconfig_path))
    return client.ApiClient()


@pytest.fixture
def dyn(api_client: client.ApiClient, tmp_path: Path) -> dynamic.DynamicClient:
    # A private discovery cache: the default one lives in /tmp keyed by URL and would outlive the server.
    return dynamic.DynamicClient(api_client, cache_file=str(tmp_path / "discovery.json"))


def deployment(
    name: str = "web", image: str = "registry.test/web:1", replicas: int = 2, **spec: Any
) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"app.kubernetes.io/managed-by": "conveyor"},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": name,
                            "image": image,
                            "ports": [{"containerPort": 8080, "name": "http"}],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                        }
                    ]
                },
            },
            **spec,
        },
    }


def apply(dyn: dynamic.DynamicClient, body: dict[str, Any], manager: str = "conveyor", **kwargs: Any) -> Any:
    resource = dyn.resources.get(api_version=body["apiVersion"], kind=body["kind"])
    return resource.server_side_apply(body=body, field_manager=manager, namespace="default", **kwargs)


def status_body(exc: ApiException) -> dict[str, Any]:
    return json.loads(exc.body)


def rollout_verdict(dyn: dynamic.DynamicClient, name: str = "web", since: datetime | None = None):
    """Read the Deployment, its ReplicaSets and Pods through the real client and judge them."""
    apps = lambda kind: dyn.resources.get(api_version="apps/v1", kind=kind)  # noqa: E731
    d = apps("Deployment").get(name=name, namespace="default").to_dict()
    rs = [i.to_dict() for i in apps("ReplicaSet").get(namespace="default").items]
    pods = [
        i.to_dict() for i in dyn.resources.get(api_version="v1", kind="Pod").get(namespace="default").items
    ]
    return deployment_verdict(d, rs, pods, since=since), d, rs, pods


def wait_verdict(
    kube_api: KubeApi, dyn: dynamic.DynamicClient, since: datetime | None = None, timeout: float = 10.0
):
    return kube_api.wait_for(lambda: (v := rollout_verdict(dyn, since=since))[0].done and v, timeout=timeout)


# --- discovery and auth ----------------------------------------------------------------------------


def test_discovery_serves_the_dynamic_client(
    dyn: dynamic.DynamicClient, api_client: client.ApiClient
) -> None:
    expected = {
        "v1": [
            "Namespace",
            "ConfigMap",
            "Secret",
            "ServiceAccount",
            "Service",
            "Pod",
            "Event",
            "PersistentVolumeClaim",
            "ResourceQuota",
        ],
        "apps/v1": ["Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"],
        "batch/v1": ["Job"],
        "rbac.authorization.k8s.io/v1": ["Role", "RoleBinding"],
        "networking.k8s.io/v1": ["NetworkPolicy"],
    }
    for api_version, kinds in expected.items():
        for kind in kinds:
            resource = dyn.resources.get(api_version=api_version, kind=kind)
            assert resource.kind == kind
            assert resource.namespaced == (kind != "Namespace")
            assert "watch" in resource.verbs and "patch" in resource.verbs
    pods = dyn.resources.get(api_version="v1", kind="Pod")
    assert "log" in pods.subresources and "status" in pods.subresources
    assert client.VersionApi(api_client).get_code().git_version == "v1.30.0"
    groups = {g.name for g in client.ApisApi(api_client).get_api_versions().groups}
    assert {"apps", "batch", "rbac.authorization.k8s.io", "networking.k8s.io"} <= groups


def test_bearer_token_is_required(kube_api: KubeApi) -> None:
    request = urllib.request.Request(kube_api.url + "/api/v1/namespaces")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5, context=kube_api.ssl_context())
    assert caught.value.code == 401
    assert json.loads(caught.value.read()) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
    configuration = client.Configuration(host=kube_api.url, api_key={"BearerToken": "Bearer wrong"})
    configuration.ssl_ca_cert = str(kube_api.pki.ca.cert_file)
    with pytest.raises(ApiException) as exc:
        client.CoreV1Api(client.ApiClient(configuration)).list_namespace()
    assert exc.value.status == 401


# --- CRUD, list, watch -----------------------------------------------------------------------------


def test_create_get_list_and_field_selectors(api_client: client.ApiClient, kube_api: KubeApi) -> None:
    v1 = client.CoreV1Api(api_client)
    for name, tier in (("alpha", "web"), ("beta", "worker")):
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name, labels={"tier": tier}), data={"k": "v"}
        )
        created = v1.create_namespaced_config_map("default", body)
        assert created.metadata.uid and created.metadata.resource_version
        assert created.metadata.creation_timestamp is not None
    got = v1.read_namespaced_config_map("alpha", "default")
    assert got.data == {"k": "v"}
    listed = v1.list_namespaced_config_map("default", label_selector="tier=web")
    assert [c.metadata.name for c in listed.items] == ["alpha"]
    assert int(listed.metadata.resource_version) == kube_api.resource_version
    assert [
        c.metadata.name for c in v1.list_namespaced_config_map("default", label_selector="tier!=web").items
    ] == ["beta"]
    assert [
        c.metadata.name
        for c in v1.list_namespaced_config_map("default", field_selector="metadata.name=beta").items
    ] == ["beta"]
    everywhere = v1.list_config_map_for_all_namespaces()
    assert {c.metadata.name for c in everywhere.items} == {"alpha", "beta"}
    with pytest.raises(ApiException) as exc:
        v1.list_namespaced_config_map("default", field_selector="data.k=v")
    assert exc.value.status == 400 and "field label not supported" in status_body(exc.value)["message"]


def test_watch_streams_changes_from_a_resource_version(api_client: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api_client)
    start = v1.list_namespaced_config_map("default").metadata.resource_version
    v1.create_namespaced_config_map("default", {"metadata": {"name": "cfg"}, "data": {"a": "1"}})
    v1.patch_namespaced_config_map("cfg", "default", {"data": {"a": "2"}})
    v1.delete_namespaced_config_map("cfg", "default")
    seen = [
        (e["type"], e["object"].data)
        for e in watch.Watch().stream(
            v1.list_namespaced_config_map, "default", resource_version=start, timeout_seconds=1
        )
    ]
    assert seen == [("ADDED", {"a": "1"}), ("MODIFIED", {"a": "2"}), ("DELETED", {"a": "2"})]


def test_watch_sees_live_changes(api_client: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api_client)
    start = v1.list_namespaced_config_map("default").metadata.resource_version
    w = watch.Watch()
    names: list[str] = []

    def consume() -> None:
        for event in w.stream(
            v1.list_namespaced_config_map, "default", resource_version=start, timeout_seconds=5
        ):
            names.append(event["object"].metadata.name)
            if len(names) == 2:
                w.stop()

    reader = threading.Thread(target=consume)
    reader.start()
    v1.create_namespaced_config_map("default", {"metadata": {"name": "one"}})
    v1.create_namespaced_config_map("default", {"metadata": {"name": "two"}})
    reader.join(timeout=5)
    assert names == ["one", "two"]


def test_watch_from_an_expired_resource_version_gets_410(
    api_client: client.ApiClient, kube_api: KubeApi
) -> None:
    v1 = client.CoreV1Api(api_client)
    old = v1.create_namespaced_config_map("default", {"metadata": {"name": "cfg"}}).metadata.resource_version
    v1.patch_namespaced_config_map("cfg", "default", {"data": {"a": "1"}})
    kube_api.compact()
    with pytest.raises(ApiException) as exc:
        list(
            watch.Watch().stream(
                v1.list_namespaced_config_map, "default", resource_version=old, timeout_seconds=1
            )
        )
    assert exc.value.status == 410 and "Expired: too old resource version" in exc.value.reason
    # Without timeout_seconds the client retries once from the same version, then gives up with 410 too.
    with pytest.raises(ApiException) as exc:
        list(watch.Watch().stream(v1.list_namespaced_config_map, "default", resource_version=old))
    assert exc.value.status == 410
    # On the wire: HTTP 200 and one ERROR event carrying the Status.
    response = v1.list_namespaced_config_map(
        "default", watch=True, resource_version=old, _preload_content=False
    )
    events = [json.loads(line) for line in response.data.decode().splitlines()]
    assert events == [
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {old} ({kube_api.resource_version + 1})",
                "reason": "Expired",
                "code": 410,
            },
        }
    ]


def test_bounded_history_expires_old_versions(tmp_path: Path) -> None:
    api = KubeApi(tmp_path, history_size=5)
    try:
        config.load_kube_config(config_file=str(api.kubeconfig_path))
        v1 = client.CoreV1Api(client.ApiClient())
        first = v1.create_namespaced_config_map(
            "default", {"metadata": {"name": "c0"}}
        ).metadata.resource_version
        for i in range(1, 8):
            v1.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
        with pytest.raises(ApiException) as exc:
            list(
                watch.Watch().stream(
                    v1.list_namespaced_config_map, "default", resource_version=first, timeout_seconds=1
                )
            )
        assert exc.value.status == 410
    finally:
        api.close()


def test_list_pages_and_an_expired_continue_token(api_client: client.ApiClient, kube_api: KubeApi) -> None:
    v1 = client.CoreV1Api(api_client)
    for i in range(3):
        v1.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
    page = v1.list_namespaced_config_map("default", limit=2)
    assert [c.metadata.name for c in page.items] == ["c0", "c1"]
    assert page.metadata.remaining_item_count == 1
    rest = v1.list_namespaced_config_map("default", limit=2, _continue=page.metadata._continue)
    assert [c.metadata.name for c in rest.items] == ["c2"] and not rest.metadata._continue
    v1.create_namespaced_config_map("default", {"metadata": {"name": "c3"}})
    kube_api.compact()  # etcd compacted past the token's revision
    with pytest.raises(ApiException) as exc:
        v1.list_namespaced_config_map("default", limit=2, _continue=page.metadata._continue)
    assert exc.value.status == 410 and status_body(exc.value)["reason"] == "Expired"


class Https:
    """Raw HTTPS to the test server (what a client sees on the wire), with the admin token."""

    def __init__(self, kube_api: KubeApi) -> None:
        host, port = kube_api.url.removeprefix("https://").split(":")
        self.conn = http.client.HTTPSConnection(host, int(port), context=kube_api.ssl_context(), timeout=10)
        self.token = kube_api.token

    def request(self, method: str, path: str, body: Any = None, **headers: str) -> http.client.HTTPResponse:
        data = json.dumps(body).encode() if body is not None else None
        sent = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json", **headers}
        self.conn.request(method, path, body=data, headers=sent)
        return self.conn.getresponse()

    def json(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
        response = self.request(method, path, body, **headers)
        return response.status, json.loads(response.read())


def configmap(name: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}, **extra}


def test_https_only_a_plain_http_request_gets_the_real_servers_400(kube_api: KubeApi) -> None:
    host, port = kube_api.url.removeprefix("https://").split(":")
    plain = http.client.HTTPConnection(host, int(port), timeout=5)
    plain.request("GET", "/api/v1/namespaces")
    response = plain.getresponse()
    assert response.status == 400 and response.read() == b"Client sent an HTTP request to an HTTPS server.\n"


def test_a_client_certificate_authenticates_its_cn_and_an_unknown_ca_is_refused(kube_api: KubeApi) -> None:
    pair = kube_api.pki.client("jane", group="deployers")
    context = kube_api.ssl_context()
    context.load_cert_chain(pair.cert_file, pair.key_file)
    request = urllib.request.Request(kube_api.url + "/api/v1/namespaces/default")
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        assert json.loads(response.read())["metadata"]["name"] == "default"
    assert kube_api.requests[-1].user == "jane"
    untrusting = ssl.create_default_context(cafile=str(kube_api.pki.wrong_ca.cert_file))
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(request, timeout=5, context=untrusting)


def test_watch_list_sends_the_current_objects_then_the_initial_events_end_bookmark(kube_api: KubeApi) -> None:
    https = Https(kube_api)
    for name in ("alpha", "beta"):
        assert https.json("POST", "/api/v1/namespaces/default/configmaps", configmap(name))[0] == 201
    listed_rv = https.json("GET", "/api/v1/namespaces/default/configmaps")[1]["metadata"]["resourceVersion"]
    stream = https.request(
        "GET", "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true"
        "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=10")
    events = [json.loads(stream.readline()) for _ in range(3)]
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events] == [
        ("ADDED", "alpha"), ("ADDED", "beta"), ("BOOKMARK", None)]
    bookmark = events[2]["object"]
    assert bookmark == {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {
        "resourceVersion": listed_rv, "annotations": {"k8s.io/initial-events-end": "true"}}}
    other = Https(kube_api)
    other.json("POST", "/api/v1/namespaces/default/configmaps", configmap("gamma"))
    added = json.loads(stream.readline())
    assert added["type"] == "ADDED" and added["object"]["metadata"]["name"] == "gamma"
    kube_api.store.request_bookmarks()  # a long quiet watch: the server sends a bookmark to resume from
    quiet = json.loads(stream.readline())
    assert quiet["type"] == "BOOKMARK" and "annotations" not in quiet["object"]["metadata"]
    assert quiet["object"]["metadata"]["resourceVersion"] == added["object"]["metadata"]["resourceVersion"]


def test_watch_list_with_a_field_selector_and_the_combinations_upstream_refuses(kube_api: KubeApi) -> None:
    https = Https(kube_api)
    for name in ("alpha", "beta"):
        https.json("POST", "/api/v1/namespaces/default/configmaps", configmap(name))
    stream = https.request(
        "GET", "/api/v1/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
        "&allowWatchBookmarks=true&timeoutSeconds=10&fieldSelector=metadata.name%3Dbeta,metadata.namespace%3Ddefault")
    first, second = json.loads(stream.readline()), json.loads(stream.readline())
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "beta")
    assert second["type"] == "BOOKMARK"
    https = Https(kube_api)
    base = "/api/v1/namespaces/default/configmaps?watch=1"
    refusals = {
        "&sendInitialEvents=true&allowWatchBookmarks=true": "sendInitialEvents requires setting "
                                                            "resourceVersionMatch to NotOlderThan",
        "&sendInitialEvents=true&resourceVersionMatch=NotOlderThan": "sendInitialEvents requires setting "
                                                                     "allowWatchBookmarks to true",
        "&resourceVersionMatch=NotOlderThan": "resourceVersionMatch is forbidden for watch unless "
                                              "sendInitialEvents is provided",
    }
    for query, message in refusals.items():
        code, body = https.json("GET", base + query)
        assert code == 422 and body["reason"] == "Invalid" and message in body["message"]


def test_openapi_v3_declares_field_validation_and_the_server_enforces_it(kube_api: KubeApi) -> None:
    https = Https(kube_api)
    code, root = https.json("GET", "/openapi/v3")
    assert code == 200 and {"api/v1", "apis/apps/v1", "apis/batch/v1"} <= set(root["paths"])
    code, apps = https.json("GET", root["paths"]["apis/apps/v1"]["serverRelativeURL"])
    patch = apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "apps", "version": "v1", "kind": "Deployment"}
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    gvk = {"group": "apps", "version": "v1", "kind": "Deployment"}
    schemas = apps["components"]["schemas"].values()
    schema = next(s for s in schemas if gvk in s.get("x-kubernetes-group-version-kind", []))
    assert {"apiVersion", "kind", "metadata", "spec", "status"} == set(schema["properties"])
    path = "/api/v1/namespaces/default/configmaps"
    code, body = https.json("POST", path + "?fieldValidation=Strict", configmap("strict", dataa={"x": "y"}))
    assert code == 400 and body["message"] == ('ConfigMap in version "v1" cannot be handled as a ConfigMap: '
                                               'strict decoding error: unknown field "dataa"')
    response = https.request("POST", path, configmap("warned", dataa={"x": "y"}))  # Warn is the default
    assert response.status == 201 and response.getheader("Warning") == '299 - "unknown field \\"dataa\\""'
    response.read()
    assert https.json("POST", path + "?fieldValidation=Ignore", configmap("ignored", dataa={}))[0] == 201
    code, body = https.json("PATCH", path + "/applied?fieldManager=t&fieldValidation=Strict",
                            configmap("applied", dataa={}), **{"Content-Type": APPLY})
    assert code == 400 and body["message"] == ("failed to create typed patch object (default/applied; v1, "
                                               "Kind=ConfigMap): .dataa: field not declared in schema")


def test_table_output_for_get_and_list(kube_api: KubeApi, dyn: dynamic.DynamicClient) -> None:
    apply(dyn, deployment())
    wait_verdict(kube_api, dyn)
    https = Https(kube_api)
    table_type = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    code, table = https.json("GET", "/apis/apps/v1/namespaces/default/deployments", Accept=table_type)
    assert code == 200 and (table["kind"], table["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    assert [(c["name"], c["priority"]) for c in table["columnDefinitions"]] == [
        ("Name", 0), ("Ready", 0), ("Up-to-date", 0), ("Available", 0), ("Age", 0),
        ("Containers", 1), ("Images", 1), ("Selector", 1)]
    (row,) = table["rows"]
    assert row["cells"][:4] == ["web", "2/2", 2, 2] and row["cells"][5:] == [
        "web", "registry.test/web:1", "app.kubernetes.io/name=web"]
    assert row["object"]["kind"] == "PartialObjectMetadata" and row["object"]["metadata"]["name"] == "web"
    code, one = https.json("GET", "/apis/apps/v1/namespaces/default/deployments/web?includeObject=Object",
                           Accept=table_type)
    assert one["rows"][0]["object"]["spec"]["replicas"] == 2
    code, plain = https.json("GET", "/apis/apps/v1/namespaces/default/deployments/web")
    assert plain["kind"] == "Deployment"  # without the Table media type: the object itself


@pytest.mark.parametrize(("seconds", "shown"), [(5, "5s"), (119, "119s"), (200, "3m20s"), (600, "10m"),
                                                (5 * 3600 + 180, "5h3m"), (30 * 3600, "30h"),
                                                (3 * 86400 + 4 * 3600, "3d4h"), (40 * 86400, "40d")])
def test_ages_read_as_kubectl_prints_them(seconds: int, shown: str) -> None:
    from tests.kube_apiserver.tables import human_duration

    assert human_duration(seconds) == shown


# --- server-side apply -----------------------------------------------------------------------------


def test_apply_creates_then_bumps_generation_only_on_spec_change(
    dyn: dynamic.DynamicClient, kube_api: KubeApi
) -> None:
    kube_api.pause()  # keep the controllers' status writes out of the resourceVersion comparisons
    created = apply(dyn, deployment())
    assert created.metadata.generation == 1
    rv = created.metadata.resourceVersion
    again = apply(dyn, deployment())
    assert again.metadata.generation == 1
    assert again.metadata.resourceVersion == rv  # a no-op apply is not a write
    relabelled = deployment()
    relabelled["metadata"]["labels"]["team"] = "shop"
    labelled = apply(dyn, relabelled)
    assert labelled.metadata.generation == 1 and labelled.metadata.resourceVersion != rv
    changed = apply(dyn, deployment(image="registry.test/web:2"))
    assert changed.metadata.generation == 2
    entry = next(
        m
        for m in kube_api.get("Deployment", "web")["metadata"]["managedFields"]
        if m["manager"] == "conveyor"
    )
    assert entry["operation"] == "Apply" and entry["apiVersion"] == "apps/v1"
    assert set(entry["fieldsV1"]["f:spec"]) == {"f:replicas", "f:selector", "f:template"}
    patch_calls = [r for r in kube_api.requests if r.method == "PATCH"]
    assert all(r.content_type == APPLY and r.query["fieldManager"] == "conveyor" for r in patch_calls)
    # Defaults were filled in, and re-applying did not fight them.
    stored = kube_api.get("Deployment", "web")
    assert stored["spec"]["strategy"]["type"] == "RollingUpdate"
    assert stored["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"


def test_apply_removes_fields_the_manager_stopped_applying(
    dyn: dynamic.DynamicClient, kube_api: KubeApi
) -> None:
    kube_api.pause()
    body = deployment()
    body["metadata"]["labels"]["team"] = "shop"
    apply(dyn, body)
    apply(dyn, deployment())
    assert "team" not in kube_api.get("Deployment", "web")["metadata"]["labels"]


def test_conflicting_apply_gets_409_and_force_wins(dyn: dynamic.DynamicClient, kube_api: KubeApi) -> None:
    kube_api.pause()
    apply(dyn, deployment(replicas=2), manager="conveyor")
    # Another manager applying the SAME value shares ownership without conflict.
    apply(
        dyn,
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}},
        manager="hpa",
    )
    scale = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 5},
    }
    with pytest.raises(ApiException) as exc:
        apply(dyn, scale, manager="kubectl")
    body = status_body(exc.value)
    assert exc.value.status == 409 and body["reason"] == "Conflict"
    assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == 409
    assert '"conveyor"' in body["message"] and ".spec.replicas" in body["message"]
    assert {c["field"] for c in body["details"]["causes"]} == {".spec.replicas"}
    assert kube_api.get("Deployment", "web")["spec"]["replicas"] == 2
    forced = apply(dyn, scale, manager="kubectl", force_conflicts=True)
    assert forced.spec.replicas == 5 and forced.metadata.generation == 2
    # Now conveyor no longer owns replicas: its next apply conflicts with kubectl.
    with pytest.raises(ApiException) as exc:
        apply(dyn, deployment(replicas=2), manager="conveyor")
    assert '"kubectl"' in status_body(exc.value)["message"]


def test_apply_through_the_typed_api_and_call_api(api_client: client.ApiClient, kube_api: KubeApi) -> None:
    kube_api.pause()
    apps = client.AppsV1Api(api_client)
    created = apps.patch_namespaced_deployment(
        "web", "default", deployment(), field_manager="conveyor", _content_type=APPLY
    )
    assert created.metadata.generation == 1
    # The raw route: param_serialize + call_api (kubernetes >= 35 split the old call_api in two).
    method, url, headers, body, post = api_client.param_serialize(
        "PATCH",
        "/apis/apps/v1/namespaces/default/deployments/web",
        query_params=[("fieldManager", "conveyor"), ("force", "true")],
        header_params={"Content-Type": APPLY, "Accept": "application/json"},
        body=deployment(image="registry.test/web:9"),
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(method, url, headers, body, post)
    response.read()
    assert response.status == 200
    assert json.loads(response.data)["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as exc:  # apply without a field manager is invalid
        apps.patch_namespaced_deployment("web", "default", deployment(), _content_type=APPLY)
    assert exc.value.status == 422 and "fieldManager: Required value" in status_body(exc.value)["message"]


def test_dry_run_stores_nothing(
    dyn: dynamic.DynamicClient, api_client: client.ApiClient, kube_api: KubeApi
) -> None:
    kube_api.pause()
    before = kube_api.resource_version
    preview = apply(dyn, deployment(), dry_run="All")
    assert preview.metadata.generation == 1 and preview.spec.template.spec.containers[0].image
    assert kube_api.get("Deployment", "web") is None and kube_api.resource_version == before
    v1 = client.CoreV1Api(api_client)
    v1.create_namespaced_config_map("default", {"metadata": {"name": "cfg"}}, dry_run="All")
    assert kube_api.get("ConfigMap", "cfg") is None
    stored = apply(dyn, deployment())
    changed = apply(dyn, deployment(image="registry.test/web:2"), dry_run="All")
    assert changed.metadata.generation == 2
    now = kube_api.get("Deployment", "web")
    assert now["metadata"]["generation"] == 1
    assert now["metadata"]["resourceVersion"] == stored.metadata.resourceVersion


# --- errors ----------------------------------------------------------------------------------------


def test_status_bodies_for_404_409_422(api_client: client.ApiClient, dyn: dynamic.DynamicClient) -> None:
    apps = client.AppsV1Api(api_client)
    # The typed client (v35+) validates bodies with pydantic before sending; invalid ones go raw.
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    with pytest.raises(ApiException) as exc:
        apps.read_namespaced_deployment("nope", "default")
    assert exc.value.status == 404
    assert status_body(exc.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'deployments.apps "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "group": "apps", "kind": "deployments"},
        "code": 404,
    }
    with pytest.raises(ApiException) as exc:
        client.CoreV1Api(api_client).read_namespaced_pod("nope", "default")
    assert status_body(exc.value)["details"] == {"name": "nope", "kind": "pods"}

    apps.create_namespaced_deployment("default", deployment())
    with pytest.raises(ApiException) as exc:
        apps.create_namespaced_deployment("default", deployment())
    assert exc.value.status == 409
    assert status_body(exc.value)["reason"] == "AlreadyExists"
    assert status_body(exc.value)["message"] == 'deployments.apps "web" already exists'

    stale = apps.read_namespaced_deployment("web", "default")
    apps.patch_namespaced_deployment("web", "default", {"metadata": {"labels": {"x": "1"}}})
    with pytest.raises(ApiException) as exc:
        apps.replace_namespaced_deployment("web", "default", stale)
    assert exc.value.status == 409 and "the object has been modified" in status_body(exc.value)["message"]

    no_template = deployment(name="bare")
    del no_template["spec"]["template"]
    with pytest.raises(ApiException) as exc:
        deployments.create(body=no_template, namespace="default")
    body = status_body(exc.value)
    assert exc.value.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["kind"] == "Deployment" and body["details"]["group"] == "apps"
    assert body["message"].startswith(
        'Deployment.apps "bare" is invalid: spec.template.spec.containers: Required'
    )

    mismatch = deployment(name="mismatch")
    mismatch["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    with pytest.raises(ApiException) as exc:
        deployments.create(body=mismatch, namespace="default")
    assert "`selector` does not match template `labels`" in status_body(exc.value)["message"]

    no_image = deployment(name="noimage")
    del no_image["spec"]["template"]["spec"]["containers"][0]["image"]
    with pytest.raises(ApiException) as exc:
        deployments.create(body=no_image, namespace="default")
    causes = status_body(exc.value)["details"]["causes"]
    assert causes == [
        {
            "reason": "FieldValueRequired",
            "message": "Required value",
            "field": "spec.template.spec.containers[0].image",
        }
    ]

    nameless = deployment()
    del nameless["metadata"]["name"]
    with pytest.raises(ApiException) as exc:
        deployments.create(body=nameless, namespace="default")
    assert exc.value.status == 422 and "metadata.name: Required value" in status_body(exc.value)["message"]


def test_merge_patch_status_subresource_and_delete(api_client: client.ApiClient, kube_api: KubeApi) -> None:
    kube_api.pause()
    apps = client.AppsV1Api(api_client)
    apps.create_namespaced_deployment("default", deployment())
    patched = apps.patch_namespaced_deployment("web", "default", {"metadata": {"annotations": {"a": "b"}}})
    assert patched.metadata.generation == 1 and patched.metadata.annotations == {"a": "b"}
    patched = apps.patch_namespaced_deployment("web", "default", {"spec": {"replicas": 4}})
    assert patched.metadata.generation == 2
    status = apps.patch_namespaced_deployment_status("web", "default", {"status": {"observedGeneration": 2}})
    assert status.status.observed_generation == 2 and status.metadata.generation == 2
    current = apps.read_namespaced_deployment_status("web", "default")
    current.status.observed_generation = 1
    replaced = apps.replace_namespaced_deployment_status("web", "default", current)
    assert replaced.status.observed_generation == 1 and replaced.metadata.generation == 2
    merged = apps.patch_namespaced_deployment(
        "web",
        "default",
        {"metadata": {"labels": {"tier": "web"}}},
        _content_type="application/merge-patch+json",
    )
    assert merged.metadata.labels["tier"] == "web" and merged.metadata.generation == 2
    # Writes to the main resource ignore status.
    ignored = apps.patch_namespaced_deployment("web", "default", {"status": {"observedGeneration": 9}})
    assert ignored.status.observed_generation == 1
    gone = apps.delete_namespaced_deployment("web", "default")  # typed as "object": a dict
    assert gone["kind"] == "Status" and gone["status"] == "Success"
    assert gone["details"]["name"] == "web" and gone["details"]["kind"] == "deployments"
    with pytest.raises(ApiException) as exc:
        apps.delete_namespaced_deployment("web", "default")
    assert exc.value.status == 404


# --- the scripted cluster --------------------------------------------------------------------------


def test_healthy_rollout_and_update_succeed(dyn: dynamic.DynamicClient, kube_api: KubeApi) -> None:
    apply(dyn, deployment(image="registry.test/web:1"))
    verdict, d, rs, pods = wait_verdict(kube_api, dyn)
    assert verdict.state == SUCCEEDED, verdict.reason
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    progressing = next(c for c in d["status"]["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "NewReplicaSetAvailable"

    since = datetime.now(UTC)
    applied = apply(dyn, deployment(image="registry.test/web:2"))
    # Follow the rollout the way a deploy tool does: watch the Deployment from the apply's version.
    apps = client.AppsV1Api(dyn.client)
    seen = []
    stream = watch.Watch().stream(
        apps.list_namespaced_deployment,
        "default",
        field_selector="metadata.name=web",
        resource_version=applied.metadata.resourceVersion,
        timeout_seconds=10,
    )
    for event in stream:
        status = event["raw_object"]["status"]
        seen.append((status.get("observedGeneration"), status.get("updatedReplicas"), status.get("replicas")))
        if seen[-1] == (2, 2, 2):
            break
    assert seen[-1] == (2, 2, 2) and len(seen) > 1
    verdict, d, rs, pods = wait_verdict(kube_api, dyn, since=since)
    assert verdict.state == SUCCEEDED, verdict.reason
    assert d["metadata"]["generation"] == 2 and d["status"]["observedGeneration"] == 2
    revisions = {r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]: r for r in rs}
    assert set(revisions) == {"1", "2"}
    assert revisions["1"]["status"]["replicas"] == 0
    new_rs = revisions["2"]
    assert new_rs["metadata"]["ownerReferences"][0]["uid"] == d["metadata"]["uid"]
    assert new_rs["metadata"]["labels"]["pod-template-hash"] in new_rs["metadata"]["name"]
    assert all(p["spec"]["containers"][0]["image"] == "registry.test/web:2" for p in pods)
    reasons = {e["reason"] for e in kube_api.events()}
    assert {
        "ScalingReplicaSet",
        "SuccessfulCreate",
        "Scheduled",
        "Pulling",
        "Pulled",
        "Created",
        "Started",
        "SuccessfulDelete",
    } <= reasons


def test_crashloop_rollout_is_doomed_and_old_pods_keep_serving(
    dyn: dynamic.DynamicClient, api_client: client.ApiClient, kube_api: KubeApi
) -> None:
    kube_api.behave("registry.test/web:bad", "crashloop")
    apply(dyn, deployment(image="registry.test/web:1"))
    assert wait_verdict(kube_api, dyn)[0].state == SUCCEEDED
    since = datetime.now(UTC)
    apply(dyn, deployment(image="registry.test/web:bad"))
    verdict, d, rs, pods = wait_verdict(kube_api, dyn, since=since)
    assert verdict.state == FAILED
    assert "CrashLoopBackOff" in verdict.reason
    doomed = verdict.doomed_pods[0]
    # maxUnavailable 25% of 2 rounds down to 0: both old pods are still there and ready.
    old_ready = [
        p
        for p in pods
        if p["spec"]["containers"][0]["image"] == "registry.test/web:1"
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"])
    ]
    assert len(old_ready) == 2
    log = client.CoreV1Api(api_client).read_namespaced_pod_log(doomed, "default", tail_lines=2)
    assert log.splitlines() == [
        "error: could not connect to database at db:5432: connection refused",
        "exiting with status 1",
    ]
    notable = [e for e in kube_api.events(involved_name=doomed) if not is_routine_event(e)]
    assert notable and notable[0]["reason"] == "BackOff" and notable[0]["type"] == "Warning"
    cs = next(p for p in pods if p["metadata"]["name"] == doomed)["status"]["containerStatuses"][0]
    assert cs["restartCount"] >= 1 and cs["lastState"]["terminated"]["exitCode"] == 1


def test_image_not_found_is_doomed(
    dyn: dynamic.DynamicClient, api_client: client.ApiClient, kube_api: KubeApi
) -> None:
    kube_api.behave("registry.test/web:missing", "image-not-found")
    apply(dyn, deployment(image="registry.test/web:missing", replicas=1))
    verdict = wait_verdict(kube_api, dyn)[0]
    assert verdict.state == FAILED and "not found" in verdict.reason
    events = (
        client.CoreV1Api(api_client)
        .list_namespaced_event("default", field_selector=f"involvedObject.name={verdict.doomed_pods[0]}")
        .items
    )
    assert {"Failed", "Pulling"} <= {e.reason for e in events}
    with pytest.raises(ApiException) as exc:  # no logs from a container that never started
        client.CoreV1Api(api_client).read_namespaced_pod_log(verdict.doomed_pods[0], "default")
    assert exc.value.status == 400 and "is waiting to start" in status_body(exc.value)["message"]


def test_config_error_is_doomed(dyn: dynamic.DynamicClient, kube_api: KubeApi) -> None:
    kube_api.behave("registry.test/web", "config-error")  # matched by repository, any tag
    apply(dyn, deployment(image="registry.test/web:7", replicas=1))
    verdict = wait_verdict(kube_api, dyn)[0]
    assert verdict.state == FAILED and 'configmap "app-config" not found' in verdict.reason


def test_crash_looping_init_container_is_doomed(dyn: dynamic.DynamicClient, kube_api: KubeApi) -> None:
    kube_api.behave("registry.test/wait-for-db:1", "crashloop")
    body = deployment(replicas=1)
    body["spec"]["template"]["spec"]["initContainers"] = [
        {"name": "wait-for-db", "image": "registry.test/wait-for-db:1"}
    ]
    apply(dyn, body)
    verdict, d, rs, pods = wait_verdict(kube_api, dyn)
    assert verdict.state == FAILED
    assert 'init container "wait-for-db" is in CrashLoopBackOff' in verdict.reason
    main = pods[0]["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
    assert main == "PodInitializing"
    assert kube_api.logs(pods[0]["metadata"]["name"], "wait-for-db")[0] == "wait-for-db: starting"


def test_stuck_rollout_hits_the_progress_deadline(dyn: dynamic.DynamicClient, kube_api: KubeApi) -> None:
    kube_api.behave("registry.test/web:stuck", "stuck")
    since = datetime.now(UTC)
    apply(dyn, deployment(image="registry.test/web:stuck", replicas=1, progressDeadlineSeconds=1))
    verdict, d, rs, pods = wait_verdict(kube_api, dyn, since=since, timeout=15)
    assert verdict.state == FAILED and "ProgressDeadlineExceeded" in verdict.reason
    reason = timeout_reason("Deployment", d, pods)
    assert 'container "web" never passed its readinessProbe (httpGet /healthz on port 8080)' in reason


def test_unschedulable_pods_explain_the_timeout(dyn: dynamic.DynamicClient, kube_api: KubeApi) -> None:
    kube_api.behave("registry.test/web:huge", "unschedulable")
    apply(dyn, deployment(image="registry.test/web:huge", replicas=1))
    kube_api.wait_for(lambda: any(e["reason"] == "FailedScheduling" for e in kube_api.events()))
    verdict, d, rs, pods = rollout_verdict(dyn)
    assert verdict.state == "progressing"
    assert (
        "cannot be scheduled (Unschedulable): 0/3 nodes are available: 3 Insufficient cpu."
        in timeout_reason("Deployment", d, pods)
    )


def test_slow_pods_become_ready_later(dyn: dynamic.DynamicClient, kube_api: KubeApi) -> None:
    kube_api.behave("registry.test/web:slow", "slow", ready_after=0.8)
    apply(dyn, deployment(image="registry.test/web:slow", replicas=1))
    kube_api.wait_for(
        lambda: rollout_verdict(dyn)[3] and rollout_verdict(dyn)[3][0]["status"].get("phase") == "Running"
    )
    assert rollout_verdict(dyn)[0].state == "progressing"
    assert wait_verdict(kube_api, dyn)[0].state == SUCCEEDED


def test_migration_job_and_bare_task_pod(api_client: client.ApiClient, kube_api: KubeApi) -> None:
    kube_api.behave(
        "registry.test/web:2", "succeeds", logs=["== 20240514 AddIndex: migrated"], run_seconds=0.3
    )
    kube_api.behave("registry.test/web:broken", "fails", exit_code=3)
    batch, v1 = client.BatchV1Api(api_client), client.CoreV1Api(api_client)

    def job(name: str, image: str) -> dict[str, Any]:
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "task", "image": image, "command": ["bin/migrate"]}],
                    }
                },
            },
        }

    batch.create_namespaced_job("default", job("migrate-ok", "registry.test/web:2"))
    batch.create_namespaced_job("default", job("migrate-bad", "registry.test/web:broken"))

    def judged(name: str):
        j = kube_api.get("Job", name)
        pods = kube_api.list("Pod", label_selector=f"job-name={name}")
        verdict = job_verdict(j, pods)
        return verdict.done and (verdict, pods)

    ok, ok_pods = kube_api.wait_for(lambda: judged("migrate-ok"))
    assert ok.state == SUCCEEDED
    assert (
        v1.read_namespaced_pod_log(ok_pods[0]["metadata"]["name"], "default")
        == "== 20240514 AddIndex: migrated\n"
    )
    bad, bad_pods = kube_api.wait_for(lambda: judged("migrate-bad"))
    assert bad.state == FAILED and "BackoffLimitExceeded" in bad.reason
    term = bad_pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error"

    # A bare pod, its log followed as a stream until the container exits.
    v1.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "task"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "task", "image": "registry.test/web:2"}],
            },
        },
    )
    kube_api.wait_for(lambda: kube_api.logs("task"))
    lines = list(watch.Watch().stream(v1.read_namespaced_pod_log, "task", "default", follow=True))
    assert lines == ["== 20240514 AddIndex: migrated"]
    final = kube_api.wait_for(
        lambda: (p := kube_api.get("Pod", "task"))["status"]["phase"] == "Succeeded" and p
    )
    assert pod_verdict(final).state == SUCCEEDED


def test_deleting_a_deployment_cascades(
    dyn: dynamic.DynamicClient, api_client: client.ApiClient, kube_api: KubeApi
) -> None:
    apply(dyn, deployment())
    assert wait_verdict(kube_api, dyn)[0].state == SUCCEEDED
    client.AppsV1Api(api_client).delete_namespaced_deployment("web", "default")
    assert kube_api.list("ReplicaSet") == [] and kube_api.list("Pod") == []
