"""What the fleet asks of one host: the container-host target itself, on that host's SSHMachine.

Each operation here is the single-host one plus what a fleet adds: the hosts check (the registry answers
from the host, its engine storage has room) and "leave alone a host that already serves exactly this
release", which makes re-applying the previous release after a halted rollout change only the hosts that
no longer serve it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.errors import TargetError
from conveyor.targets.base import Outcome, Reporter
from conveyor.targets.container_host import ContainerHost
from conveyor.targets.ssh_hosts.machine import SSHMachine

REGISTRY = re.compile(r"\[?(?P<host>[^\]]+?)\]?(?::(?P<port>[0-9]+))?")  # host[:port], [v6]:port


@dataclass
class Applied:
    """One host's answer to a rollout: the container host's outcome, or that it already served the release."""

    outcome: Outcome
    unchanged: bool = False


class FleetHost:
    """One host of a fleet: its name (user@host:port as configured) and its container host."""

    def __init__(self, machine: SSHMachine, state_dir: str) -> None:
        self.machine = machine
        self.name = machine.name
        self.target = ContainerHost(Path(machine.home()) / state_dir / "proxy", machine)

    def check(self, spec: dict[str, Any], *, insecure: bool, min_free_mb: int) -> list[str]:
        """Everything a deploy needs on this host, before anything changes: the container-host preflight
        (engine, HAProxy, the port), the registry answering from here, and room on the engine's storage."""
        checked = list(self.target.preflight(spec))
        checked.append(self._registry_reachable(spec["repository"].split("/", 1)[0], insecure))
        checked.append(self._room(spec, min_free_mb))
        return checked

    def _registry_reachable(self, registry: str, insecure: bool) -> str:
        """A TCP connection from the host to the registry (an engine pull is the only HTTP client a host
        is sure to have, and a pull is what this check comes before)."""
        found = REGISTRY.fullmatch(registry)
        host = found["host"] if found else registry
        port = int(found["port"]) if found and found["port"] else (80 if insecure else 443)
        if not self.machine.accepts(host, port):
            raise TargetError(f"host {self.name}: cannot reach the registry {registry} (no TCP connection to "
                              f"port {port} from there)")
        return f"registry {registry} answers"

    def _room(self, spec: dict[str, Any], min_free_mb: int) -> str:
        engine = self.target.engine(spec["engine"])
        done = engine.runner.run([engine.binary, "info", "--format", "{{.Store.GraphRoot}}"], timeout=30)
        root = done.stdout.strip() if done.ok and done.stdout.strip().startswith("/") else "/"
        free_mb = self.machine.free_mb(Path(root))
        if free_mb < min_free_mb:
            raise TargetError(f"host {self.name}: only {free_mb} MB free under {root} (needs {min_free_mb} MB)")
        return f"{free_mb} MB free under {root}"

    def serves(self, spec: dict[str, Any], label: str) -> bool:
        """Whether this host already serves `label` with the spec's image and it answers. A host whose record
        names another release (every host, in a deploy's rollout) is answered without asking the engine."""
        if self.target.last_applied(spec["app"], spec["env"]) != (label, spec["image"]):
            return False
        state = self.target.live(spec["app"], spec["env"])
        return (state is not None and state.release_label == label and state.image == spec["image"]
                and self.target.probe(spec) is None)

    def apply(self, spec: dict[str, Any], label: str, report: Reporter) -> Applied:
        """Deploy the spec unless this host already serves exactly it (a rollback, or `up`, on a host the
        rollout never reached)."""
        if self.serves(spec, label):
            report("unchanged", f"already serves {label}")
            return Applied(Outcome(True), unchanged=True)
        return Applied(self.target.deploy(spec, label, report))

    def restore(self, spec: dict[str, Any], label: str, report: Reporter) -> Applied:
        """`conveyor up` on this host: the live release serves again, whatever this host serves now."""
        state = self.target.live(spec["app"], spec["env"])
        if state is not None and state.release_label == label and state.image == spec["image"]:
            return Applied(self.target.restore(spec, label, report))
        return self.apply(spec, label, report)

    def close(self) -> None:
        self.target.close()
