"""Shared set-up for the `conveyor server` benchmarks: real server processes on a free port, tokens made by
`conveyor server token create`, apps as small git repos with a bare remote, and their images in a real
registry (devstack.Registry).

The images are pushed straight through the registry's HTTP API (one tiny layer, a config, a manifest per
commit's tag) instead of built: the benches' operations (a build of a commit already in the registry, a
dry-run deploy) only look the tag up, and 50 buildah builds would cost minutes of a shared machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack import git  # noqa: E402

CONVEYOR = str(Path(sys.executable).parent / "conveyor")
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
APP_CONFIG = """app: {name}
image: {registry}/{image}
registry:
  insecure: true
environments:
  - name: staging
    target: {{type: container-host, port: {staging}}}
  - name: production
    target: {{type: container-host, port: {production}}}
"""


def free_ports(count: int) -> list[int]:
    """COUNT distinct free ports: all held open until all are picked (one at a time, the OS may hand the same
    one out twice, and two environments of an app sharing a port is a config error)."""
    import socket

    held = [socket.socket() for _ in range(count)]
    try:
        for sock in held:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def summary(values: list[float]) -> str:
    """Median and p95 (nearest rank) in milliseconds."""
    return (f"median {statistics.median(values) * 1000:6.1f} ms  p95 {percentile(values, 0.95) * 1000:6.1f} ms  "
            f"(n={len(values)}, min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f})")


# ------------------------------------------------------------------------------------------------ images

def push_image(registry: str, repository: str, tags: list[str]) -> str:
    """A minimal OCI image (one small layer) under every tag given; returns its manifest digest."""
    import httpx

    base = f"http://{registry}/v2/{repository}"
    with httpx.Client(timeout=30) as client:
        def blob(data: bytes, media_type: str) -> dict[str, Any]:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            started = client.post(f"{base}/blobs/uploads/")
            started.raise_for_status()
            location = started.headers["Location"]
            location = location if location.startswith("http") else f"http://{registry}{location}"
            sep = "&" if "?" in location else "?"  # keep the upload's own query (see MACHINE.md)
            client.put(f"{location}{sep}digest={digest}", content=data,
                       headers={"Content-Type": "application/octet-stream"}).raise_for_status()
            return {"mediaType": media_type, "digest": digest, "size": len(data)}

        layer = blob(b"conveyor bench layer\n", "application/vnd.oci.image.layer.v1.tar")
        config = blob(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
            "type": "layers", "diff_ids": [layer["digest"]]}}).encode(), "application/vnd.oci.image.config.v1+json")
        manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": config,
                               "layers": [layer]}).encode()
        for tag in tags:
            client.put(f"{base}/manifests/{tag}", content=manifest,
                       headers={"Content-Type": MANIFEST_TYPE}).raise_for_status()
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


# -------------------------------------------------------------------------------------------------- apps

@dataclass
class AppRepo:
    name: str
    repo: Path
    remote: Path
    sha: str


def make_app_repo(root: Path, name: str, registry: str, image: str, ports: tuple[int, int]) -> AppRepo:
    """A one-commit repo whose conveyor.yml names app NAME, pushed to its own bare remote."""
    repo, remote = root / name, root / f"{name}.git"
    repo.mkdir(parents=True)
    (repo / "conveyor.yml").write_text(APP_CONFIG.format(name=name, registry=registry, image=image,
                                                         staging=ports[0], production=ports[1]))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "bench@example.com")
    git(repo, "config", "user.name", "Bench")
    git(repo, "add", "conveyor.yml")
    git(repo, "commit", "-q", "-m", f"{name}: first")
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    git(repo, "push", "-q", str(remote), "main")
    return AppRepo(name, repo, remote, git(repo, "rev-parse", "HEAD"))


# ------------------------------------------------------------------------------------------------ server

def server_env(home: Path, database_url: str | None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "CONVEYOR_HOME": str(home), **extra}
    env.pop("CONVEYOR_DATABASE_URL", None)
    if database_url:
        env["CONVEYOR_DATABASE_URL"] = database_url
    home.mkdir(parents=True, exist_ok=True)
    return env


def create_token(env: dict[str, str], name: str, *scopes: str) -> str:
    args = [arg for scope in scopes for arg in ("--scope", scope)]
    done = subprocess.run([CONVEYOR, "server", "token", "create", name, *args], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"conveyor server token create failed: {done.stderr.strip()}")
    return done.stdout.strip()


@dataclass
class ServerProcess:
    """One `conveyor server` on a free port; its log is copied to a file by a thread (a full pipe would stall
    it)."""

    proc: subprocess.Popen[str]
    url: str
    log: Path
    _pump: threading.Thread | None = field(default=None, repr=False)

    @classmethod
    def start(cls, env: dict[str, str], log: Path, *, workers: int = 4) -> ServerProcess:
        proc = subprocess.Popen([CONVEYOR, "server", "--bind", "127.0.0.1:0", "--workers", str(workers)],
                                cwd=env["CONVEYOR_HOME"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        first = proc.stderr.readline()
        if "listening on " not in first:
            proc.wait()
            raise SystemExit(f"conveyor server did not start: {first}{proc.stderr.read()}")
        log.write_text(first)
        server = cls(proc, first.split("listening on ", 1)[1].split()[0], log)
        server._pump = threading.Thread(target=server._copy_log, daemon=True)
        server._pump.start()
        return server

    def _copy_log(self) -> None:
        assert self.proc.stderr is not None
        with self.log.open("a") as out:
            for line in self.proc.stderr:
                out.write(line)
                out.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: drains (nothing runs by now)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._pump is not None:
            self._pump.join(timeout=10)


def client(url: str, token: str) -> Any:
    """A keep-alive API client."""
    import httpx

    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)


def register(api: Any, app: AppRepo) -> None:
    response = api.post("/api/apps", json={"name": app.name, "repo_url": str(app.remote)})
    if response.status_code != 201:
        raise SystemExit(f"POST /api/apps {app.name}: HTTP {response.status_code} {response.text}")


def first_sse_event(api: Any, operation_id: int) -> tuple[str, str]:
    """Follow GET /api/operations/{id}/events up to the operation's first recorded event (or `end`): (event
    name, data). Notes the stream sends without an id (where a queued operation waits) are not the
    operation's events: skipped."""
    name, data, event_id = "message", "", ""
    with api.stream("GET", f"/api/operations/{operation_id}/events",
                    headers={"Accept": "text/event-stream"}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line.startswith("id:"):
                event_id = line[3:].strip()
            elif line == "" and data:
                if event_id or name == "end":
                    return name, data
                name, data, event_id = "message", "", ""
    raise SystemExit(f"operation #{operation_id}'s event stream ended with no event")


def all_sse_events(api: Any, operation_id: int) -> list[tuple[str, str]]:
    """Every event of a finished operation's stream, up to `end`."""
    events: list[tuple[str, str]] = []
    name, data = "message", ""
    with api.stream("GET", f"/api/operations/{operation_id}/events") as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "" and data:
                events.append((name, data))
                if name == "end":
                    return events
                name, data = "message", ""
    return events
