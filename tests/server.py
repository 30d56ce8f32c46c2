"""A real `conveyor server` process for the tests: started on a free port on the test app's ledger, with
tokens made by `conveyor server token create` and the app registered through the API.

Its log is pumped to a file by a thread (a full pipe would stall the server), and `wait_for_log` reads that
file up to a line the test expects, so nothing waits on a clock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e import CONVEYOR, App, Result


@dataclass
class ServerProcess:
    app: App
    log: Path
    proc: subprocess.Popen[str]
    url: str
    tokens: dict[str, str] = field(default_factory=dict)
    _pump: threading.Thread | None = None

    @classmethod
    def start(cls, app: App, name: str = "server", *, workers: int = 4, **env: str) -> ServerProcess:
        log = app.home.parent / f"{name}.log"
        proc = subprocess.Popen([CONVEYOR, "server", "--bind", "127.0.0.1:0", "--workers", str(workers)],
                                cwd=app.home.parent, env=app.env(**env), stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        first = proc.stderr.readline()
        if "listening on " not in first:
            rest = proc.stderr.read()
            raise AssertionError(f"conveyor server did not start: {first}{rest}")
        log.write_text(first)
        server = cls(app, log, proc, first.split("listening on ", 1)[1].split()[0])
        server._pump = threading.Thread(target=server._copy_log, daemon=True)
        server._pump.start()
        return server

    def _copy_log(self) -> None:
        assert self.proc.stderr is not None
        with self.log.open("a") as out:
            for line in self.proc.stderr:
                out.write(line)
                out.flush()

    def wait_for_log(self, needle: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"'{needle}' never appeared in the server's log:\n{self.log.read_text()}")

    def token(self, name: str, *scopes: str) -> str:
        if name not in self.tokens:
            args = [arg for scope in scopes for arg in ("--scope", scope)]
            result = self.app.ok("server", "token", "create", name, *args)
            self.tokens[name] = result.out.strip()
        return self.tokens[name]

    def client_env(self, token: str | None = None) -> dict[str, str]:
        return {"CONVEYOR_SERVER": self.url, "CONVEYOR_TOKEN": token or self.token("ci", "operate:*", "block")}

    def cli(self, *args: str, token: str | None = None, **env: str) -> Result:
        """`conveyor ARGS` from the app's checkout, sent to this server."""
        return self.app.run(*args, **self.client_env(token), **env)

    def cli_ok(self, *args: str, token: str | None = None, **env: str) -> Result:
        result = self.cli(*args, token=token, **env)
        assert result.code == 0, f"conveyor {' '.join(args)} exited {result.code}:\n{result.err}\n{result.out}"
        return result

    def cli_start(self, *args: str, token: str | None = None) -> subprocess.Popen[str]:
        return self.app.start(*args, **self.client_env(token))

    def api(self, method: str, path: str, body: Any = None, *, token: str | None = "admin") -> tuple[int, Any]:
        """One API call with urllib (a client that is not conveyor's own); token "admin" means the admin token."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.token('admin', 'admin') if token == 'admin' else token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def add_app(self) -> None:
        status, body = self.api("POST", "/api/apps", {"name": "hello", "repo_url": str(self.remote)})
        assert status == 201, body

    @property
    def remote(self) -> Path:
        return self.app.repo.parent / "remote.git"

    def push(self, sha: str = "HEAD") -> str:
        """Publish a commit the test made on the app's remote (the server ships what the remote has)."""
        full = self.app.git("rev-parse", sha)
        self.app.git("push", "-q", "-f", "origin", f"{full}:refs/heads/c-{full[:12]}")
        return full

    def operation(self, number: int) -> dict[str, Any]:
        status, body = self.api("GET", f"/api/operations/{number}")
        assert status == 200, body
        return body

    def wait_for_state(self, number: int, *states: str, timeout: float = 180) -> dict[str, Any]:
        """Poll the API (the state the test waits for is the server's, reached when it is reached)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.operation(number)
            if found["state"] in states:
                return found
            time.sleep(0.05)
        raise AssertionError(f"operation #{number} never reached {states}: {self.operation(number)}")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=180)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._pump is not None:
            self._pump.join(timeout=10)
