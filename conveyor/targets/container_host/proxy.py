"""The reverse proxy in front of the containers: Caddy 2, driven through its JSON admin API.

One Caddy process per admin address holds one server per app+env (named `<app>-<env>`), each listening
on the environment's stable `bind:port` with a single `reverse_proxy` route to the current container.
A switch changes only that route's upstreams; Caddy applies every admin change as a graceful reload
(listeners are kept, in-flight requests finish on the old handler), so switching drops no requests.
One caveat of any graceful HTTP/1.1 reload: idle keep-alive client connections are closed, and a client
that sends its next request into one at that instant sees the connection close without an answer;
browsers and most HTTP clients resend such an idempotent request (RFC 9110 9.2.2), httpx does not.
Caddy autosaves each change under our state dir and `caddy run --resume` reloads it, so what serves
survives a restart of Caddy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import BadInput, InfrastructureMissing, TargetError

if TYPE_CHECKING:  # httpx is imported lazily: it costs start-up time for commands that never deploy.
    import httpx

# How long Caddy keeps retrying a request whose dial to the upstream fails (e.g. a port not yet
# listening), instead of answering 502 at once.
TRY_DURATION = "2s"
TRY_INTERVAL = "100ms"
START_TIMEOUT = 15.0


def server_name(app: str, env: str) -> str:
    return f"{app}-{env}"


def listen_address(bind: str, port: int) -> str:
    host = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind
    return f"{host}:{port}"


def server_config(bind: str, port: int, upstream: str) -> dict[str, Any]:
    return {
        "listen": [listen_address(bind, port)],
        "automatic_https": {"disable": True},
        "routes": [{"handle": [upstream_handler(upstream)]}],
    }


def upstream_handler(upstream: str) -> dict[str, Any]:
    return {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": upstream}],
        "load_balancing": {"try_duration": TRY_DURATION, "try_interval": TRY_INTERVAL},
    }


class CaddyProxy:
    """The Caddy behind one admin address, with its state (initial config, autosave, log, pid) under
    `state_dir/<admin address>/`: several admin addresses mean several Caddys, each with its own autosave."""

    def __init__(self, admin: str, state_dir: Path) -> None:
        if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d+", admin):
            raise BadInput(f"proxy_admin must be host:port, got '{admin}'")
        self.admin = admin
        self.base = f"http://{admin}"
        self.dir = state_dir / re.sub(r"[^A-Za-z0-9.-]+", "_", admin)

    @property
    def config_file(self) -> Path:
        return self.dir / "caddy.json"

    @property
    def log_file(self) -> Path:
        return self.dir / "caddy.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "caddy.pid"

    # -- admin API plumbing -------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> httpx.Response:
        import httpx

        try:
            return httpx.request(method, self.base + path, json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            raise TargetError(
                f"caddy admin API at {self.admin} did not answer {method} {path}: {exc}"
            ) from exc

    @staticmethod
    def _error(response: httpx.Response) -> str:
        try:
            return str(response.json().get("error") or response.text).strip()
        except (ValueError, AttributeError):
            return response.text.strip() or f"HTTP {response.status_code}"

    def _get(self, path: str) -> Any:
        """The config at `path`, or None when it (or a parent) does not exist."""
        response = self._request("GET", path)
        if response.status_code == 200:
            return response.json()
        if "invalid traversal path" in response.text:
            return None
        raise TargetError(f"caddy admin GET {path}: {self._error(response)}")

    def answering(self) -> bool:
        import httpx

        try:
            response = httpx.get(self.base + "/config/", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    # -- process ------------------------------------------------------------------------------------

    def ensure_running(self) -> None:
        """Start Caddy (resuming its autosaved config) unless its admin API already answers."""
        if self.answering():
            return
        caddy = shutil.which("caddy")
        if caddy is None:
            raise InfrastructureMissing("caddy is not installed (or not on PATH): the container-host target "
                                        "needs Caddy 2 as its reverse proxy (Debian package 'caddy')")
        self.dir.mkdir(parents=True, exist_ok=True)
        # Only used when there is no autosave yet; --resume prefers the last config Caddy saved.
        self.config_file.write_text(json.dumps({"admin": {"listen": self.admin}}) + "\n")
        # A minimal environment: Caddy needs none of the deploying process's variables (secrets among them),
        # and XDG dirs under our state dir keep its autosave and data with the rest of conveyor's state.
        environment = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(self.dir),
            "XDG_CONFIG_HOME": str(self.dir / "config"),
            "XDG_DATA_HOME": str(self.dir / "data"),
        }
        config, pid_file = str(self.config_file), str(self.pid_file)
        command = [caddy, "run", "--resume", "--config", config, "--pidfile", pid_file]
        log = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # posix_spawn rather than Popen: Caddy is meant to outlive this process, and a Popen object
            # would warn (and expect a wait) for a child it never sees end. setsid detaches it from our
            # terminal and process group, so ^C on a deploy does not take the proxy down.
            pid = os.posix_spawn(
                caddy, command, environment, setsid=True,
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                              (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2)],
            )
        finally:
            os.close(log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.answering():
                return
            code = _reap(pid)
            if code is not None:
                raise TargetError(f"caddy exited with code {code} while starting: "
                                  f"{self._last_log_error()} (log: {self.log_file})")
            time.sleep(0.05)
        raise TargetError(f"caddy's admin API at {self.admin} did not answer within {START_TIMEOUT:g}s "
                          f"(log: {self.log_file})")

    def _last_log_error(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                if line.strip():
                    return line.strip()
                continue
            if entry.get("level") in ("error", "fatal", "panic") or "error" in entry:
                return f"{entry.get('msg', '')}: {entry.get('error', '')}".strip(": ")
        return lines[-1].strip() if lines else "no log output"

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop this Caddy (admin `/stop`, then SIGKILL by its pid file if it lingers)."""
        pid = self.pid()
        if self.answering():
            import contextlib

            with contextlib.suppress(TargetError):
                self._request("POST", "/stop")
        if pid is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        _reap(pid)

    # -- servers ------------------------------------------------------------------------------------

    def server(self, app: str, env: str) -> dict[str, Any] | None:
        found = self._get(f"/config/apps/http/servers/{server_name(app, env)}")
        return found if isinstance(found, dict) else None

    def upstream(self, app: str, env: str) -> str | None:
        """The upstream `host:port` this app+env is proxied to, or None when it has no server here."""
        server = self.server(app, env)
        try:
            return str(server["routes"][0]["handle"][0]["upstreams"][0]["dial"]) if server else None
        except (KeyError, IndexError, TypeError):
            return None

    def listens(self, app: str, env: str) -> list[str]:
        server = self.server(app, env)
        return list(server.get("listen") or []) if server else []

    def switch(self, app: str, env: str, bind: str, port: int, upstream: str) -> None:
        """Point app+env's server at `upstream`, creating the server when missing.

        Writes use create-only PUT and replace-only PATCH on this server's own path, so concurrent
        changes to other servers are never overwritten; a lost race is detected and retried.
        """
        name = server_name(app, env)
        wanted = server_config(bind, port, upstream)
        for _ in range(5):
            current = self.server(app, env)
            if current is None:
                path, body = self._creation(name, wanted)
                response = self._request("PUT", path, body)
            elif current.get("listen") == wanted["listen"] and _is_ours(current):
                # Only the upstreams change: the route, its handler and the listener stay as they are.
                path = f"/config/apps/http/servers/{name}/routes/0/handle/0/upstreams"
                response = self._request("PATCH", path, [{"dial": upstream}])
            else:
                # The stable port (or the route's shape) changed: replace this server as a whole.
                path = f"/config/apps/http/servers/{name}"
                response = self._request("PATCH", path, wanted)
            if response.status_code == 200:
                return
            error = self._error(response)
            if "already exists" in error or "invalid traversal path" in error or "not exist" in error:
                continue  # another writer got in between our read and write: read again
            raise TargetError(f"caddy refused to switch {name} to {upstream}: {error}")
        raise TargetError(f"caddy config for {name} kept changing under us; switch to {upstream} not applied")

    def _creation(self, name: str, server: dict[str, Any]) -> tuple[str, Any]:
        """The deepest missing level of apps/http/servers/<name> and the body that creates it."""
        apps = self._get("/config/apps")
        if not isinstance(apps, dict):
            return "/config/apps", {"http": {"servers": {name: server}}}
        http = apps.get("http")
        if not isinstance(http, dict):
            return "/config/apps/http", {"servers": {name: server}}
        if not isinstance(http.get("servers"), dict):
            return "/config/apps/http/servers", {name: server}
        return f"/config/apps/http/servers/{name}", server


def _is_ours(server: dict[str, Any]) -> bool:
    try:
        handler = server["routes"][0]["handle"][0]
    except (KeyError, IndexError, TypeError):
        return False
    return len(server["routes"]) == 1 and handler.get("handler") == "reverse_proxy"


def _reap(pid: int) -> int | None:
    """The exit code of our child `pid` once it has exited (collecting it), else None.

    A Caddy started by another process is not our child: nothing to collect there.
    """
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if done else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) still answers signal 0; it serves nothing.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
