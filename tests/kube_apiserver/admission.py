"""Defaulting and validation, the parts a deploy tool can observe.

Defaulting runs after every write and is idempotent, so a re-apply of the same manifest produces the same
stored object (and so no new generation or resourceVersion). Validation answers 422 Invalid with the
field paths and wording of the real server.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from .resources import Resource
from .status import ApiError, invalid

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_WORKLOADS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet")


def go_map(labels: dict[str, Any]) -> str:
    inner = ", ".join(f'"{k}":"{v}"' for k, v in sorted(labels.items()))
    return f"map[string]string{{{inner}}}"


# --- defaulting -------------------------------------------------------------------------------------


def _default_probe(probe: dict[str, Any] | None) -> None:
    if not probe:
        return
    for key, value in (
        ("failureThreshold", 3),
        ("periodSeconds", 10),
        ("successThreshold", 1),
        ("timeoutSeconds", 1),
    ):
        probe.setdefault(key, value)
    if "httpGet" in probe:
        probe["httpGet"].setdefault("scheme", "HTTP")


def _default_container(c: dict[str, Any]) -> None:
    image = str(c.get("image", ""))
    tagged = "@" in image or ":" in image.rsplit("/", 1)[-1]
    latest = image.endswith(":latest") or not tagged
    c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    c.setdefault("resources", {})
    for port in c.get("ports") or []:
        port.setdefault("protocol", "TCP")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        _default_probe(c.get(probe))


def default_pod_spec(spec: dict[str, Any], restart: str = "Always") -> None:
    spec.setdefault("restartPolicy", restart)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("terminationGracePeriodSeconds", 30)
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        _default_container(c)


def _default_template(template: dict[str, Any] | None, restart: str = "Always") -> None:
    if not isinstance(template, dict):
        return
    template.setdefault("metadata", {}).setdefault("creationTimestamp", None)
    default_pod_spec(template.setdefault("spec", {}), restart)


def default(res: Resource, obj: dict[str, Any], creating: bool) -> None:
    kind = res.kind
    meta = obj.setdefault("metadata", {})
    spec = obj.get("spec")
    if kind == "Namespace":
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
    elif kind == "Secret":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None) or {}
        data = obj.setdefault("data", {}) if string_data else obj.get("data")
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
    elif kind == "Service" and isinstance(spec, dict):
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
        obj.setdefault("status", {"loadBalancer": {}})
    elif kind == "Pod" and isinstance(spec, dict):
        default_pod_spec(spec)
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        if creating:  # the DefaultTolerationSeconds admission plugin
            spec.setdefault(
                "tolerations",
                [
                    {
                        "effect": "NoExecute",
                        "key": "node.kubernetes.io/not-ready",
                        "operator": "Exists",
                        "tolerationSeconds": 300,
                    },
                    {
                        "effect": "NoExecute",
                        "key": "node.kubernetes.io/unreachable",
                        "operator": "Exists",
                        "tolerationSeconds": 300,
                    },
                ],
            )
        obj.setdefault("status", {"phase": "Pending", "qosClass": "BestEffort"})
    elif kind in _WORKLOADS and isinstance(spec, dict):
        if kind != "DaemonSet":
            spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        if kind == "Deployment":
            spec.setdefault("progressDeadlineSeconds", 600)
            spec.setdefault(
                "strategy",
                {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            )
        elif kind == "StatefulSet":
            spec.setdefault("podManagementPolicy", "OrderedReady")
            spec.setdefault("updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
            spec.setdefault(
                "persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"}
            )
        elif kind == "DaemonSet":
            spec.setdefault(
                "updateStrategy",
                {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            )
        _default_template(spec.get("template"))
        obj.setdefault("status", {})
    elif kind == "Job" and isinstance(spec, dict):
        for key, value in (
            ("backoffLimit", 6),
            ("completions", 1),
            ("parallelism", 1),
            ("completionMode", "NonIndexed"),
            ("suspend", False),
            ("podReplacementPolicy", "TerminatingOrFailed"),
            ("manualSelector", False),
        ):
            spec.setdefault(key, value)
        _default_template(spec.get("template"), restart="Never")
        uid = meta.get("uid")
        if uid and not spec.get("manualSelector"):
            name = meta.get("name", "")
            labels = {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": name,
                "controller-uid": uid,
                "job-name": name,
            }
            spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
            template = spec.get("template")
            if isinstance(template, dict):
                template.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
            meta.setdefault("labels", {}).update({k: v for k, v in labels.items() if k not in meta["labels"]})
        obj.setdefault("status", {})


# --- validation ---------------------------------------------------------------------------------------


def _containers(spec: dict[str, Any], prefix: str) -> list[tuple[str, str, str]]:
    causes: list[tuple[str, str, str]] = []
    containers = spec.get("containers")
    if not containers:
        return [("FieldValueRequired", f"{prefix}.containers", "Required value")]
    for kind in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(kind) or []):
            if not c.get("name"):
                causes.append(("FieldValueRequired", f"{prefix}.{kind}[{i}].name", "Required value"))
            if not c.get("image"):
                causes.append(("FieldValueRequired", f"{prefix}.{kind}[{i}].image", "Required value"))
    return causes


def validate(res: Resource, obj: dict[str, Any], old: dict[str, Any] | None = None) -> None:
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    causes: list[tuple[str, str, str]] = []
    if not name:
        causes.append(
            ("FieldValueRequired", "metadata.name", "Required value: name or generateName is required")
        )
    elif not _NAME_RE.match(name) or len(name) > 253:
        causes.append(
            (
                "FieldValueInvalid",
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                "character (e.g. 'example.com', regex used for validation is "
                "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            )
        )
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    if res.kind == "Pod":
        causes += _containers(spec, "spec")
    elif res.kind in _WORKLOADS or res.kind == "Job":
        template = spec.get("template")
        selector = spec.get("selector")
        if res.kind != "Job" and not selector:
            causes.append(("FieldValueRequired", "spec.selector", "Required value"))
        if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
            causes.append(("FieldValueRequired", "spec.template.spec.containers", "Required value"))
        else:
            causes += _containers(template["spec"], "spec.template.spec")
            labels = (template.get("metadata") or {}).get("labels") or {}
            wanted = (selector or {}).get("matchLabels") or {}
            if selector and any(labels.get(k) != v for k, v in wanted.items()):
                causes.append(
                    (
                        "FieldValueInvalid",
                        "spec.template.metadata.labels",
                        f"Invalid value: {go_map(labels)}: `selector` does not match template `labels`",
                    )
                )
            restart = template["spec"].get("restartPolicy")
            if res.kind == "Job" and restart not in ("Never", "OnFailure"):
                causes.append(
                    (
                        "FieldValueRequired",
                        "spec.template.spec.restartPolicy",
                        'Required value: valid values: "OnFailure", "Never"',
                    )
                )
            if res.kind != "Job" and restart not in (None, "Always"):
                causes.append(
                    (
                        "FieldValueNotSupported",
                        "spec.template.spec.restartPolicy",
                        f'Unsupported value: "{restart}": supported values: "Always"',
                    )
                )
        if old is not None and res.kind != "Job":
            old_selector = (old.get("spec") or {}).get("selector")
            if old_selector is not None and selector != old_selector:
                causes.append(
                    ("FieldValueInvalid", "spec.selector", f"Invalid value: {selector}: field is immutable")
                )
    if causes:
        raise invalid(res, name, causes)


def check_name_matches(res: Resource, obj: dict[str, Any], name: str | None, namespace: str | None) -> None:
    meta = obj.get("metadata") or {}
    if name is not None and meta.get("name") and meta["name"] != name:
        raise ApiError(
            400,
            "BadRequest",
            f"the name of the object ({meta['name']}) does not match the name on the URL ({name})",
        )
    if res.namespaced and namespace and meta.get("namespace") and meta["namespace"] != namespace:
        raise ApiError(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        )
