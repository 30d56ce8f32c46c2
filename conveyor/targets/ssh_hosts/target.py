"""The ssh-hosts target: an environment served by a fleet of hosts, each running the container-host target.

Every host is reached over one SSH connection (transport.py) as a Machine (machine.py): the container-host
algorithm itself (pull by digest, start, health check, switch that host's HAProxy, drain, retire) runs
there through it, command by command; nothing of conveyor is installed on a host. This module rolls that
across the fleet in batches of `parallel` and stops at the first host that fails; the pipeline then
re-applies the previous release's stored spec, which changes only the hosts that no longer serve it
(host.py leaves a host alone that already serves exactly that release).

A fleet spec holds the container-host spec every host applies (`host_spec`), the host list and how to
reach them, so a rollback re-applies exactly what ran, on the hosts it ran on.
"""

from __future__ import annotations

import math
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import BadInput, ConveyorError, InfrastructureMissing, TargetError
from conveyor.targets.base import SWITCHED, Artifact, LiveState, Outcome, Reporter, release_values
from conveyor.targets.ssh_hosts.transport import (
    HostAddress,
    HostKeyRefused,
    HostUnreachable,
    SSHRunner,
    identity_file,
)

if TYPE_CHECKING:
    from conveyor.config.models import AppConfig, Environment
    from conveyor.targets.ssh_hosts.host import FleetHost

TARGET_TYPE = "ssh-hosts"
LOG_LINES = 20
HostWork = Callable[["FleetHost", Reporter], Any]


class SSHHosts:
    """Implements `conveyor.targets.base.Target` for a fleet of hosts reached over SSH."""

    type = TARGET_TYPE

    def __init__(self, state_dir: Path, repo_dir: Path) -> None:
        self.repo_dir = Path(repo_dir)
        self._hosts: dict[str, FleetHost] = {}
        self._keys_dir: Path | None = None
        self._identity_file: Path | None = None

    def close(self) -> None:
        for host in self._hosts.values():
            host.close()
        self._hosts.clear()
        if self._keys_dir is not None:
            shutil.rmtree(self._keys_dir, ignore_errors=True)

    # -- render ---------------------------------------------------------------------------------------

    def render(self, app: AppConfig, env: Environment, artifact: Artifact) -> dict[str, Any]:
        """The fleet's spec: how to reach every host, and the container-host spec each one applies."""
        from conveyor.targets.container_host import ContainerHost

        target = env.target
        known_hosts = Path(target.known_hosts)
        host_spec = ContainerHost(Path()).render(app, env, artifact)
        return {
            **release_values(TARGET_TYPE, app.app, env.name, artifact),
            "hosts": list(target.hosts),
            "known_hosts": str(known_hosts if known_hosts.is_absolute() else self.repo_dir / known_hosts),
            "identity_env": target.identity_env,
            "connect_timeout": target.connect_timeout,
            "state_dir": target.state_dir,
            "parallel": target.parallel,
            "min_free_mb": target.min_free_mb,
            "registry_insecure": bool(app.registry.insecure),
            "secrets": host_spec["secrets"],
            "tasks": host_spec["tasks"],
            "host_spec": host_spec,
        }

    # -- preflight: `conveyor hosts check` ------------------------------------------------------------

    def preflight(self, spec: dict[str, Any]) -> list[str]:
        """Every host answers over SSH with a known key, and has an engine, HAProxy, the port, the registry
        and room: checked on all hosts at once, before anything changes. A failing host is named with why."""
        _check_spec(spec)
        host_spec, insecure, room = spec["host_spec"], bool(spec["registry_insecure"]), int(spec["min_free_mb"])
        results = self._each(spec, spec["hosts"],
                             lambda host, report: host.check(host_spec, insecure=insecure, min_free_mb=room),
                             _ignore)
        problems = [value for value in results.values() if isinstance(value, BaseException)]
        if problems:
            raise _worst(problems)
        return [f"host {host}: {'; '.join(checked)}" for host, checked in results.items()]

    # -- tasks and one-off commands -------------------------------------------------------------------

    def run_task(self, spec: dict[str, Any], task: dict[str, Any], report: Reporter) -> None:
        """Pre-deploy tasks run once for the fleet, on its first host, with the new image."""
        _check_spec(spec)
        first = spec["hosts"][0]
        self._on(spec, first, lambda host: host.target.run_task(spec["host_spec"], task, _prefixed(first, report)))

    def run_command(self, spec: dict[str, Any], command: list[str], report: Reporter, *,
                    stdin: bool = False, tty: bool = False, host: str | None = None) -> int:
        """`conveyor run`: on one host (the first unless `host` names another)."""
        _check_spec(spec)
        chosen = host or spec["hosts"][0]
        if chosen not in spec["hosts"]:
            raise BadInput(f"--host {chosen}: not one of this environment's hosts ({', '.join(spec['hosts'])})")
        return int(self._on(spec, chosen, lambda fleet_host: fleet_host.target.run_command(
            spec["host_spec"], command, report, stdin=stdin, tty=tty)))

    # -- deploy, restore ------------------------------------------------------------------------------

    def deploy(self, spec: dict[str, Any], release_label: str, report: Reporter) -> Outcome:
        """Roll the release across the fleet, `parallel` hosts at a time; stop at the first host that fails."""
        return self._roll(spec, release_label, report, restore=False)

    def restore(self, spec: dict[str, Any], release_label: str, report: Reporter) -> Outcome:
        """`conveyor up`: every host serves the live release again (a host serving another one, or none,
        gets its stored spec; one that serves it gets its proxy restarted if that is down)."""
        return self._roll(spec, release_label, report, restore=True)

    def _roll(self, spec: dict[str, Any], label: str, report: Reporter, *, restore: bool) -> Outcome:
        _check_spec(spec)
        hosts: list[str] = list(spec["hosts"])
        host_spec = spec["host_spec"]

        def work(host: FleetHost, host_report: Reporter) -> Any:
            applied = (host.restore if restore else host.apply)(host_spec, label, host_report)
            return {"succeeded": applied.outcome.succeeded, "unchanged": applied.unchanged,
                    "reason": applied.outcome.reason, "logs": list(applied.outcome.logs)}

        records: dict[str, dict[str, Any]] = {}
        for batch in _batches(hosts, str(spec["parallel"])):
            results = self._each(spec, batch, work, report)
            for host in batch:
                records[host] = _host_record(host, results[host], label, spec["image"])
            failed = [host for host in batch if records[host]["outcome"] in ("failed", "lost")]
            if failed:
                return self._halted(hosts, records, failed[0], results[failed[0]], report)
        changed = sum(record["outcome"] != "unchanged" for record in records.values())
        report(SWITCHED, f"{label} serves on all {len(hosts)} hosts ({changed} changed)")
        return Outcome(True, hosts=[records[host] for host in hosts])

    @staticmethod
    def _halted(hosts: list[str], records: dict[str, dict[str, Any]], host: str, result: Any,
                report: Reporter) -> Outcome:
        for other in hosts:
            records.setdefault(other, {"host": other, "outcome": "not reached"})
        record = records[host]
        if isinstance(result, TargetError):
            logs = list(result.logs)
        else:
            logs = list(result.get("logs", [])) if isinstance(result, dict) else []
        logs = [f"{host}: {line}" for line in logs[-LOG_LINES:]]
        changed = [h for h in hosts if records[h]["outcome"] == "switched"]
        report("halted", f"{host} {record['outcome']}: {record['reason']}; the rollout stops here"
                         + (f" ({', '.join(changed)} already switched)" if changed else ""))
        # A lost host may have switched before it went: only an answer from it can tell.
        untouched = not changed and record["outcome"] != "lost"
        return Outcome(False, reason=f"{host}: {record['reason']}", logs=logs, previous_still_serving=untouched,
                       hosts=[records[h] for h in hosts])

    # -- live, probe ----------------------------------------------------------------------------------

    def live(self, app: str, env: str, spec: dict[str, Any] | None = None) -> LiveState | None:
        """What every host serves (the ledger's live spec says which hosts there are)."""
        if spec is None or spec.get("target") != TARGET_TYPE:
            return None
        app_name, env_name = spec["app"], spec["env"]
        results = self._ask_all(spec, lambda host: host.target.live(app_name, env_name))
        hosts = [_serving_record(host, results[host]) for host in spec["hosts"]]
        images = {record.get("image") for record in hosts}
        labels = {record.get("release") for record in hosts}
        image = next(iter(images)) if len(images) == 1 else None
        label = next(iter(labels)) if len(labels) == 1 else None
        if image is None and label is None and all(record["state"] == "nothing" for record in hosts):
            return None
        detail = "; ".join(f"{record['host']}: {record['detail']}" for record in hosts)
        return LiveState(image=image or f"mixed ({detail})", release_label=label or "mixed", detail=detail,
                         hosts=hosts)

    def probe(self, spec: dict[str, Any]) -> str | None:
        _check_spec(spec)
        results = self._ask_all(spec, lambda host: host.target.probe(spec["host_spec"]))
        # An error already names its host (see _each); a probe's answer does not.
        outages = [value.message if isinstance(value, ConveyorError) else f"{host}: {value}"
                   for host, value in results.items() if value is not None]
        return "; ".join(outages) or None

    def retire(self, app: str, env: str, report: Reporter, spec: dict[str, Any] | None = None) -> None:
        """Every host stops serving app+env: its listener, its containers and its deploy record go. The
        ledger's live spec says which hosts there are; a host that cannot be reached is named and fails it."""
        if spec is None or spec.get("target") != TARGET_TYPE:
            raise BadInput(f"{app}/{env} has no recorded ssh-hosts release: its hosts are not known")
        results = self._each(spec, spec["hosts"], lambda host, host_report: host.target.retire(app, env, host_report),
                             report)
        problems = [value for value in results.values() if isinstance(value, BaseException)]
        if problems:
            raise _worst(problems)

    # -- hosts ----------------------------------------------------------------------------------------

    def _host(self, spec: dict[str, Any], name: str) -> FleetHost:
        """The host over its one connection for this operation (opened on first use)."""
        from conveyor.targets.ssh_hosts.host import FleetHost
        from conveyor.targets.ssh_hosts.machine import SSHMachine

        if name not in self._hosts:
            known_hosts = Path(spec["known_hosts"])
            if not known_hosts.is_file():
                raise BadInput(f"target.known_hosts: {known_hosts} does not exist; it must list every host's key")
            runner = SSHRunner(HostAddress.parse(name), known_hosts, identity=self._identity(spec),
                               connect_timeout=float(spec["connect_timeout"]))
            try:
                self._hosts[name] = FleetHost(SSHMachine(runner), str(spec.get("state_dir") or ".conveyor"))
            except BaseException:
                runner.close()
                raise
        return self._hosts[name]

    def _on(self, spec: dict[str, Any], name: str, work: Callable[[FleetHost], Any]) -> Any:
        """work(host) on one host, in this thread; its errors name the host."""
        try:
            return work(self._host(spec, name))
        except ConveyorError as exc:
            raise _named(name, exc) from None

    def _identity(self, spec: dict[str, Any]) -> Path | None:
        if not spec.get("identity_env"):
            return None
        if self._keys_dir is None:  # written once: ssh processes of other hosts may be reading it
            keys_dir = Path(tempfile.mkdtemp(prefix="cv-key-"))
            self._identity_file = identity_file(spec["identity_env"], keys_dir)
            self._keys_dir = keys_dir
        return self._identity_file

    def _ask_all(self, spec: dict[str, Any], question: Callable[[FleetHost], Any]) -> dict[str, Any]:
        """A read-only question to every host at once."""
        return self._each(spec, spec["hosts"], lambda host, report: question(host), _ignore)

    def _each(self, spec: dict[str, Any], hosts: list[str], work: HostWork, report: Reporter) -> dict[str, Any]:
        """work(host, report) on every host at once; {host: its result, or the exception it raised}. Progress
        lines reach `report` from this (the caller's) thread only, each prefixed with its host."""
        self._identity(spec)  # once, before the threads: they share the key's file
        events: queue.Queue[tuple[str, str, Any]] = queue.Queue()

        def on(host: str) -> None:
            def host_report(step: str, message: str) -> None:
                events.put(("report", host, (step, message)))

            try:
                value: Any = work(self._host(spec, host), host_report)
            except ConveyorError as exc:  # handed to the caller
                value = _named(host, exc)
            except Exception as exc:
                value = exc
            events.put(("done", host, value))

        for host in hosts:
            threading.Thread(target=on, args=(host,), name=f"host {host}", daemon=True).start()
        results: dict[str, Any] = {}
        while len(results) < len(hosts):
            kind, host, value = events.get()
            if kind == "report":
                step, message = value
                # One host's switch is not the release's: the fleet reports SWITCHED once all hosts serve it.
                report("host-switch" if step == SWITCHED else step, f"{host}: {message}")
            else:
                results[host] = value
        return {host: results[host] for host in hosts}


def _ignore(step: str, message: str) -> None:
    return None


def _prefixed(host: str, report: Reporter) -> Reporter:
    return lambda step, message: report(step, f"{host}: {message}")


def _named(host: str, exc: ConveyorError) -> ConveyorError:
    """The error, its message starting with the host it happened on."""
    if not exc.message.startswith(f"host {host}"):
        exc.message = f"host {host}: {exc.message}"
        exc.args = (exc.message,)
    return exc


def _batches(hosts: list[str], parallel: str) -> list[list[str]]:
    size = math.ceil(len(hosts) * int(parallel[:-1]) / 100) if parallel.endswith("%") else int(parallel)
    size = max(1, min(size, len(hosts)))
    return [hosts[start:start + size] for start in range(0, len(hosts), size)]


def _host_record(host: str, result: Any, label: str, image: str) -> dict[str, Any]:
    """What one host did with the release, as the ledger keeps it."""
    if isinstance(result, HostUnreachable):
        return {"host": host, "outcome": "lost", "reason": result.message, "release": label, "image": image}
    if isinstance(result, BaseException):
        reason = result.message if isinstance(result, ConveyorError) else f"{type(result).__name__}: {result}"
        if isinstance(result, HostKeyRefused):
            raise result
        return {"host": host, "outcome": "failed", "reason": reason, "release": label, "image": image}
    if result is None or not result.get("succeeded"):
        reason = (result or {}).get("reason") or "failed"
        return {"host": host, "outcome": "failed", "reason": reason, "release": label, "image": image}
    outcome = "unchanged" if result.get("unchanged") else "switched"
    return {"host": host, "outcome": outcome, "reason": "", "release": label, "image": image}


def _serving_record(host: str, result: Any) -> dict[str, Any]:
    if isinstance(result, BaseException):
        reason = result.message if isinstance(result, ConveyorError) else str(result)
        return {"host": host, "state": "unreachable", "image": None, "release": None, "detail": reason}
    if result is None:
        return {"host": host, "state": "nothing", "image": None, "release": None, "detail": "serves nothing"}
    assert isinstance(result, LiveState)
    return {"host": host, "state": "serving", "image": result.image, "release": result.release_label,
            "detail": f"{result.release_label} ({result.detail})"}


def _worst(problems: list[BaseException]) -> BaseException:
    """One error for several hosts' problems: a refused key first (bad input, exit 2), then unreachable
    hosts, then the rest; every failing host is named."""
    for kind in (HostKeyRefused, InfrastructureMissing, BadInput):
        chosen = [p for p in problems if isinstance(p, kind)]
        if chosen:
            break
    else:
        chosen = problems
    messages = [p.message if isinstance(p, ConveyorError) else str(p) for p in problems]
    first = chosen[0]
    text = "; ".join(messages)
    if isinstance(first, ConveyorError):
        return type(first)(text) if not isinstance(first, TargetError) else TargetError(text)
    return TargetError(text)


def _check_spec(spec: dict[str, Any]) -> None:
    if spec.get("target") != TARGET_TYPE:
        raise BadInput(f"not an {TARGET_TYPE} spec (target: {spec.get('target')!r})")
