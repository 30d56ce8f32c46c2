"""The container-host target: an app's image (by digest) as a container on this machine, behind HAProxy.

A deploy starts the new container beside the old one on a free loopback port, waits until it answers
its health check, then switches the proxy's upstream to it and retires the old container after a drain
period. The proxy is never touched before the new container is healthy, so a failed deploy leaves the
previous release serving.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import secrets as random_tokens
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import BadInput, InfrastructureMissing, TargetError
from conveyor.runner import CommandTimedOut
from conveyor.targets.base import SWITCHED, Artifact, LiveState, Outcome, Reporter, release_values
from conveyor.targets.container_host.engine import Container, Engine, RegistryLogin
from conveyor.targets.container_host.machine import LocalMachine, Machine
from conveyor.targets.container_host.proxy import (
    CLIENT_TIMEOUT,
    HAProxy,
    dial_host,
    haproxy_binary,
    listen_address,
)

if TYPE_CHECKING:  # only for annotations: importing config (pydantic) is not needed to deploy a spec
    from conveyor.config.models import AppConfig, Environment

TARGET_TYPE = "container-host"
RUN_TIMEOUT = 3600.0  # `conveyor run`: a one-off command (a console, a backfill) may take a while
LOG_LINES = 20
# Label keys on every container this target starts; `role` keeps one-off task containers apart from
# the serving ones, so a deploy's clean-up never touches a task that is running.
L_APP, L_ENV, L_ROLE, L_RELEASE = "conveyor.app", "conveyor.env", "conveyor.role", "conveyor.release"
L_PORT, L_IMAGE = "conveyor.port", "conveyor.image"
# How long the previous container is kept for connections a reloaded HAProxy worker still routes to it:
# such a connection ends at its next request, or after the proxy's idle timeout.
OLD_WORKER_WAIT = CLIENT_TIMEOUT + 5.0
PROBE_TIMEOUT = 2.0  # `conveyor status` asks every live release to answer; it must stay quick


class ContainerHost:
    """Implements `conveyor.targets.base.Target` for one machine running podman or docker and HAProxy.

    `state_dir` identifies the proxy: one HAProxy serves every app+env deployed with the same state dir.
    `machine` is where all of it runs: this one, or a fleet host over SSH (the ssh-hosts target).
    """

    type = TARGET_TYPE

    def __init__(self, state_dir: Path, machine: Machine | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.machine: Machine = machine or LocalMachine()
        self._engines: dict[str, Engine] = {}

    def close(self) -> None:
        self.machine.close()

    # -- render ---------------------------------------------------------------------------------------

    def render(self, app: AppConfig, env: Environment, artifact: Artifact) -> dict[str, Any]:
        """Everything a deploy needs, so a rollback can re-apply this spec without reading config again."""
        target = env.target
        return {
            **release_values(TARGET_TYPE, app.app, env.name, artifact),
            "engine": target.engine,
            "bind": target.bind,
            "port": target.port,
            "port_env": target.port_env,
            "env_vars": dict(env.env),  # "env" is the environment's name
            "secrets": list(env.secrets),  # names only: values are read from the environment at run time
            "health": {
                "path": env.health.path,
                "timeout": env.health.timeout,
                "interval": env.health.interval,
                "expect_status": env.health.expect_status,
            },
            "drain_seconds": target.drain_seconds,
            "stop_timeout": target.stop_timeout,
            "init": target.init,
            "tasks": [
                {"name": task.name, "command": list(task.command), "timeout": task.timeout}
                for task in app.tasks_for(env)
            ],
            "pull_from": _own_registry(env, artifact),
        }

    # -- preflight ------------------------------------------------------------------------------------

    def preflight(self, spec: dict[str, Any]) -> list[str]:
        """Everything that can be checked before the first side effect; returns what was checked."""
        _check_spec(spec)
        self._require_secrets(spec)
        login = _pull_login(spec)
        engine = self._engine(spec["engine"])
        engine.check_secrets_reach(spec["secrets"])
        haproxy = haproxy_binary(self.machine)
        proxy = self._proxy()
        proxy.check_paths()  # before any task runs: HAProxy is only started at the switch
        bind, port = spec["bind"], int(spec["port"])
        if not proxy.may_listen(spec["app"], spec["env"], bind, port):
            raise BadInput(f"port {port} is in use by another process; choose another target.port for "
                           f"{spec['env']}")
        secrets = ", ".join(spec["secrets"])
        return [
            f"secrets set in the environment: {secrets}" if secrets else "no secrets needed",
            f"container engine: {engine.name} ({engine.binary})",
            f"haproxy: {haproxy}; state dir {proxy.dir} fits its socket paths",
            f"port {listen_address(bind, port)}: free, or this environment's own listener",
            *([f"pulls from {login.registry} with the login in ${spec['pull_from']['password_env']}"]
              if login else []),
        ]

    # -- tasks ----------------------------------------------------------------------------------------

    def run_task(self, spec: dict[str, Any], task: dict[str, Any], report: Reporter) -> None:
        """Run `task` in a one-off container of the spec's image; stream its output; raise on failure."""
        task_name = str(task["name"])
        code, tail = self._one_off(spec, f"task-{task_name}", task["command"], float(task.get("timeout", 300)),
                                   report, "task", f"task {task_name}")
        if code != 0:
            raise TargetError(f"task {task_name} exited with {code}", logs=tail)

    def run_command(self, spec: dict[str, Any], command: list[str], report: Reporter, *,
                    stdin: bool = False, tty: bool = False) -> int:
        """`conveyor run`: the command in a one-off container of the spec's image; returns its exit code."""
        if stdin or tty:
            return self._on_terminal(spec, command, stdin=stdin, tty=tty)
        code, _ = self._one_off(spec, "run", command, RUN_TIMEOUT, report, "output", f"command {command[0]}")
        return code

    def _on_terminal(self, spec: dict[str, Any], command: list[str], *, stdin: bool, tty: bool) -> int:
        """A one-off container wired to the caller's own terminal (a console): its output is the person's."""
        _check_spec(spec)
        self._require_secrets(spec)
        engine = self._engine(spec["engine"])
        image = spec["image"]
        engine.ensure_image(image, _pull_login(spec), insecure=_pulls_insecure(spec))
        name = f"conveyor-{spec['app']}-{spec['env']}-run-{random_tokens.token_hex(3)}"
        labels = {L_APP: spec["app"], L_ENV: spec["env"], L_ROLE: "task", L_IMAGE: image}
        with engine.secrets_for(name, spec["secrets"], outlive=False) as stored:
            args = engine.run_args(image, name=name, labels=labels, env=spec["env_vars"],
                                   secret_names=spec["secrets"], init=bool(spec["init"]), command=command,
                                   detach=False, stdin=stdin, tty=tty, stored_secrets=stored)
            try:
                return engine.runner.attached([engine.binary, *args], tty=tty)
            finally:
                with contextlib.suppress(TargetError):
                    engine.remove(name)

    def _one_off(
        self, spec: dict[str, Any], role: str, command: list[str], timeout: float, report: Reporter, step: str,
        what: str,
    ) -> tuple[int, list[str]]:
        """A one-off container with the spec's image, env and secrets: output lines go to report(step, …);
        returns the exit code and the last lines. Removed afterwards, also on timeout or interruption."""
        _check_spec(spec)
        self._require_secrets(spec)
        engine = self._engine(spec["engine"])
        image = spec["image"]
        if engine.ensure_image(image, _pull_login(spec), insecure=_pulls_insecure(spec)):
            report("pull", f"pulled {image}")
        name = f"conveyor-{spec['app']}-{spec['env']}-{_slug(role)}-{random_tokens.token_hex(3)}"
        with engine.secrets_for(name, spec["secrets"], outlive=False) as stored:
            return self._streamed(engine, spec, name, command, timeout, report, step, what, stored)

    @staticmethod
    def _streamed(
        engine: Engine, spec: dict[str, Any], name: str, command: list[str], timeout: float, report: Reporter,
        step: str, what: str, stored_secrets: dict[str, str],
    ) -> tuple[int, list[str]]:
        """Run the one-off container attached (`run --rm`), streaming its lines until it exits or times out."""
        image = spec["image"]
        labels = {L_APP: spec["app"], L_ENV: spec["env"], L_ROLE: "task", L_IMAGE: image}
        args = engine.run_args(image, name=name, labels=labels, env=spec["env_vars"],
                               secret_names=spec["secrets"], init=bool(spec["init"]), command=command,
                               detach=False, stored_secrets=stored_secrets)
        tail: deque[str] = deque(maxlen=LOG_LINES)
        lines: queue.Queue[str | None] = queue.Queue()
        process = engine.runner.stream([engine.binary, *args])

        def pump() -> None:
            for line in process.lines():
                lines.put(line)
            lines.put(None)

        # A reader thread so the timeout holds even when the container prints nothing; report() is only
        # ever called from this (the caller's) thread.
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        finished = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TargetError(f"{what} timed out after {timeout:g}s", logs=list(tail))
                try:
                    line = lines.get(timeout=min(remaining, 0.5))
                except queue.Empty:
                    continue
                if line is None:
                    break
                tail.append(line)
                report(step, line)
            try:  # output ended; the container may still run (it closed its stdout): the timeout still holds
                code = process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except CommandTimedOut:
                raise TargetError(f"{what} timed out after {timeout:g}s", logs=list(tail)) from None
            finished = True
        finally:
            if not finished:
                # Killing the CLI would leave the container running: remove the container itself.
                with contextlib.suppress(TargetError):
                    engine.remove(name)
                try:
                    process.wait(timeout=30)
                except CommandTimedOut:
                    process.kill()
            reader.join(timeout=5)
        return code, list(tail)

    # -- deploy ---------------------------------------------------------------------------------------

    def deploy(self, spec: dict[str, Any], release_label: str, report: Reporter) -> Outcome:
        started = time.monotonic()
        _check_spec(spec)
        self._require_secrets(spec)
        engine = self._engine(spec["engine"])
        proxy = self._proxy()
        proxy.ensure_running()
        app, env, image = spec["app"], spec["env"], spec["image"]
        own = {L_APP: app, L_ENV: env, L_ROLE: "service"}

        # Containers left by an earlier run that crashed mid-deploy; the serving one is never touched.
        serving_port = _port_of(proxy.upstream(app, env))
        previous: list[Container] = []  # what serves now: retired once the new container serves
        for existing in engine.list(own):
            if existing.labels.get(L_PORT) == serving_port:
                previous.append(existing)
            else:
                engine.remove(existing.id, name=existing.name)
                report("cleanup", f"removed leftover container {existing.name} ({existing.status})")

        pull_started = time.monotonic()
        if engine.ensure_image(image, _pull_login(spec), insecure=_pulls_insecure(spec)):
            report("pull", f"pulled {image} in {time.monotonic() - pull_started:.1f}s")
        else:
            report("pull", f"{image} already present")

        port = self.machine.free_port(avoid={int(spec["port"])})
        name = f"conveyor-{app}-{env}-{_slug(release_label)}-{random_tokens.token_hex(3)}"
        labels = {**own, L_RELEASE: release_label, L_PORT: str(port), L_IMAGE: image}
        environment = {**spec["env_vars"], spec["port_env"]: str(port)}
        report("start", f"starting {name} on 127.0.0.1:{port}")
        start_began = time.monotonic()
        try:
            engine.run_detached(image, name=name, labels=labels, env=environment,
                                secret_names=spec["secrets"], init=bool(spec["init"]), publish=port)
        except TargetError as exc:
            logs = [*engine.logs(name, LOG_LINES), exc.message][-LOG_LINES:]
            engine.remove(name)
            return self._failed(report, f"container failed to start: {exc.message}", logs)

        try:
            problem = _wait_healthy(self.machine, engine, name, port, spec["health"])
        except BaseException:
            # Interrupted (^C) or the engine failed mid-wait: the proxy was not touched, so the new
            # container serves nothing; do not leave it behind.
            with contextlib.suppress(Exception):
                engine.remove(name)
            raise
        if problem is not None:
            logs = engine.logs(name, LOG_LINES)
            engine.remove(name)
            return self._failed(report, problem, logs)
        report("health", f"{name} healthy after {time.monotonic() - start_began:.2f}s (start + health check)")

        upstream = f"127.0.0.1:{port}"
        stable = listen_address(spec["bind"], int(spec["port"]))
        try:
            proxy.switch(app, env, spec["bind"], int(spec["port"]), upstream)
        except TargetError as exc:
            try:
                now: str | None = proxy.upstream(app, env)
            except TargetError:
                # HAProxy did not answer: the switch may or may not have been applied. Keep the new
                # container (it may be serving) and let the pipeline re-apply the previous release.
                report("failed", f"proxy switch failed: {exc.message}; could not tell what serves now")
                return Outcome(False, reason=f"proxy switch failed: {exc.message}",
                               logs=engine.logs(name, LOG_LINES), previous_still_serving=False)
            if now != upstream:
                # A refused switch leaves the previous upstream serving (HAProxy.switch puts it back).
                logs = engine.logs(name, LOG_LINES)
                engine.remove(name)
                return self._failed(report, f"proxy switch failed: {exc.message}", logs)
            # The change was applied after all (e.g. the answer was lost): carry on.
        except BaseException:
            self._settle_interrupted_switch(engine, proxy, spec, name, upstream, report)
            raise
        self._write_record(spec, engine, upstream, name, release_label)
        report(SWITCHED, f"{stable} now proxies to {name} ({upstream})")
        try:
            self._drain(proxy, spec, bool(previous), report)
        finally:
            # Also when the drain is interrupted: the new release serves, so the previous containers are
            # retired now instead of running unseen until the next deploy.
            for old in previous:
                self._retire(engine, old, int(spec["stop_timeout"]), report)
        report("done", f"{release_label} serving; deploy took {time.monotonic() - started:.1f}s")
        return Outcome(True)

    def _drain(self, proxy: HAProxy, spec: dict[str, Any], has_previous: bool, report: Reporter) -> None:
        if has_previous and float(spec["drain_seconds"]) > 0:  # a first deploy has nothing to drain
            report("drain", f"letting requests to the previous container finish for {spec['drain_seconds']}s")
            time.sleep(float(spec["drain_seconds"]))
        self._await_old_workers(proxy, spec["app"], spec["env"], report)

    @staticmethod
    def _settle_interrupted_switch(
        engine: Engine, proxy: HAProxy, spec: dict[str, Any], name: str, upstream: str, report: Reporter
    ) -> None:
        """Interrupted while switching: report the switch if it took effect (the new version serves, and
        the record must say so), else remove the new container, which serves nothing."""
        try:
            switched = proxy.upstream(spec["app"], spec["env"]) == upstream
        except Exception:
            return  # cannot tell: keep the container; the next deploy or `conveyor up` settles it
        if switched:
            stable = listen_address(spec["bind"], int(spec["port"]))
            report(SWITCHED, f"{stable} now proxies to {name} ({upstream})")
        else:
            with contextlib.suppress(Exception):
                engine.remove(name)

    @staticmethod
    def _await_old_workers(proxy: HAProxy, app: str, env: str, report: Reporter) -> None:
        """Keep the previous container until no HAProxy worker left by a reload can still send it requests."""
        held = proxy.held_by_old_workers(app, env)
        if not held:
            return
        report("drain", f"waiting for {held} keep-alive connection(s) an HAProxy worker left by a reload still "
                        "routes to the previous container")
        deadline = time.monotonic() + OLD_WORKER_WAIT
        while held and time.monotonic() < deadline:
            time.sleep(0.2)
            held = proxy.held_by_old_workers(app, env)
        if held:
            report("warning", f"{held} connection(s) still held after {OLD_WORKER_WAIT:g}s; retiring the "
                              "previous container anyway")

    @staticmethod
    def _failed(report: Reporter, reason: str, logs: list[str]) -> Outcome:
        report("failed", f"{reason}; the previous release keeps serving")
        return Outcome(False, reason=reason, logs=logs, previous_still_serving=True)

    @staticmethod
    def _retire(engine: Engine, container: Container, stop_timeout: int, report: Reporter) -> None:
        # The new release already serves: a container that will not stop is a warning, not a failure.
        try:
            if container.running:
                engine.stop(container.id, stop_timeout)
            engine.remove(container.id, name=container.name)
            report("retire", f"stopped and removed {container.name}")
        except TargetError as exc:
            report("warning", f"could not retire {container.name}: {exc.message}")

    # -- live -----------------------------------------------------------------------------------------

    def live(self, app: str, env: str, spec: dict[str, Any] | None = None) -> LiveState | None:
        """The container the proxy points to for app+env (found by its port label), or None. `spec` (the
        ledger's live spec) is not needed: this state dir's HAProxy and deploy records say it all."""
        record, engine = self._recorded_engine(app, env)
        if engine is None:
            return None  # no engine and no record of a deploy: nothing can be serving from here
        containers = engine.list({L_APP: app, L_ENV: env, L_ROLE: "service"})
        if not record and not containers:
            return None
        proxy = self._proxy()
        note = ""
        if not proxy.answering():
            # HAProxy is down; ensure_running() starts it from proxy.json, i.e. with this upstream.
            note = f"; proxy ({proxy.dir}) is not running"
        upstream = proxy.upstream(app, env)
        port = _port_of(upstream)
        current = next((c for c in containers if port and c.labels.get(L_PORT) == port), None)
        if current is None:
            return None
        state = "running" if current.running else f"{current.status}, exit code {current.exit_code}"
        return LiveState(
            image=current.labels.get(L_IMAGE) or current.image,
            release_label=current.labels.get(L_RELEASE, ""),
            detail=f"container {current.name} on {upstream} ({state}){note}",
        )

    def last_applied(self, app: str, env: str) -> tuple[str, str] | None:
        """(release label, image) this host last switched app+env to, from its deploy record alone (no
        engine call): what it serves unless something changed behind its back, which live() tells."""
        record = self._read_record(app, env)
        if "release" not in record or "image" not in record:
            return None
        return str(record["release"]), str(record["image"])

    # -- status probe, up, retire ---------------------------------------------------------------------

    def probe(self, spec: dict[str, Any]) -> str | None:
        """GET the health path through the stable port, with a short timeout; on no good answer, say why
        (the proxy is down, or the live container is gone or stopped)."""
        import httpx

        _check_spec(spec)
        proxy = self._proxy()
        stable = listen_address(spec["bind"], int(spec["port"]))
        if not proxy.answering():
            return f"HAProxy ({proxy.dir}) is not running: nothing answers on {stable}"
        health = spec["health"]
        try:
            with self.machine.http(dial_host(spec["bind"]), int(spec["port"])) as client:
                answer = client.get(health["path"], timeout=PROBE_TIMEOUT)
            if answer.status_code == int(health["expect_status"]):
                return None
            problem = f"GET {health['path']} on {stable} answers {answer.status_code}"
        except httpx.HTTPError as exc:
            problem = f"GET {health['path']} on {stable} got no answer ({type(exc).__name__})"
        state = self.live(spec["app"], spec["env"])
        if state is None:
            return f"{problem}: the live container is gone"
        return f"{problem}: {state.detail}"

    def restore(self, spec: dict[str, Any], release_label: str, report: Reporter) -> Outcome:
        """Start HAProxy from its state if it is down; if the live release still does not answer (its
        container is gone or stopped), re-apply its stored spec (start, health check, switch)."""
        proxy = self._proxy()
        if not proxy.answering():
            proxy.ensure_running()
            report("proxy", f"started HAProxy ({proxy.dir}) from its state")
        problem = self.probe(spec)
        if problem is None:
            return Outcome(True)
        report("restore", f"{problem}; re-applying {release_label}'s stored spec")
        return self.deploy(spec, release_label, report)

    def retire(self, app: str, env: str, report: Reporter, spec: dict[str, Any] | None = None) -> None:
        """Remove app+env's listener from HAProxy, then its containers and its deploy record."""
        proxy = self._proxy()
        if proxy.listens(app, env):
            proxy.remove(app, env)
            report("proxy", f"HAProxy no longer listens for {app}/{env}")
        record, engine = self._recorded_engine(app, env)
        if engine is None:
            return
        for container in engine.list({L_APP: app, L_ENV: env}):
            engine.remove(container.id, name=container.name)
            report("retire", f"removed {container.name}")
        self.machine.remove(self._record_path(app, env))

    # -- helpers --------------------------------------------------------------------------------------

    def engine(self, configured: str) -> Engine:
        """The engine this target uses for a spec's `engine` setting, on its machine."""
        return self._engine(configured)

    def _engine(self, configured: str) -> Engine:
        # Detection may ask docker's daemon (a second or more when it hangs): once per configured name.
        if configured not in self._engines:
            self._engines[configured] = Engine.detect(configured, machine=self.machine)
        return self._engines[configured]

    def _proxy(self) -> HAProxy:
        return HAProxy(self.state_dir, self.machine)

    @staticmethod
    def _require_secrets(spec: dict[str, Any]) -> None:
        missing = [name for name in spec.get("secrets", []) if name not in os.environ]
        if missing:
            names = ", ".join(missing)
            raise BadInput(f"secret{'s' if len(missing) > 1 else ''} {names} not set in the environment "
                           f"(needed by {spec['app']} in {spec['env']})")
        # An empty value is almost always a CI variable that did not reach this job; never deploy it silently.
        empty = [name for name in spec.get("secrets", []) if not os.environ[name]]
        if empty:
            names = ", ".join(empty)
            raise BadInput(f"secret{'s' if len(empty) > 1 else ''} {names} set but empty in the environment "
                           f"(needed by {spec['app']} in {spec['env']})")

    def _recorded_engine(self, app: str, env: str) -> tuple[dict[str, Any], Engine | None]:
        """app+env's deploy record and the engine it names; no engine when none is installed and nothing
        was ever deployed from here (an engine gone since a deploy is an error)."""
        record = self._read_record(app, env)
        try:
            return record, self._engine(record.get("engine", "auto"))
        except InfrastructureMissing:
            if record:
                raise
            return record, None

    def _record_path(self, app: str, env: str) -> Path:
        return self.state_dir / "deployed" / f"{app}-{env}.json"

    def _write_record(
        self, spec: dict[str, Any], engine: Engine, upstream: str, name: str, label: str
    ) -> None:
        """What `live()` needs without a spec: which engine serves this app+env, and what it was told."""
        record = {"engine": engine.name, "bind": spec["bind"],
                  "port": spec["port"], "upstream": upstream, "container": name, "release": label,
                  "image": spec["image"]}
        self.machine.write_text(self._record_path(spec["app"], spec["env"]), json.dumps(record, indent=2) + "\n")

    def _read_record(self, app: str, env: str) -> dict[str, Any]:
        try:
            data = json.loads(self.machine.read_text(self._record_path(app, env)) or "{}")
        except (TargetError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def _wait_healthy(machine: Machine, engine: Engine, name: str, port: int, health: dict[str, Any]) -> str | None:
    """None once GET path answers the expected status; else why not (timeout, or the container exited)."""
    import httpx

    path, expected = str(health["path"]), int(health["expect_status"])
    timeout, interval = float(health["timeout"]), float(health["interval"])
    deadline = time.monotonic() + timeout
    last = "got no answer"
    with machine.http("127.0.0.1", port) as client:
        while True:
            try:
                response = client.get(path, timeout=max(0.2, min(2.0, deadline - time.monotonic())))
                if response.status_code == expected:
                    return None
                last = f"answered {response.status_code}"
            except httpx.HTTPError as exc:
                last = f"got no answer ({type(exc).__name__}: {exc})" if str(exc) else "got no answer"
            container = engine.inspect(name)
            if container is None:
                return "container disappeared before becoming healthy"
            if not container.running:
                return f"container exited with code {container.exit_code} before becoming healthy"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"health check failed: GET {path} {last} for {timeout:g}s"
            time.sleep(min(interval, remaining))


def _check_spec(spec: dict[str, Any]) -> None:
    if spec.get("target") != TARGET_TYPE:
        raise BadInput(f"not a {TARGET_TYPE} spec (target: {spec.get('target')!r})")


def _slug(text: str) -> str:
    """A container-name-safe form of a release label or task name ("staging#4" -> "staging-4")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "x"


def _port_of(upstream: str | None) -> str | None:
    return upstream.rsplit(":", 1)[1] if upstream and ":" in upstream else None


def _own_registry(env: Environment, artifact: Artifact) -> dict[str, Any] | None:
    """Where the image is pulled from when that is the environment's own registry: its host, whether it is
    plain HTTP, and the names of the env vars holding its login (their values are read at pull time)."""
    own = env.registry
    if own is None or own.image != artifact.repository:
        return None
    return {"registry": artifact.repository.split("/", 1)[0], "username_env": own.username_env,
            "password_env": own.password_env, "insecure": own.insecure}


def _pulls_insecure(spec: dict[str, Any]) -> bool:
    return bool((spec.get("pull_from") or {}).get("insecure"))


def _pull_login(spec: dict[str, Any]) -> RegistryLogin | None:
    names = spec.get("pull_from")
    if not names or not names["password_env"]:
        return None
    wanted = [name for name in (names["username_env"], names["password_env"]) if name]
    missing = [name for name in wanted if not os.environ.get(name)]
    if missing:
        raise BadInput(f"{', '.join(missing)} not set (or empty): {spec['env']} pulls {spec['image']} with the "
                       "registry login they hold")
    username = os.environ[names["username_env"]] if names["username_env"] else ""
    return RegistryLogin(names["registry"], username, os.environ[names["password_env"]])
