"""The reverse proxy in front of the containers: HAProxy, switched through its runtime API.

One HAProxy (master-worker mode) per conveyor state dir serves every app+env deployed from that dir: one
`listen` section per app+env, named `<app>.<env>`, on the environment's stable `bind:port`, with two server
slots: `blue`, and `green`, a backup server. The slot that serves is blue when blue is in service, else
green; the other one is in maintenance once a switch is complete.

Switching an existing app+env never reloads anything. Over the runtime API the slot not serving gets the
new upstream's address and is put in service, then the old slot is put in maintenance. Because green is a
backup, exactly one of those two steps moves the traffic, at once: putting blue in service (it takes over
from the backup), or putting blue in maintenance (the backup takes over). Two ordinary servers would share
the traffic between the steps, and a client would see new, old, new. Client connections are not touched,
so keep-alive clients see nothing; in-flight requests on the old slot finish; maintenance closes the old
slot's idle server connections, so the next request goes to the new upstream. (Changing the address of a
single server instead was measured to keep reusing pooled server connections to the old address: requests
still reached the old container after the switch, and failed once it stopped.)

A new app+env (a new listener) needs a new config: conveyor rewrites haproxy.cfg from proxy.json and
reloads through the master CLI. The reload is seamless: the new worker takes over the listening sockets,
and the old worker, with `idle-close-on-response`, keeps its idle keep-alive connections open until their
next request, which it answers with `Connection: close`. An old worker refuses runtime changes ("Proxy is
disabled"), so it routes those last requests with the servers it had: a deploy must not retire the previous
container while an old worker still holds connections for that app+env (see held_by_old_workers).

proxy.json is the desired state; haproxy.cfg is generated from it, so a restart (ensure_running) comes back
with every app+env's current upstream.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets as random_tokens
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.errors import BadInput, InfrastructureMissing, TargetError
from conveyor.targets.container_host.machine import LocalMachine, Machine, alive

SLOTS = ("blue", "green")
# The idle slot's address in a generated config: it is in maintenance there, so it is never dialled.
PLACEHOLDER = "127.0.0.1:1"
START_TIMEOUT = 15.0
# Idle keep-alive client connections are closed after this; it also bounds how long a worker left by a
# reload keeps an idle connection (see held_by_old_workers).
CLIENT_TIMEOUT = 60
RELOAD_TIMEOUT = 15.0
LOCK_TIMEOUT = 60.0
CLI_TIMEOUT = 5.0
# srv_admin_state bits that keep a server from taking new requests: maintenance (forced, inherited, DNS)
# and drain (forced, inherited). Not 0x04: it only records `disabled` in the config, and stays set after
# the server has been put in service.
OUT_OF_SERVICE = 0x01 | 0x02 | 0x20 | 0x08 | 0x10
# A unix socket path holds at most 107 bytes; HAProxy binds `<path>.<pid>.tmp` first and renames it.
MAX_SOCKET_PATH = 107 - len(".4194304.tmp")
NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
BIND = re.compile(r"\[?[A-Za-z0-9.:*-]*\]?")
MISSING = "haproxy is not installed (apt-get install haproxy)"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def site_name(app: str, env: str) -> str:
    """HAProxy's name for app+env. `.` cannot occur in either name, so no two app+envs share one."""
    if not (NAME.fullmatch(app) and NAME.fullmatch(env)):
        raise BadInput(f"app and environment names must match {NAME.pattern}: got '{app}', '{env}'")
    return f"{app}.{env}"


def listen_address(bind: str, port: int) -> str:
    host = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind
    return f"{host}:{port}"


def split_upstream(upstream: str) -> tuple[str, int]:
    host, _, port = upstream.rpartition(":")
    if not re.fullmatch(r"[0-9.]+|\[?[0-9A-Fa-f:]+\]?", host) or not port.isdigit():
        raise BadInput(f"upstream must be ip:port, got '{upstream}'")
    return host.strip("[]"), int(port)


def haproxy_binary(machine: Machine | None = None) -> str:
    found = (machine or LocalMachine()).which("haproxy")
    if found is None:
        raise InfrastructureMissing(MISSING)
    return found


@dataclass(frozen=True)
class Slot:
    name: str
    address: str  # host:port
    in_service: bool


@dataclass
class Processes:
    """The master CLI's `show proc`."""

    reloads: int = 0
    failed: int = 0
    workers: list[int] = field(default_factory=list)
    old_workers: list[int] = field(default_factory=list)


class HAProxy:
    """The HAProxy for one state dir. Its files: haproxy.cfg (generated), proxy.json (desired frontends and
    upstreams), haproxy.pid (the master's pid), master.sock (master CLI), haproxy.sock (runtime API of the
    current worker), haproxy.log (HAProxy's stderr: failed requests, server state changes, alerts)."""

    def __init__(self, state_dir: Path, machine: Machine | None = None) -> None:
        self.dir = Path(state_dir)
        # Where HAProxy runs: its files, its sockets, its process (this machine, or a fleet host).
        self.machine: Machine = machine or LocalMachine()

    @property
    def config_file(self) -> Path:
        return self.dir / "haproxy.cfg"

    @property
    def state_file(self) -> Path:
        return self.dir / "proxy.json"

    @property
    def log_file(self) -> Path:
        return self.dir / "haproxy.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "haproxy.pid"

    @property
    def master_socket(self) -> Path:
        return self.dir / "master.sock"

    @property
    def stats_socket(self) -> Path:
        return self.dir / "haproxy.sock"

    # -- desired state (proxy.json) -----------------------------------------------------------------

    def sites(self) -> dict[str, dict[str, Any]]:
        """Every app+env this HAProxy serves: name -> {app, env, bind, port, upstream}."""
        text = self.machine.read_text(self.state_file)
        if text is None:
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise TargetError(f"cannot read {self.state_file}: {exc}") from exc
        sites = data.get("sites") if isinstance(data, dict) else None
        return dict(sites) if isinstance(sites, dict) else {}

    def _write_sites(self, sites: dict[str, dict[str, Any]]) -> None:
        self.machine.write_text(self.state_file, json.dumps({"sites": sites}, indent=2, sort_keys=True) + "\n")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialises changes (and starts) across conveyor processes sharing this state dir."""
        with self.machine.locked(self.dir / "proxy.lock", LOCK_TIMEOUT):
            yield

    # -- config -------------------------------------------------------------------------------------

    def render(self, sites: dict[str, dict[str, Any]]) -> str:
        return render_config(sites, pid_file=self.pid_file, stats_socket=self.stats_socket)

    def _check(self, binary: str, text: str) -> None:
        """Refuse a config HAProxy would refuse, before a running HAProxy is asked to load it."""
        candidate = self.dir / f".check-{random_tokens.token_hex(4)}.cfg"
        self.machine.write_text(candidate, text)
        try:
            done = self.machine.runner.run([binary, "-c", "-q", "-f", str(candidate)], timeout=30)
        finally:
            self.machine.remove(candidate)
        if done.returncode != 0:
            problem = _alert(done.stderr or done.stdout) or f"exit code {done.returncode}"
            raise TargetError(f"haproxy refused the generated config: {problem}")

    # -- CLI plumbing -------------------------------------------------------------------------------

    def _cli(self, path: Path, command: str, timeout: float = CLI_TIMEOUT) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            chunks: list[bytes] = []
            try:
                sock.connect(self.machine.unix_socket(path))
                sock.sendall(command.encode() + b"\n")
                # The CLI answers a non-interactive client once it has finished sending, then closes.
                sock.shutdown(socket.SHUT_WR)
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except OSError as exc:
                raise TargetError(f"haproxy's CLI at {path} did not answer '{command}': {exc}") from exc
        return b"".join(chunks).decode(errors="replace")

    def _master(self, command: str) -> str:
        return self._cli(self.master_socket, command)

    def _worker(self, pid: int | None, command: str) -> str:
        """A runtime API command for worker `pid` (None: the current worker), through the master CLI."""
        prefix = "@1" if pid is None else f"@!{pid}"
        return self._master(f"{prefix} {command}").strip()

    def processes(self) -> Processes:
        return parse_processes(self._master("show proc"))

    def answering(self) -> bool:
        """Whether this state dir's HAProxy runs and has a worker serving."""
        try:
            return bool(self.processes().workers)
        except TargetError:
            return False

    def slots(self, name: str, pid: int | None = None) -> list[Slot] | None:
        """The slots of `name` in worker `pid` (None: the current one); None when it has no such proxy."""
        return parse_servers_state(name, self._worker(pid, f"show servers state {name}"))

    # -- process ------------------------------------------------------------------------------------

    def ensure_running(self) -> None:
        """Start HAProxy from proxy.json unless it runs; when it runs, make it serve every app+env in
        proxy.json (a change cut short may have left one out) and let proxy.json follow what it serves."""
        binary = haproxy_binary(self.machine)
        with self._locked():
            if self.answering():
                self._reconcile(binary)
            else:
                self._start(binary)

    def _reconcile(self, binary: str) -> None:
        sites = self.sites()
        running: dict[str, list[Slot] | None] = {name: self.slots(name) for name in sites}
        if any(slots is None for slots in running.values()):
            self._reload(binary, sites)
            return
        changed = False
        for name, slots in running.items():
            live = serving(slots or [])
            # The runtime is what serves (a switch applies there first); the file follows it.
            if live is not None and live.address != sites[name]["upstream"]:
                sites[name] = {**sites[name], "upstream": live.address}
                changed = True
        if changed:
            self._write_sites(sites)

    def _start(self, binary: str) -> None:
        self.check_paths()
        with contextlib.suppress(ValueError):
            self.machine.reap(int((self.machine.read_text(self.pid_file) or "").strip()))  # ours, died: collect it
        lingering = self.master_pid()
        if lingering is not None:
            # Ours, but its master CLI does not answer (yet): starting a second one would fight it.
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and not self.answering() and alive(self.machine, lingering):
                time.sleep(0.1)
            if self.answering():
                return
            if alive(self.machine, lingering):
                raise TargetError(f"haproxy (pid {lingering}) runs but its master CLI at {self.master_socket} "
                                  f"does not answer; stop it and deploy again (log: {self.log_file})")
        sites = self.sites()
        text = self.render(sites)
        self._check(binary, text)
        self.machine.write_text(self.config_file, text)
        # A minimal environment: HAProxy needs none of the deploying process's variables (secrets among them).
        path = os.environ.get("PATH", DEFAULT_PATH) if self.machine.shares_environment else DEFAULT_PATH
        environment = {"PATH": path}
        command = [binary, "-W", "-S", f"{self.master_socket},mode,600", "-f", str(self.config_file)]
        offset = self._log_size()
        pid = self.machine.runner.detach(command, env=environment, log=str(self.log_file))  # outlives us
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answering():
            code = self.machine.reap(pid)
            if code is None and not alive(self.machine, pid):
                code = -1  # not our child (a fleet host's): gone, with a code only its parent saw
            if code is not None:
                raise TargetError(f"haproxy exited with code {code} while starting: "
                                  f"{self._log_alert(offset)} (log: {self.log_file})")
            if time.monotonic() > deadline:
                raise TargetError(f"haproxy's master CLI at {self.master_socket} did not answer within "
                                  f"{START_TIMEOUT:g}s (log: {self.log_file})")
            time.sleep(0.05)
        self._await_listeners(sites)

    def check_paths(self) -> None:
        """Whether HAProxy can use this state dir at all: its unix socket paths have a length limit."""
        for path in (self.master_socket, self.stats_socket):
            if len(str(path).encode()) > MAX_SOCKET_PATH:
                raise BadInput(f"the state dir {self.dir} is too long a path for haproxy's unix sockets "
                               f"({len(str(path).encode())} > {MAX_SOCKET_PATH} bytes): use a shorter "
                               "CONVEYOR_HOME")
        if re.search(r"[,'\s\\]", str(self.dir)):
            # `-S` separates socket options with commas; the config quotes paths with single quotes.
            raise BadInput(f"the state dir {self.dir} holds a comma, quote, backslash or white space, "
                           "which haproxy's socket options cannot carry: use another CONVEYOR_HOME")

    def master_pid(self) -> int | None:
        """The master's pid from the pid file, when that process is alive and is this state dir's HAProxy."""
        try:
            pid = int((self.machine.read_text(self.pid_file) or "").strip())
        except (TargetError, ValueError):
            return None
        try:
            arguments = (self.machine.read_text(Path(f"/proc/{pid}/cmdline")) or "").split("\0")
        except TargetError:
            return None
        # A pid file outlives its process; the pid may have been reused by an unrelated one.
        mine = any(argument.startswith(str(self.master_socket)) for argument in arguments)
        return pid if mine and alive(self.machine, pid) else None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop this HAProxy at once (SIGTERM to the master, which stops its workers; SIGKILL if it lingers)."""
        pid = self.master_pid()
        if pid is None:
            return
        workers: list[int] = []
        with contextlib.suppress(TargetError):
            found = self.processes()
            workers = found.workers + found.old_workers
        self.machine.signal(pid, "TERM")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive(self.machine, pid):
            self.machine.reap(pid)
            time.sleep(0.05)
        if alive(self.machine, pid):
            self.machine.signal(pid, "KILL")
        self.machine.reap(pid)
        # Workers end with their master; wait for that so their ports are free when stop() returns.
        while time.monotonic() < deadline and any(alive(self.machine, worker) for worker in workers):
            time.sleep(0.05)

    # -- app+envs -----------------------------------------------------------------------------------

    def upstream(self, app: str, env: str) -> str | None:
        """The `host:port` app+env is proxied to, or None when it is not served here. When HAProxy is not
        running: the upstream it will serve once started (from proxy.json)."""
        name = site_name(app, env)
        if not self.answering():
            site = self.sites().get(name)
            return str(site["upstream"]) if site else None
        live = serving(self.slots(name) or [])
        return live.address if live else None

    def listens(self, app: str, env: str) -> list[str]:
        """The stable address app+env is served on (from proxy.json), or [] when it is not served here."""
        site = self.sites().get(site_name(app, env))
        return [listen_address(str(site["bind"]), int(site["port"]))] if site else []

    def may_listen(self, app: str, env: str, bind: str, port: int) -> bool:
        """Whether app+env can be served on bind:port: this HAProxy already serves it there, or nothing
        listens there. Judged under the lock: a reload takes the port before proxy.json names its site, so
        a reader outside the lock could see the port taken by a site it cannot see yet (a concurrent first
        deploy of the same app+env)."""
        with self._locked():
            ours = self.answering() and listen_address(bind, port) in self.listens(app, env)
            return ours or self.machine.port_free(bind, port)

    def switch(self, app: str, env: str, bind: str, port: int, upstream: str) -> None:
        """Proxy app+env's `bind:port` to `upstream`: at runtime when that listener exists, else by adding it
        (a seamless reload). Returns once the change serves; raises TargetError when it could not be made."""
        name = site_name(app, env)
        host, upstream_port = split_upstream(upstream)
        _bind(bind, port)  # refuse a bind the config could not carry before anything changes
        wanted = {"app": app, "env": env, "bind": bind, "port": int(port),
                  "upstream": listen_address(host, upstream_port)}
        binary = haproxy_binary(self.machine)
        with self._locked():
            if not self.answering():
                raise TargetError(f"haproxy is not running (master CLI {self.master_socket})")
            sites = self.sites()
            known = sites.get(name)
            same_listener = known is not None and (known["bind"], int(known["port"])) == (bind, int(port))
            if same_listener and self.slots(name) is not None:
                self._switch_runtime(name, host, upstream_port)
                self._write_sites({**sites, name: wanted})
            else:
                self._reload(binary, {**sites, name: wanted})

    def remove(self, app: str, env: str) -> None:
        """Stop serving app+env: its listener goes (a seamless reload); with no app+env left, HAProxy stops."""
        name = site_name(app, env)
        binary = haproxy_binary(self.machine)
        with self._locked():
            sites = self.sites()
            if name not in sites:
                return
            remaining = {other: site for other, site in sites.items() if other != name}
            if remaining and self.answering():
                self._reload(binary, remaining)
                return
            self._write_sites(remaining)
        if not remaining:
            self.stop()

    def held_by_old_workers(self, app: str, env: str) -> int:
        """How many client connections of app+env workers left by a reload still hold. They route their
        remaining requests to the upstream that served when the reload happened (runtime changes do not
        reach them), so that upstream must keep running until this is 0. Each such connection ends at its
        next request (answered with Connection: close), or after CLIENT_TIMEOUT idle."""
        name = site_name(app, env)
        try:
            old_workers = self.processes().old_workers
        except TargetError:
            return 0  # not running: nothing holds anything
        held = 0
        for pid in old_workers:
            try:
                answer = self._worker(pid, f"show stat {name} 1 -1")  # the frontend's row only
            except TargetError:
                continue  # it exited meanwhile
            lines = answer.splitlines()
            if not lines or not lines[0].startswith("# "):
                continue  # "No such proxy.": it predates this app+env
            columns = lines[0][2:].split(",")
            for line in lines[1:]:
                row = dict(zip(columns, line.split(","), strict=False))
                if row.get("pxname") == name and row.get("svname") == "FRONTEND" and row.get("scur", "").isdigit():
                    held += int(row["scur"])
        return held

    def _switch_runtime(self, name: str, host: str, port: int) -> None:
        found = self.processes()
        for pid in found.workers:
            self._switch_worker(pid, name, host, port)
        address = listen_address(host, port)
        for pid in found.workers:
            slots = self.slots(name, pid) or []
            live = serving(slots)
            if live is None or live.address != address or any(s.in_service for s in slots if s is not live):
                state = ", ".join(f"{s.name} {s.address} {'in service' if s.in_service else 'out'}" for s in slots)
                raise TargetError(f"haproxy did not take the switch of {name} to {address}: {state}")

    def _switch_worker(self, pid: int, name: str, host: str, port: int) -> None:
        slots = self.slots(name, pid)
        if not slots:
            raise TargetError(f"haproxy worker {pid} does not serve {name}")
        address = listen_address(host, port)
        old = serving(slots)
        # Already serving the address (then only the other slot may still need to go out), else the other slot.
        already = old is not None and old.address == address
        target = old if already and old is not None else next(slot for slot in slots if slot is not old)
        if target.address != address:
            # Not serving, so changing its address touches no request.
            answer = self._worker(pid, f"set server {name}/{target.name} addr {host} port {port}")
            if "changed" not in answer and "no need to change" not in answer:
                raise TargetError(f"haproxy refused the address {address} for {name}/{target.name}: {answer}")
        # In service first, then the old slot out: there is never a moment without an upstream. Blue going in
        # (or out) is the moment the traffic moves; green, the backup, takes none while blue serves.
        if not target.in_service:
            self._state(pid, name, target.name, "ready")
        for slot in slots:
            if slot is not target and slot.in_service:
                try:
                    self._state(pid, name, slot.name, "maint")
                except TargetError:
                    if target.name == SLOTS[1]:
                        # Blue still serves: take green out again, so what serves is unambiguous.
                        with contextlib.suppress(TargetError):
                            self._state(pid, name, target.name, "maint")
                    raise

    def _state(self, pid: int, name: str, slot: str, state: str) -> None:
        answer = self._worker(pid, f"set server {name}/{slot} state {state}")
        if answer:
            raise TargetError(f"haproxy refused to set {name}/{slot} {state}: {answer}")

    def _reload(self, binary: str, sites: dict[str, dict[str, Any]]) -> None:
        """Serve `sites` through a new config and a seamless reload; proxy.json follows once it serves."""
        text = self.render(sites)
        self._check(binary, text)
        previous = self.machine.read_text(self.config_file)
        before = self.processes()
        offset = self._log_size()
        self.machine.write_text(self.config_file, text)
        try:
            # The master re-executes itself and closes this connection without an answer.
            with contextlib.suppress(TargetError):
                self._master("reload")
            self._await_reload(before, offset)
        except BaseException:
            # The previous worker keeps serving the previous config: the file says so again.
            if previous is not None:
                self.machine.write_text(self.config_file, previous)
            raise
        # The new worker serves `sites` from here on, whatever follows.
        self._write_sites(sites)
        self._await_listeners(sites)

    def _await_reload(self, before: Processes, offset: int) -> None:
        deadline = time.monotonic() + RELOAD_TIMEOUT
        earlier = set(before.workers) | set(before.old_workers)
        while True:
            try:
                now = self.processes()
            except TargetError:
                now = None  # the master is re-executing
            if now is not None and now.reloads > before.reloads:
                if any(pid not in earlier for pid in now.workers):
                    return
                if now.failed > 0:
                    raise TargetError(f"haproxy could not load the new config: {self._log_alert(offset)} "
                                      f"(log: {self.log_file}); the previous config keeps serving")
            if time.monotonic() > deadline:
                raise TargetError(f"haproxy did not finish reloading within {RELOAD_TIMEOUT:g}s "
                                  f"(log: {self.log_file})")
            time.sleep(0.02)

    def _await_listeners(self, sites: dict[str, dict[str, Any]]) -> None:
        """Return once every site's listener accepts connections and the current worker serves it."""
        deadline = time.monotonic() + START_TIMEOUT
        for name, site in sites.items():
            host = dial_host(str(site["bind"]))
            while True:
                if not self.machine.accepts(host, int(site["port"])):
                    problem = "its listener does not accept connections"
                elif self.slots(name) is not None:
                    break
                else:
                    problem = "the current worker does not serve it"
                if time.monotonic() > deadline:
                    raise TargetError(f"haproxy does not answer on {listen_address(host, int(site['port']))} "
                                      f"for {name}: {problem} (log: {self.log_file})")
                time.sleep(0.05)

    def _log_size(self) -> int:
        try:
            return len(self.machine.read_text(self.log_file) or "")
        except TargetError:
            return 0

    def _log_alert(self, offset: int) -> str:
        """The last ALERT HAProxy logged since `offset` (what made a start or reload fail)."""
        try:
            text = self.machine.read_text(self.log_file)
        except TargetError:
            text = None
        if text is None:
            return "no log"
        return _alert(text[offset:]) or "no alert logged"



# -- HAProxy's texts, as pure functions (tested on HAProxy 2.6's own output, no HAProxy needed) ----------


def render_config(sites: dict[str, dict[str, Any]], *, pid_file: Path, stats_socket: Path) -> str:
    """haproxy.cfg for these sites, each served by its `blue` slot (the other in maintenance)."""
    lines = [
        "# Generated by conveyor from proxy.json; changes made here are lost at the next deploy.",
        "global",
        f"    pidfile {_quoted(pid_file)}",
        f"    stats socket {_quoted(stats_socket)} mode 600 level admin expose-fd listeners",
        # Only failed requests and server state changes are logged (see dontlog-normal), to stderr,
        # which is haproxy.log.
        "    log stderr format raw local0 info",
        # The stable ports are this HAProxy's alone: a second HAProxy started by mistake, or any other
        # SO_REUSEPORT program, must fail to bind them instead of silently sharing their traffic.
        # Reloads do not need SO_REUSEPORT: the new worker receives the listening sockets.
        "    noreuseport",
        # How long a worker left by a reload may keep serving the connections it still has.
        "    hard-stop-after 10m",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlog-normal",
        "    option dontlognull",  # e.g. conveyor's own check that a new listener accepts connections
        "    timeout connect 2s",
        f"    timeout client {CLIENT_TIMEOUT}s",
        "    timeout server 60s",
        # WebSocket and other upgraded connections are idle for long stretches by nature.
        "    timeout tunnel 1h",
        # A request whose connection to the upstream fails is tried again instead of failing;
        # redispatch lets the last try go to the other slot if it is the one in service by then.
        "    retries 3",
        "    option redispatch",
        # On a reload, the old worker keeps idle keep-alive connections until their next request (and
        # answers it with Connection: close) rather than closing them under a client about to use them.
        "    option idle-close-on-response",
        # What the apps saw behind Caddy: the client's address, scheme and host.
        "    option forwardfor",
        "",
    ]
    for name, site in sorted(sites.items()):
        host, port = split_upstream(str(site["upstream"]))
        lines += [
            f"listen {name}",
            f"    bind {_bind(str(site['bind']), int(site['port']))}",
            # As Caddy did for a client it does not trust: its own X-Forwarded-For is replaced, not
            # extended (forwardfor adds the header after these rules).
            "    http-request del-header X-Forwarded-For",
            "    http-request set-header X-Forwarded-Proto http",
            "    http-request set-header X-Forwarded-Host %[req.hdr(host)]",
            f"    server {SLOTS[0]} {listen_address(host, port)}",
            f"    server {SLOTS[1]} {PLACEHOLDER} backup disabled",
            "",
        ]
    return "\n".join(lines)


def parse_processes(answer: str) -> Processes:
    """The master CLI's `show proc`: the reload counters, the current and the old workers' pids."""
    found = Processes()
    section = ""
    for line in answer.splitlines():
        if line.startswith("#"):
            section = line.lstrip("# ").strip()
            continue
        fields = line.split()
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        if fields[1] == "master":
            found.reloads = int(fields[2]) if fields[2].isdigit() else 0
            failed = re.search(r"failed:\s*(\d+)", line)
            found.failed = int(failed.group(1)) if failed else 0
        elif section == "workers":
            found.workers.append(int(fields[0]))
        elif section == "old workers":
            found.old_workers.append(int(fields[0]))
    return found


def parse_servers_state(name: str, answer: str) -> list[Slot] | None:
    """`show servers state NAME`: the proxy's slots, or None when HAProxy has no such proxy."""
    if "such backend" in answer.lower() or "can't find backend" in answer.lower():
        return None
    columns: list[str] = []
    found: list[Slot] = []
    for line in answer.splitlines():
        if line.startswith("# be_id"):
            columns = line[1:].split()
            continue
        fields = line.split()
        if not columns or len(fields) != len(columns):
            continue
        row = dict(zip(columns, fields, strict=True))
        if row["be_name"] != name:
            continue
        found.append(Slot(name=row["srv_name"], address=listen_address(row["srv_addr"], int(row["srv_port"])),
                          in_service=row["srv_op_state"] != "0"
                          and not int(row["srv_admin_state"]) & OUT_OF_SERVICE))
    if not columns:
        raise TargetError(f"haproxy answered 'show servers state {name}' with: {answer[:200]}")
    return found


def serving(slots: list[Slot]) -> Slot | None:
    """The slot that takes the requests: blue when in service, else green (the backup) when in service."""
    for name in SLOTS:
        for slot in slots:
            if slot.name == name and slot.in_service:
                return slot
    return None


def _alert(text: str) -> str:
    """The most telling line of HAProxy's output: its first ALERT (the cause; later ones say 'exiting')."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    alerts = [line for line in lines if "[ALERT]" in line]
    chosen = alerts[0] if alerts else (lines[-1] if lines else "")
    return re.sub(r"^\[ALERT\]\s*\(\d+\)\s*:\s*", "", chosen)


def _bind(bind: str, port: int) -> str:
    if not BIND.fullmatch(bind) or not 1 <= int(port) <= 65535:
        raise BadInput(f"cannot listen on '{bind}' port {port}")
    return listen_address(bind, port)


def dial_host(bind: str) -> str:
    """Where to connect to reach a listener bound to `bind` (a wildcard is reached through loopback)."""
    host = bind.strip("[]")
    if host in ("", "*", "0.0.0.0"):
        return "127.0.0.1"
    return "::1" if host == "::" else host


def _quoted(path: Path) -> str:
    return f"'{path}'"  # single quotes: HAProxy expands no environment variables inside them
