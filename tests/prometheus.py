"""A real Prometheus (Debian's `prometheus`) for the tests: a foreground process on a free port with its own
config and TSDB in a temp dir, scraping the targets given every second with a bearer token from a file (as
a scrape_config's `authorization: {credentials_file: …}` sends it).

`query(promql)` asks its HTTP API; `wait_for(promql, condition)` polls until the condition holds, with a
generous deadline (a scrape comes when it comes; nothing here sleeps for a fixed time).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack import free_port

BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"
CONFIG = """global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: conveyor
    metrics_path: /metrics
    authorization:
      credentials_file: {token_file}
    static_configs:
      - targets: [{targets}]
"""

Sample = tuple[dict[str, str], float]


@dataclass
class Prometheus:
    root: Path
    proc: subprocess.Popen[bytes]
    url: str

    @classmethod
    def start(cls, root: Path, targets: list[str], token: str) -> Prometheus:
        root.mkdir(parents=True, exist_ok=True)
        token_file = root / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        config = root / "prometheus.yml"
        config.write_text(CONFIG.format(token_file=token_file, targets=", ".join(f'"{t}"' for t in targets)))
        port = free_port()
        log = (root / "prometheus.log").open("wb")
        proc = subprocess.Popen([BINARY, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"],
                                stdout=log, stderr=subprocess.STDOUT)
        running = cls(root, proc, f"http://127.0.0.1:{port}")
        running._wait_ready()
        return running

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{(self.root / 'prometheus.log').read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        raise AssertionError("prometheus never became ready")

    def query(self, promql: str) -> list[Sample]:
        """An instant query's vector: (labels, value) per series."""
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}",
                                    timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return [(item["metric"], float(item["value"][1])) for item in body["data"]["result"]]

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/api/v1/targets", timeout=10) as response:
            return list(json.loads(response.read())["data"]["activeTargets"])

    def wait_for(self, promql: str, condition: Callable[[list[Sample]], bool] = bool,
                 timeout: float = 90) -> list[Sample]:
        deadline = time.monotonic() + timeout
        found: list[Sample] = []
        while time.monotonic() < deadline:
            found = self.query(promql)
            if condition(found):
                return found
            time.sleep(0.1)
        raise AssertionError(f"{promql} never met the condition; last answer {found}; targets {self.targets()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
