"""The API resources this server serves, and the discovery documents the clients read.

Shapes follow `kubectl get --raw /apis/apps/v1` on Kubernetes 1.30: APIResourceList with name,
singularName, namespaced, kind, verbs, shortNames and storageVersionHash.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
SERVER_VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0",
    "gitCommit": "7c48c2bd72b9bf5c44d21d7338cc7bea77d0ad2a",
    "gitTreeState": "clean",
    "buildDate": "2024-04-17T17:27:03Z",
    "goVersion": "go1.22.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()  # "status", "log"
    has_generation: bool = False  # metadata.generation tracks spec changes
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = tuple(VERBS)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.api_version}/{self.plural}"

    @property
    def has_status(self) -> bool:
        # With a status subresource, writes to the main resource ignore status and vice versa.
        return "status" in self.subresources

    @property
    def qualified(self) -> str:
        """How error messages name the resource: `deployments.apps`, `pods`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """How 422 messages name the kind: `Deployment.apps`, `Pod`."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def discovery(self) -> list[dict[str, Any]]:
        singular = self.kind.lower()
        digest = hashlib.sha256(self.key.encode()).digest()[:8]
        main: dict[str, Any] = {
            "name": self.plural,
            "singularName": singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
            "storageVersionHash": base64.b64encode(digest).decode(),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        out = [main]
        for sub in self.subresources:
            verbs = ["get"] if sub == "log" else ["get", "patch", "update"]
            kind = "Pod" if sub == "log" else self.kind
            out.append(
                {
                    "name": f"{self.plural}/{sub}",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": kind,
                    "verbs": verbs,
                }
            )
        return out


_NS_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")

RESOURCES: list[Resource] = [
    Resource("", "v1", "namespaces", "Namespace", False, ("ns",), ("status",), verbs=_NS_VERBS),
    Resource("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    Resource("", "v1", "secrets", "Secret"),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    Resource(
        "", "v1", "services", "Service", short_names=("svc",), subresources=("status",), categories=("all",)
    ),
    Resource(
        "", "v1", "pods", "Pod", short_names=("po",), subresources=("log", "status"), categories=("all",)
    ),
    Resource("", "v1", "events", "Event", short_names=("ev",)),
    Resource(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        short_names=("pvc",),
        subresources=("status",),
    ),
    Resource("", "v1", "resourcequotas", "ResourceQuota", short_names=("quota",), subresources=("status",)),
    Resource(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        short_names=("deploy",),
        subresources=("status",),
        has_generation=True,
        categories=("all",),
    ),
    Resource(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        short_names=("rs",),
        subresources=("status",),
        has_generation=True,
        categories=("all",),
    ),
    Resource(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        short_names=("sts",),
        subresources=("status",),
        has_generation=True,
        categories=("all",),
    ),
    Resource(
        "apps",
        "v1",
        "daemonsets",
        "DaemonSet",
        short_names=("ds",),
        subresources=("status",),
        has_generation=True,
        categories=("all",),
    ),
    Resource(
        "batch", "v1", "jobs", "Job", subresources=("status",), has_generation=True, categories=("all",)
    ),
    Resource("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    Resource(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        short_names=("netpol",),
        has_generation=True,
    ),
    Resource(
        "networking.k8s.io",
        "v1",
        "ingresses",
        "Ingress",
        short_names=("ing",),
        subresources=("status",),
        has_generation=True,
    ),
]

BY_PATH: dict[tuple[str, str, str], Resource] = {(r.group, r.version, r.plural): r for r in RESOURCES}
BY_KIND: dict[str, Resource] = {r.kind: r for r in RESOURCES}
BY_PLURAL: dict[str, Resource] = {r.plural: r for r in RESOURCES}
GROUPS: list[str] = sorted({r.group for r in RESOURCES if r.group})


def resource_for(name: str) -> Resource:
    """Tests may name a resource by plural ("deployments") or kind ("Deployment")."""
    return BY_PLURAL.get(name) or BY_KIND[name]


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group_doc(group: str) -> dict[str, Any]:
    version = {"groupVersion": f"{group}/v1", "version": "v1"}
    return {"name": group, "versions": [version], "preferredVersion": version}


def api_group_list() -> dict[str, Any]:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group_doc(g) for g in GROUPS]}


def api_group(group: str) -> dict[str, Any] | None:
    if group not in GROUPS:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(group)}


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    members = [r for r in RESOURCES if r.group == group and r.version == version]
    if not members:
        return None
    group_version = f"{group}/{version}" if group else version
    resources: list[dict[str, Any]] = []
    for r in members:
        resources.extend(r.discovery())
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }
