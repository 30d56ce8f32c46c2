"""The app's manifests: read from the commit being deployed, templated, labelled and pinned to the digest.

Pure data work, no cluster and no client library, so `render` is cheap and testable without a cluster.

Templating is deliberately tiny: `${CONVEYOR_…}` placeholders from a fixed list (PLACEHOLDERS), replaced
inside string values after YAML parsing, so a value can never add structure or run code. Anything else
that looks like `${…}` or `$VAR` (shell in a command, say) is left alone; `$${CONVEYOR_X}` is a literal.
`${CONVEYOR_SECRET_NAME}` stays in the rendered spec and is filled in from conveyor's environment only
when objects are sent to the cluster, so secret values never reach the ledger.
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from conveyor.errors import BadInput

MANAGED_BY = "app.kubernetes.io/managed-by"
L_APP, L_ENV, L_ROLE = "conveyor.dev/app", "conveyor.dev/env", "conveyor.dev/role"
A_RELEASE, A_SOURCE = "conveyor.dev/release", "conveyor.dev/source"

PLACEHOLDERS = {
    "CONVEYOR_APP": "the app's name",
    "CONVEYOR_ENV": "the environment's name",
    "CONVEYOR_NAMESPACE": "the target namespace",
    "CONVEYOR_SHA": "the full git SHA of the release",
    "CONVEYOR_SHORT_SHA": "its first 12 characters",
    "CONVEYOR_REPOSITORY": "the image repository (config `image`)",
    "CONVEYOR_DIGEST": "the image digest, sha256:…",
    "CONVEYOR_IMAGE": "repository@digest",
}
SECRET_PREFIX = "CONVEYOR_SECRET_"
_PLACEHOLDER = re.compile(r"(\$?)\$\{(CONVEYOR_[A-Za-z0-9_]+)\}")

# Kinds whose pods the verifier watches; their top-level objects carry the release annotation.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "Pod")
# Applied first, group by group in this order (krane's), before pre-deploy tasks and everything else.
PRIORITY_KINDS = (
    "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim", "NetworkPolicy",
    "ResourceQuota",
)
# Never created, changed or pruned by an app deploy: they hold data or are shared by the whole cluster.
FORBIDDEN_KINDS = ("Namespace",)
PROTECTED_KINDS = (
    "Namespace", "PersistentVolumeClaim", "PersistentVolume", "CustomResourceDefinition", "StorageClass",
)


@dataclass(frozen=True)
class Release:
    """The values templating may use."""

    app: str
    env: str
    namespace: str
    sha: str
    repository: str
    digest: str

    def values(self) -> dict[str, str]:
        return {
            "CONVEYOR_APP": self.app,
            "CONVEYOR_ENV": self.env,
            "CONVEYOR_NAMESPACE": self.namespace,
            "CONVEYOR_SHA": self.sha,
            "CONVEYOR_SHORT_SHA": self.sha[:12],
            "CONVEYOR_REPOSITORY": self.repository,
            "CONVEYOR_DIGEST": self.digest,
            "CONVEYOR_IMAGE": f"{self.repository}@{self.digest}",
        }


# --- reading the folder from the commit ------------------------------------------------------------------


def read_folder(repo_dir: Path, sha: str, folder: str) -> list[tuple[str, str]]:
    """(path, text) of every *.yaml / *.yml file under `folder` in commit `sha`, sorted by path.

    Read from the commit, like the image is built from it: deploying (or promoting) a commit applies that
    commit's manifests, whatever the working tree holds.
    """
    clean = PurePosixPath(folder.strip("/") or ".")
    if clean.is_absolute() or ".." in clean.parts:
        raise BadInput(f"manifests: '{folder}' must be a folder inside the app repo")
    prefix = "" if str(clean) == "." else f"{clean}/"
    listing = _git(repo_dir, "ls-tree", "-r", "-z", "--name-only", sha, "--", prefix or ".")
    names = sorted(n for n in listing.split("\0") if n.endswith((".yaml", ".yml")))
    if not names:
        raise BadInput(f"manifests: commit {sha[:12]} has no *.yaml or *.yml files under '{folder}'")
    return [(name, _git(repo_dir, "show", f"{sha}:{name}")) for name in names]


def _git(repo_dir: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BadInput(f"manifests: git {' '.join(args[:2])} in {repo_dir} failed: {proc.stderr.strip()}")
    return proc.stdout


# --- parsing and templating -----------------------------------------------------------------------------


def check_placeholders(path: str, text: str, secrets: list[str]) -> None:
    """Every `${CONVEYOR_…}` must be a known value or a declared secret; say where one is not."""
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        for escaped, name in _PLACEHOLDER.findall(line):
            if escaped or name in PLACEHOLDERS:
                continue
            if name.startswith(SECRET_PREFIX):
                if name[len(SECRET_PREFIX):] not in secrets:
                    problems.append(f"{path}:{number}: ${{{name}}} names secret "
                                    f"'{name[len(SECRET_PREFIX):]}', which this environment's `secrets:` "
                                    "does not list")
                continue
            problems.append(f"{path}:{number}: unknown placeholder ${{{name}}} (known: "
                            f"{', '.join(PLACEHOLDERS)}, {SECRET_PREFIX}<NAME>)")
    if problems:
        raise BadInput("\n".join(problems))


def substitute(value: Any, lookup: Callable[[str], str | None]) -> Any:
    """Replace placeholders in every string (keys too) of a parsed document. `lookup` returns None for a
    name it leaves in place (secrets at render time); `$${X}` becomes the literal `${X}`."""

    def one(text: str) -> str:
        def repl(match: re.Match[str]) -> str:
            escaped, name = match.group(1), match.group(2)
            if escaped:
                # Keep the escape until the final pass, so a literal never turns into a placeholder.
                return match.group(0)
            found = lookup(name)
            return match.group(0) if found is None else found

        return _PLACEHOLDER.sub(repl, text)

    if isinstance(value, str):
        return one(value)
    if isinstance(value, dict):
        return {substitute(k, lookup): substitute(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, lookup) for v in value]
    return value


def unescape(value: Any) -> Any:
    """`$${X}` → `${X}`: the last pass, right before an object goes to the cluster."""
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: m.group(0)[1:] if m.group(1) else m.group(0), value)
    if isinstance(value, dict):
        return {unescape(k): unescape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unescape(v) for v in value]
    return value


def secret_names(value: Any) -> set[str]:
    """Names of the secrets an object still refers to (after render)."""
    found: set[str] = set()
    if isinstance(value, str):
        for escaped, name in _PLACEHOLDER.findall(value):
            if not escaped and name.startswith(SECRET_PREFIX):
                found.add(name[len(SECRET_PREFIX):])
    elif isinstance(value, dict):
        for k, v in value.items():
            found |= secret_names(k) | secret_names(v)
    elif isinstance(value, list):
        for v in value:
            found |= secret_names(v)
    return found


def parse_documents(path: str, text: str) -> list[tuple[str, dict[str, Any]]]:
    """(source, object) per YAML document; `kind: List` documents are flattened."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise BadInput(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    out = []
    for index, doc in enumerate(docs, 1):
        if doc is None:
            continue
        source = f"{path}#{index}"
        if not isinstance(doc, dict):
            raise BadInput(f"{source}: a manifest must be a mapping with apiVersion, kind and metadata")
        if doc.get("kind") == "List" or str(doc.get("kind", "")).endswith("List") and "items" in doc:
            for item_index, item in enumerate(doc.get("items") or [], 1):
                out.append((f"{source}.items[{item_index}]", item))
            continue
        out.append((source, doc))
    return out


# --- images ----------------------------------------------------------------------------------------------


def image_repository(image: str) -> str:
    """`reg:5000/team/app:tag@sha256:…` → `reg:5000/team/app`; Docker Hub short names normalised."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    for hub in ("docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/"):
        if name.startswith(hub):
            name = name[len(hub):]
            break
    return name


def same_repository(image: str, repository: str) -> bool:
    return image_repository(image) == image_repository(repository)


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod spec inside an object: a Pod's own, a workload's template, a CronJob's job template, and
    any custom resource shaped like a workload (spec.template.spec with containers)."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    if obj.get("kind") == "Pod":
        return [spec]
    found = []
    template = spec.get("template")
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        found.append(template["spec"])
    job = spec.get("jobTemplate")
    if isinstance(job, dict):
        inner = ((job.get("spec") or {}).get("template") or {}).get("spec")
        if isinstance(inner, dict):
            found.append(inner)
    return found


def pod_template(obj: dict[str, Any]) -> dict[str, Any] | None:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Pod":
        return {"metadata": obj.get("metadata") or {}, "spec": spec}
    template = spec.get("template")
    return template if isinstance(template, dict) else None


def _containers(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers"):
        for container in pod_spec.get(key) or []:
            if isinstance(container, dict):
                yield container


def _image_fields(value: Any) -> Iterator[dict[str, Any]]:
    """Every mapping with a string `image` key, anywhere (custom resources name images too)."""
    if isinstance(value, dict):
        if isinstance(value.get("image"), str):
            yield value
        for v in value.values():
            yield from _image_fields(v)
    elif isinstance(value, list):
        for v in value:
            yield from _image_fields(v)


def pin_images(obj: dict[str, Any], repository: str, image: str) -> list[str]:
    """Point every image of the app's repository at repository@digest, whatever tag or digest the
    manifest named. Returns a line per rewrite (for the plan and the ledger)."""
    notes = []
    label = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
    for holder in _image_fields(obj):
        current = holder["image"]
        if same_repository(current, repository) and current != image:
            holder["image"] = image
            where = f" container {holder['name']}" if isinstance(holder.get("name"), str) else ""
            notes.append(f"{label}{where}: {current} pinned to {image}")
    return notes


def runs_image(obj: dict[str, Any], repository: str) -> bool:
    return any(same_repository(h["image"], repository) for h in _image_fields(obj))


def set_env(obj: dict[str, Any], repository: str, values: dict[str, str]) -> None:
    """The environment's `env:` in every container running the app image (same meaning as on the
    container host), replacing an entry of the same name."""
    if not values:
        return
    for pod_spec in pod_specs(obj):
        for container in _containers(pod_spec):
            if not same_repository(str(container.get("image", "")), repository):
                continue
            env = [e for e in container.get("env") or [] if not (isinstance(e, dict) and e.get("name") in values)]
            env += [{"name": k, "value": v} for k, v in values.items()]
            container["env"] = env


# --- the whole render --------------------------------------------------------------------------------------


def label(obj: dict[str, Any], labels: dict[str, str]) -> None:
    """conveyor's labels on the object and on its pod templates, so watches and pruning can select them."""
    meta = obj.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    spec = obj.get("spec")
    if not isinstance(spec, dict) or obj.get("kind") == "Pod":
        return
    templates = [spec.get("template")]
    job = spec.get("jobTemplate")
    if isinstance(job, dict):
        templates.append(job)
        templates.append((job.get("spec") or {}).get("template"))
    selector_only = {k: v for k, v in labels.items() if k != MANAGED_BY}
    for template in templates:
        if isinstance(template, dict):
            tmeta = template.setdefault("metadata", {})
            tmeta["labels"] = {**(tmeta.get("labels") or {}), **selector_only}


def render_manifests(
    files: list[tuple[str, str]],
    release: Release,
    *,
    env_vars: dict[str, str],
    secrets: list[str],
    timeout: float,
    timeouts: dict[str, float],
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rendered manifests (one entry per object, with its source and rollout timeout) and the pin notes."""
    values = release.values()
    labels = {MANAGED_BY: "conveyor", L_APP: release.app, L_ENV: release.env}
    entries: list[dict[str, Any]] = []
    notes: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    for path, text in files:
        check_placeholders(path, text, secrets)
        for source, raw in parse_documents(path, text):
            obj = substitute(raw, values.get)
            kind, api_version = obj.get("kind"), obj.get("apiVersion")
            meta = obj.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            if not isinstance(kind, str) or not isinstance(api_version, str) or not isinstance(name, str):
                raise BadInput(f"{source}: every manifest needs apiVersion, kind and metadata.name "
                               "(generateName is not supported: conveyor must know what it applied)")
            if kind in FORBIDDEN_KINDS:
                raise BadInput(f"{source}: {kind} objects are not deployed by conveyor; create the namespace "
                               "outside the app's manifests")
            namespace = meta.get("namespace")
            if namespace not in (None, release.namespace):
                raise BadInput(f"{source}: {kind}/{name} names namespace '{namespace}', but this environment "
                               f"deploys into '{release.namespace}'")
            key = (kind, name)
            if key in seen:
                raise BadInput(f"{source}: {kind}/{name} is already defined in {seen[key]}")
            seen[key] = source
            if kind == "Secret":
                _refuse_literal_secret(source, obj)
            label(obj, labels)
            notes += pin_images(obj, release.repository, values["CONVEYOR_IMAGE"])
            set_env(obj, release.repository, env_vars)
            entries.append({
                "source": source,
                "apiVersion": api_version,
                "kind": kind,
                "name": name,
                "timeout": timeouts.get(f"{kind}/{name}", timeouts.get(kind, timeout)),
                "object": obj,
            })
    if not any(runs_image(e["object"], release.repository) for e in entries):
        raise BadInput(f"no container in the manifests runs {release.repository}: name it (by any tag, or "
                       "${CONVEYOR_IMAGE}) so conveyor can pin it to the release's digest")
    return entries, notes


def _refuse_literal_secret(source: str, obj: dict[str, Any]) -> None:
    """A Secret's values would be stored in the ledger with the release: allow only placeholders."""
    for field in ("data", "stringData"):
        for key, value in (obj.get(field) or {}).items():
            if not isinstance(value, str) or not re.fullmatch(r"(\$\{CONVEYOR_SECRET_[A-Za-z0-9_]+\})+", value):
                raise BadInput(
                    f"{source}: Secret {obj['metadata']['name']} holds a literal value for {field}.{key}; it would "
                    "be stored in the ledger with every release. Use ${CONVEYOR_SECRET_NAME} (read from "
                    "conveyor's environment at deploy time, never stored) or create the Secret outside conveyor"
                )


def task_template(
    entries: list[dict[str, Any]], repository: str, chosen: str | None, labels: dict[str, str]
) -> dict[str, Any] | None:
    """The pod that pre-deploy tasks and `conveyor run` use: the chosen workload's pod settings (env,
    envFrom, volumes, service account, security context, scheduling), only its app container, with no
    probes or ports, and only conveyor's labels (so no Service routes traffic to a task)."""
    candidates = [e for e in entries if e["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
    if chosen is not None:
        candidates = [e for e in entries if f"{e['kind']}/{e['name']}" == chosen]
        if not candidates:
            raise BadInput(f"task_workload: {chosen} is not in the manifests")
    for entry in candidates:
        template = pod_template(entry["object"])
        if template is None:
            continue
        spec = copy.deepcopy(template.get("spec") or {})
        app_containers = [c for c in spec.get("containers") or [] if same_repository(c.get("image", ""), repository)]
        if not app_containers:
            if chosen is not None:
                raise BadInput(f"task_workload: {chosen} has no container running {repository}")
            continue
        container = app_containers[0]
        for key in ("readinessProbe", "livenessProbe", "startupProbe", "lifecycle", "ports"):
            container.pop(key, None)
        spec["containers"] = [container]
        spec["restartPolicy"] = "Never"
        for key in ("nodeName", "hostname", "subdomain"):
            spec.pop(key, None)
        annotations = dict((template.get("metadata") or {}).get("annotations") or {})
        return {
            "workload": f"{entry['kind']}/{entry['name']}",
            "container": container.get("name", "app"),
            "metadata": {"labels": {**labels, L_ROLE: "task"}, "annotations": annotations},
            "spec": spec,
        }
    return None
