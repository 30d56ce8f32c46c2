"""The ssh-hosts target: an environment served by a fleet of hosts, each running the container-host target.

Every host is reached over SSH (transport.py) and runs conveyor's host agent (agent.py), which applies a
container-host spec there: pull by digest, start, health check, switch that host's HAProxy, drain, retire.
This module rolls that across the fleet in batches of `parallel` and stops at the first host that fails;
the pipeline then re-applies the previous release's stored spec, which changes only the hosts that no
longer serve it (the agent leaves a host alone that already serves exactly that release).

A fleet spec holds the container-host spec every host applies (`host_spec`), the host list and how to
reach them, so a rollback re-applies exactly what ran, on the hosts it ran on.
"""

from __future__ import annotations

import json
import math
import os
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

TARGET_TYPE = "ssh-hosts"
AGENT_MISSING = 127  # the shell's "command not found"
LOG_LINES = 20
HostWork = Callable[["HostAgent", Reporter], Any]


class HostAgent:
    """conveyor's host agent on one host, over one shared SSH connection."""

    def __init__(self, runner: SSHRunner, agent: str) -> None:
        self.runner = runner
        self.agent = agent
        self.name = runner.address.text

    def call(self, op: str, report: Reporter, **request: Any) -> Any:
        """Run one agent operation; its progress lines go to report; returns its result or raises its error."""
        stream = self.runner.stream([self.agent], input=json.dumps({"op": op, **request}))
        answer: dict[str, Any] | None = None
        other: list[str] = []  # ssh's own messages, or anything the agent printed that is not its protocol
        for line in stream.lines():
            message = _message(line)
            if message is None:
                other.append(line)
            elif "report" in message:
                step, text = message["report"]
                report(str(step), str(text))
            else:
                answer = message
        code = stream.wait()
        if answer is None:
            self._no_answer(code, other)
        assert answer is not None
        if "error" in answer:
            raise _agent_error(self.name, answer["error"])
        return answer.get("result")

    def _no_answer(self, code: int, other: list[str]) -> None:
        self.runner.raise_for_connection(code, "\n".join(other))
        last = other[-1] if other else "no output"
        if code == AGENT_MISSING:
            raise InfrastructureMissing(f"host {self.name}: conveyor's host agent '{self.agent}' is not "
                                        f"installed there ({last})")
        raise TargetError(f"host {self.name}: the host agent exited with {code} without an answer: {last}")


def _message(line: str) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _agent_error(host: str, error: dict[str, Any]) -> ConveyorError:
    message = f"host {host}: {error.get('message')}"
    kind = error.get("kind")
    if kind in ("BadInput", "InfrastructureMissing"):
        return InfrastructureMissing(message) if kind == "InfrastructureMissing" else BadInput(message)
    return TargetError(message, logs=list(error.get("logs") or []))


class SSHHosts:
    """Implements `conveyor.targets.base.Target` for a fleet of hosts reached over SSH."""

    type = TARGET_TYPE

    def __init__(self, state_dir: Path, repo_dir: Path) -> None:
        self.repo_dir = Path(repo_dir)
        self._agents: dict[str, HostAgent] = {}
        self._keys_dir: Path | None = None

    def close(self) -> None:
        for agent in self._agents.values():
            agent.runner.close()
        self._agents.clear()
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
            "agent": target.agent,
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
        request = {"spec": spec["host_spec"], "insecure": spec["registry_insecure"],
                   "min_free_mb": spec["min_free_mb"], "secrets": _secrets(spec)}
        results = self._each(spec, spec["hosts"], lambda agent, report: agent.call("check", report, **request),
                             _ignore)
        problems = [value for value in results.values() if isinstance(value, BaseException)]
        if problems:
            raise _worst(problems)
        return [f"host {host}: {'; '.join(checked)}" for host, checked in results.items()]

    # -- tasks and one-off commands -------------------------------------------------------------------

    def run_task(self, spec: dict[str, Any], task: dict[str, Any], report: Reporter) -> None:
        """Pre-deploy tasks run once for the fleet, on its first host, with the new image."""
        _check_spec(spec)
        agent = self._agent(spec, spec["hosts"][0])
        agent.call("run_task", _prefixed(agent.name, report), spec=spec["host_spec"], task=task,
                   secrets=_secrets(spec))

    def run_command(self, spec: dict[str, Any], command: list[str], report: Reporter, *,
                    stdin: bool = False, tty: bool = False, host: str | None = None) -> int:
        """`conveyor run`: on one host (the first unless `host` names another)."""
        _check_spec(spec)
        if stdin or tty:
            raise BadInput("run -i/-t is not available on an ssh-hosts target yet: run the command without them")
        chosen = host or spec["hosts"][0]
        if chosen not in spec["hosts"]:
            raise BadInput(f"--host {chosen}: not one of this environment's hosts ({', '.join(spec['hosts'])})")
        agent = self._agent(spec, chosen)
        return int(agent.call("run_command", report, spec=spec["host_spec"], command=command,
                              secrets=_secrets(spec)))

    # -- deploy, restore ------------------------------------------------------------------------------

    def deploy(self, spec: dict[str, Any], release_label: str, report: Reporter) -> Outcome:
        """Roll the release across the fleet, `parallel` hosts at a time; stop at the first host that fails."""
        return self._roll(spec, release_label, report, "apply")

    def restore(self, spec: dict[str, Any], release_label: str, report: Reporter) -> Outcome:
        """`conveyor up`: every host serves the live release again (a host serving another one, or none,
        gets its stored spec; one that serves it gets its proxy restarted if that is down)."""
        return self._roll(spec, release_label, report, "restore")

    def _roll(self, spec: dict[str, Any], label: str, report: Reporter, op: str) -> Outcome:
        _check_spec(spec)
        hosts: list[str] = list(spec["hosts"])
        request = {"spec": spec["host_spec"], "label": label, "secrets": _secrets(spec)}
        records: dict[str, dict[str, Any]] = {}
        for batch in _batches(hosts, str(spec["parallel"])):
            results = self._each(spec, batch, lambda agent, host_report: agent.call(op, host_report, **request),
                                 report)
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
        results = self._ask_all(spec, "live")
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
        results = self._ask_all(spec, "probe")
        outages = [f"{host}: {value.message if isinstance(value, ConveyorError) else value}"
                   for host, value in results.items() if value is not None]
        return "; ".join(outages) or None

    def retire(self, app: str, env: str, report: Reporter, spec: dict[str, Any] | None = None) -> None:
        raise BadInput("retire is not available on an ssh-hosts target yet: remove the containers on each host")

    # -- hosts ----------------------------------------------------------------------------------------

    def _agent(self, spec: dict[str, Any], host: str) -> HostAgent:
        """The host's agent over its one connection for this operation (opened on first use)."""
        if host not in self._agents:
            known_hosts = Path(spec["known_hosts"])
            if not known_hosts.is_file():
                raise BadInput(f"target.known_hosts: {known_hosts} does not exist; it must list every host's key")
            runner = SSHRunner(HostAddress.parse(host), known_hosts, identity=self._identity(spec),
                               connect_timeout=float(spec["connect_timeout"]))
            self._agents[host] = HostAgent(runner, str(spec["agent"]))
        return self._agents[host]

    def _identity(self, spec: dict[str, Any]) -> Path | None:
        if not spec.get("identity_env"):
            return None
        if self._keys_dir is None:
            self._keys_dir = Path(tempfile.mkdtemp(prefix="cv-key-"))
        return identity_file(spec["identity_env"], self._keys_dir)

    def _ask_all(self, spec: dict[str, Any], op: str) -> dict[str, Any]:
        """A read-only agent operation on every host at once."""
        return self._each(spec, spec["hosts"], lambda agent, report: agent.call(op, report, spec=spec["host_spec"]),
                          _ignore)

    def _each(self, spec: dict[str, Any], hosts: list[str], work: HostWork, report: Reporter) -> dict[str, Any]:
        """work(agent, report) on every host at once; {host: its result, or the exception it raised}. Progress
        lines reach `report` from this (the caller's) thread only, each prefixed with its host."""
        agents = {host: self._agent(spec, host) for host in hosts}
        events: queue.Queue[tuple[str, str, Any]] = queue.Queue()

        def on(host: str) -> None:
            def host_report(step: str, message: str) -> None:
                events.put(("report", host, (step, message)))

            try:
                value: Any = work(agents[host], host_report)
            except Exception as exc:  # handed to the caller, which names the host
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


def _secrets(spec: dict[str, Any]) -> dict[str, str]:
    """The values of the secrets the spec names, for the host agent's stdin (never a command line)."""
    missing = [name for name in spec.get("secrets", []) if not os.environ.get(name)]
    if missing:
        raise BadInput(f"secret(s) {', '.join(missing)} not set (or empty) in the environment (needed by "
                       f"{spec['app']} in {spec['env']})")
    return {name: os.environ[name] for name in spec.get("secrets", [])}


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
    return {"host": host, "state": "serving", "image": result["image"], "release": result["release_label"],
            "detail": f"{result['release_label']} ({result['detail']})"}


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
