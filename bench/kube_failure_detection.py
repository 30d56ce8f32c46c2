"""Kubernetes failure detection: how long after the API server first shows a doomed pod does conveyor
report the failed rollout? Median over RUNS deploys (target ≤ 1 s), against the in-repo API server.

Each run starts a fresh in-repo API server, deploys a one-replica Deployment whose image is scripted to
crash-loop, fail to pull (image not found) or miss its ConfigMap, and takes two timestamps on the same
monotonic clock: the moment the server committed the first pod status showing that signal (a store hook
in tests/kube_apiserver), and the moment conveyor's target reported `failed` (its Reporter callback, the
same call that prints the line and appends the ledger event). krane, the bar, polls every 3 s, so it
notices a signal 0–3 s after it appears (1.5 s median) before its own processing.

    .venv/bin/python bench/kube_failure_detection.py [RUNS]
"""

from __future__ import annotations

import hashlib
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import conveyor.targets.settings  # noqa: E402, F401  (registers the target types' settings)
from conveyor.config.loader import parse_config  # noqa: E402
from conveyor.targets.base import Artifact  # noqa: E402
from conveyor.targets.kubernetes.target import Kubernetes  # noqa: E402
from tests.kube_apiserver.cluster import KubeApi  # noqa: E402

REPO = "registry.bench/web"
BEHAVIOURS = ("crashloop", "image-not-found", "config-error")
DOOMED = ("CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError")
KRANE_POLL_SECONDS = 3.0
MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: registry.bench/web:latest
          readinessProbe: {httpGet: {path: /healthz, port: 8080}}
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def make_repo(root: Path) -> str:
    repo = root / "repo"
    (repo / "deploy").mkdir(parents=True)
    (repo / "deploy" / "web.yaml").write_text(MANIFEST)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "-c", "user.name=bench", "-c", "user.email=bench@example.com", "add", "-A")
    _git(repo, "-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-q", "-m", "web")
    return _git(repo, "rev-parse", "HEAD")


def doomed(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    return any(((cs.get("state") or {}).get("waiting") or {}).get("reason") in DOOMED
               for cs in status.get("containerStatuses") or [])


def one_run(root: Path, sha: str, behaviour: str, number: int) -> tuple[float, str]:
    (root / f"cluster-{number}").mkdir()
    kube = KubeApi(root / f"cluster-{number}")
    target = Kubernetes(root / f"home-{number}", root / "repo")
    try:
        config = parse_config(textwrap.dedent(f"""\
            app: web
            image: {REPO}
            environments:
              - name: staging
                target: {{type: kubernetes, kubeconfig: {kube.kubeconfig_path}, namespace: default,
                          manifests: deploy, timeout: 30}}
            """))
        artifact = Artifact(REPO, sha, "sha256:" + hashlib.sha256(f"run-{number}".encode()).hexdigest())
        spec = target.render(config, config.environments[0], artifact)
        kube.behave(artifact.image, behaviour)
        shown = kube.first_write("Pod", doomed)
        reported: list[float] = []

        def report(step: str, message: str) -> None:
            if step == "failed" and not reported:
                reported.append(time.monotonic())

        outcome = target.deploy(spec, f"staging#{number}", report)
        signal = shown()
        if outcome.succeeded or signal is None or not reported:
            raise RuntimeError(f"run {number} ({behaviour}): no failure to time: {outcome}")
        return reported[0] - signal, outcome.reason
    finally:
        target.close()
        kube.close()


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    with tempfile.TemporaryDirectory(prefix="conveyor-kube-bench-") as tmp:
        root = Path(tmp)
        sha = make_repo(root)
        one_run(root, sha, "crashloop", 0)  # warm-up: imports and the first discovery are not detection time
        delays: dict[str, list[float]] = {b: [] for b in BEHAVIOURS}
        for number in range(1, runs + 1):
            behaviour = BEHAVIOURS[(number - 1) % len(BEHAVIOURS)]
            delay, _ = one_run(root, sha, behaviour, number)
            delays[behaviour].append(delay)
    every = [d for values in delays.values() for d in values]
    print(f"failure detection (API shows the doomed pod -> conveyor reports the failed rollout), {len(every)} runs:")
    for behaviour, values in delays.items():
        print(f"  {behaviour:16} median {statistics.median(values) * 1000:7.1f} ms   "
              f"max {max(values) * 1000:7.1f} ms   ({len(values)} runs)")
    median = statistics.median(every)
    print(f"  {'all':16} median {median * 1000:7.1f} ms   max {max(every) * 1000:7.1f} ms")
    print(f"krane (baseline) polls every {KRANE_POLL_SECONDS:.0f} s: it notices a signal 0-{KRANE_POLL_SECONDS:.0f} s "
          f"after it appears (median {KRANE_POLL_SECONDS / 2 * 1000:.0f} ms), before its own processing")
    print(f"target: median <= 1000 ms -> {'met' if median <= 1.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
