"""The Kubernetes target: implements `conveyor.targets.base.Target`.

render → a spec holding the fully rendered manifests and every connection and rollout setting, so a
rollback re-applies it exactly without reading config or files again. run_task → validate everything
with a server-side dry run, apply the priority groups, run the task pod. deploy → dry run, apply
(priority groups, then the rest), prune if asked, verify by watching, summarise.

The `kubernetes` client is imported inside the functions that talk to a cluster, never at import time.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import BadInput, TargetError
from conveyor.targets.base import Artifact, LiveState, Outcome, Reporter, release_values
from conveyor.targets.kubernetes import manifests as m

if TYPE_CHECKING:
    from conveyor.config.models import AppConfig, Environment
    from conveyor.targets.kubernetes.client import Session

TARGET_TYPE = "kubernetes"
SPEC_KEYS = ("app", "env", "image", "repository", "sha", "digest", "cluster", "namespace", "manifests", "tasks")


def _check_spec(spec: dict[str, Any]) -> None:
    missing = [k for k in SPEC_KEYS if k not in spec]
    if spec.get("target") != TARGET_TYPE or missing:
        raise BadInput(f"not a complete kubernetes spec (missing: {', '.join(missing) or 'target'}); was it "
                       "recorded by an older conveyor?")


class Kubernetes:
    type = TARGET_TYPE

    def __init__(self, state_dir: Path, repo_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.repo_dir = Path(repo_dir)
        self._sessions: dict[str, Session] = {}
        self._prepared: set[str] = set()  # specs whose priority groups run_task already applied

    # -- render ---------------------------------------------------------------------------------------

    def render(self, app: AppConfig, env: Environment, artifact: Artifact) -> dict[str, Any]:
        target = env.target
        release = m.Release(app.app, env.name, target.namespace, artifact.sha, artifact.repository, artifact.digest)
        files = m.read_folder(self.repo_dir, artifact.sha, target.manifests)
        entries, notes = m.render_manifests(
            files, release, env_vars=dict(env.env), secrets=list(env.secrets), timeout=target.timeout,
            timeouts=dict(target.timeouts),
        )
        labels = {m.MANAGED_BY: "conveyor", m.L_APP: app.app, m.L_ENV: env.name}
        tasks = [{"name": t.name, "command": list(t.command), "timeout": t.timeout} for t in app.tasks_for(env)]
        task_pod = m.task_template(entries, artifact.repository, target.task_workload, labels)
        if tasks and task_pod is None:
            raise BadInput(f"{env.name}: pre-deploy tasks need a Deployment, StatefulSet or DaemonSet running "
                           f"{artifact.repository} to take pod settings from (or set target.task_workload)")
        kubeconfig = target.kubeconfig
        if kubeconfig is not None:
            path = Path(kubeconfig).expanduser()
            kubeconfig = str(path if path.is_absolute() else (self.repo_dir / path).resolve())
        return {
            **release_values(TARGET_TYPE, app.app, env.name, artifact),
            # connection settings only: credentials stay in the kubeconfig / service account
            "cluster": {"kubeconfig": kubeconfig, "context": target.context, "in_cluster": target.in_cluster},
            "namespace": target.namespace,
            "field_manager": "conveyor",
            "labels": labels,
            "prune": target.prune,
            "secrets": list(env.secrets),  # names only: values are read from the environment at apply time
            "manifests": entries,
            "pinned": notes,
            "task_pod": task_pod,
            "tasks": tasks,
        }

    # -- connection -------------------------------------------------------------------------------------

    def _session(self, spec: dict[str, Any]) -> Session:
        from conveyor.targets.kubernetes.client import connect

        key = json.dumps(spec["cluster"], sort_keys=True)
        if key not in self._sessions:
            self._sessions[key] = connect(spec["cluster"], self.state_dir / "kubernetes")
        return self._sessions[key]

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()

    # -- preflight ------------------------------------------------------------------------------------

    def preflight(self, spec: dict[str, Any]) -> None:
        """Credentials work, the namespace exists, every kind is served, every secret is set."""
        from conveyor.targets.kubernetes.apply import api_message, resolve, secret_values
        from conveyor.targets.kubernetes.client import describe, tls_refusal

        _check_spec(spec)
        secret_values(spec)
        session = self._session(spec)
        from kubernetes import client

        try:
            client.CoreV1Api(session.api).read_namespace(spec["namespace"])
        except Exception as exc:
            status = getattr(exc, "status", None)
            if status == 404:
                raise BadInput(f"namespace '{spec['namespace']}' does not exist in the cluster of "
                               f"{describe(spec['cluster'])}; create it first") from None
            if status == 403:
                pass  # a deployer may lack permission to read namespaces: the dry run will tell
            elif status is not None:
                raise TargetError(f"the cluster ({session.host}) refused: {api_message(exc)}") from None
            elif (refused := tls_refusal(exc, session.host)) is not None:
                raise refused from None
            else:
                raise TargetError(f"cannot reach the cluster at {session.host} ({describe(spec['cluster'])}): "
                                  f"{type(exc).__name__}: {exc}") from None
        for entry in spec["manifests"]:
            resolve(session, entry["apiVersion"], entry["kind"])

    # -- tasks ----------------------------------------------------------------------------------------

    def _spec_key(self, spec: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def _validate_and_apply_priority(self, session: Session, spec: dict[str, Any], label: str | None,
                                     report: Reporter) -> tuple[list[Any], list[Any], dict[str, Any]]:
        """Dry-run everything (raising before any change), then apply and confirm the priority groups."""
        from conveyor.targets.kubernetes.apply import apply_items, confirm, dry_run, groups, prepare

        prepared = prepare(session, spec, label)
        problems = dry_run(session, prepared)
        if problems:
            for line in problems:
                report("validate", line)
            raise _Invalid(f"the API server refused {len(problems)} of {len(prepared)} manifests in a dry run; "
                           f"nothing was changed: {problems[0]}")
        report("validate", f"server-side dry run of {len(prepared)} objects passed")
        first, rest = groups(prepared)
        applied: dict[str, Any] = {}
        for group in first:
            applied.update(apply_items(session, group, report, changed_before=bool(applied)))
            confirm(session, group, applied)
        return prepared, rest, applied

    def run_task(self, spec: dict[str, Any], task: dict[str, Any], report: Reporter) -> None:
        from conveyor.targets.kubernetes.apply import ApplyError
        from conveyor.targets.kubernetes.tasks import run_pod

        _check_spec(spec)
        session = self._session(spec)
        key = self._spec_key(spec)
        if key not in self._prepared:
            try:
                self._validate_and_apply_priority(session, spec, None, report)
            except _Invalid as exc:
                raise TargetError(str(exc)) from None
            except ApplyError as exc:
                raise TargetError(exc.message) from None
            self._prepared.add(key)
        name = str(task["name"])
        run = run_pod(session, spec, f"task-{name}", list(task["command"]), float(task.get("timeout", 300)), report,
                      "task")
        if run.exit_code is None:
            raise TargetError(f"task {name} did not run to completion: {run.reason}", logs=run.tail)
        if run.exit_code != 0:
            raise TargetError(f"task {name} exited with {run.exit_code}", logs=run.tail)
        report("task", f"task {name} exited with 0 (pod {run.name})")

    # -- deploy ---------------------------------------------------------------------------------------

    def deploy(self, spec: dict[str, Any], release_label: str, report: Reporter) -> Outcome:
        from conveyor.targets.kubernetes.apply import ApplyError, api_message, apply_items, prune
        from conveyor.targets.kubernetes.summary import summarise
        from conveyor.targets.kubernetes.verify import SUCCEEDED, utc_now, verify

        _check_spec(spec)
        session = self._session(spec)
        began = time.monotonic()
        since = utc_now()
        try:
            prepared, rest, applied = self._validate_and_apply_priority(session, spec, release_label, report)
            applied.update(apply_items(session, rest, report, changed_before=bool(applied)))
        except _Invalid as exc:
            report("failed", str(exc))
            return Outcome(False, reason=str(exc), previous_still_serving=True)
        except ApplyError as exc:
            report("failed", exc.message)
            return Outcome(False, reason=exc.message, previous_still_serving=not exc.changed)
        if spec.get("prune"):
            try:
                prune(session, spec, {p.key for p in prepared}, report)
            except Exception as exc:  # left-over objects do not make the new release fail
                report("warning", f"pruning stopped: {api_message(exc)}")
        try:
            # rollout timeouts count from the start of the deploy, applies included
            result = verify(session.api, spec, prepared, applied, report, since, began)
        except Exception as exc:
            # The new spec is applied but its rollout could not be judged (the API went away): say so, and
            # let the pipeline put the previous release back.
            reason = f"could not verify the rollout: {api_message(exc)}"
            report("failed", reason)
            return Outcome(False, reason=reason, previous_still_serving=False)
        for line in summarise(session.api, spec["namespace"], result, result.pods):
            report("summary", line)
        took = time.monotonic() - began
        if result.state == SUCCEEDED:
            report("done", f"{release_label} rolled out in {spec['namespace']} in {took:.1f}s")
            return Outcome(True)
        # The new spec is applied: whatever did roll out now differs from the previous release, so the
        # pipeline must re-apply the previous release's stored spec.
        return Outcome(False, reason=f"rollout {result.state}: {result.reason}", previous_still_serving=False)

    # -- live -----------------------------------------------------------------------------------------

    def live(self, app: str, env: str, spec: dict[str, Any] | None = None) -> LiveState | None:
        """The app image the cluster's workloads are set to run now (their pod templates), which release
        last applied them, and whether they are ready."""
        if spec is None:
            return None  # no release recorded: conveyor does not know which cluster to ask
        from conveyor.targets.kubernetes.apply import resolve

        _check_spec(spec)
        session = self._session(spec)
        seen: list[tuple[str, str, str, str]] = []  # (workload, image, release, readiness)
        for entry in spec["manifests"]:
            if entry["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Pod", "CronJob"):
                continue
            resource = resolve(session, entry["apiVersion"], entry["kind"])
            try:
                obj = session.dynamic.get(resource, name=entry["name"], namespace=spec["namespace"]).to_dict()
            except Exception as exc:
                if getattr(exc, "status", None) == 404:
                    seen.append((f"{entry['kind']}/{entry['name']}", "", "", "missing"))
                    continue
                raise
            release = ((obj.get("metadata") or {}).get("annotations") or {}).get(m.A_RELEASE, "")
            for holder in m._image_fields(obj.get("spec") or {}):
                if m.same_repository(holder["image"], spec["repository"]):
                    seen.append((f"{entry['kind']}/{entry['name']}", holder["image"], release, _readiness(obj)))
        running = [s for s in seen if s[1]]
        if not running:
            return None
        differing = [s for s in running if s[1] != spec["image"]]
        workload, image, release, _ = (differing or running)[0]
        detail = "; ".join(f"{w} runs {i or 'nothing (deleted)'} [{r}]" for w, i, _, r in seen)
        if differing:
            detail = f"{workload} was changed outside conveyor: {detail}"
        return LiveState(image=image, release_label=release, detail=detail)

    # -- conveyor run -----------------------------------------------------------------------------------

    def run_command(self, spec: dict[str, Any], command: list[str], report: Reporter, *,
                    stdin: bool = False, tty: bool = False) -> int:
        from conveyor.targets.kubernetes.tasks import run_pod

        _check_spec(spec)
        if stdin or tty:
            raise BadInput("`conveyor run -i/-t` is not supported on a kubernetes target yet; run without them")
        session = self._session(spec)
        run = run_pod(session, spec, "run", command, _RUN_TIMEOUT, report, "output")
        if run.exit_code is None:
            raise TargetError(f"the command did not run to completion: {run.reason}", logs=run.tail)
        return run.exit_code


    # -- status probe, up, retire --------------------------------------------------------------------

    def probe(self, spec: dict[str, Any]) -> str | None:
        """Not probed: the cluster's controllers restart what dies, and `live` (drift) shows a changed or
        deleted workload."""
        return None

    def restore(self, spec: dict[str, Any], release_label: str, report: Reporter) -> Outcome:
        raise BadInput("conveyor up is not supported on kubernetes yet: `conveyor rollback ENV --to N` "
                       "re-applies a release's stored manifests")

    def retire(self, app: str, env: str, report: Reporter, spec: dict[str, Any] | None = None) -> None:
        raise BadInput("conveyor retire is not supported on kubernetes yet: delete the environment's "
                       "objects with kubectl")


_RUN_TIMEOUT = 3600.0  # `conveyor run`: a one-off command (a console, a backfill) may take a while


class _Invalid(Exception):
    """The dry run refused something: nothing was changed."""


def _readiness(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Deployment" or "replicas" in spec:
        return f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)} ready"
    if obj.get("kind") == "DaemonSet":
        return f"{status.get('numberReady', 0)}/{status.get('desiredNumberScheduled', 0)} ready"
    return str(status.get("phase", ""))
