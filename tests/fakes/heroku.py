"""An in-repo server speaking the Heroku Platform API, for the `heroku` target's tests (Heroku cannot be
reached from here). Its registry side is a real docker-registry: a formation update naming an image
the app's registry repository lacks is refused with 422, as Heroku does.

Served (shapes as in the Platform API reference; only the fields listed are filled):
  GET    /apps/{app}                        id, name
  GET    /apps/{app}/config-vars            {KEY: value}
  PATCH  /apps/{app}/config-vars            values set, null deletes; makes a release (no release phase)
  GET    /apps/{app}/formation              [{id, type, quantity, size, command, docker_image: {id}}]
  PATCH  /apps/{app}/formation              {"updates": [{"type", "docker_image", "quantity"}]} (an image
                                            needs the version=3.docker-releases Accept variant, and makes a
                                            `pending` release; a `release` type runs the release phase;
                                            a quantity alone scales, no release); a new type's quantity is
                                            1 for web, else 0
  GET    /apps/{app}/releases               Range: version ..; order=desc, max=N
  GET    /apps/{app}/releases/{id|version}  id, version, status, current, description, output_stream_url
  GET    /streams/{release id}              the release phase's output, text
  GET    /apps/{app}/dynos                  [{id, name, type, state, release: {id, version}, command, size}]
  POST   /apps/{app}/dynos                  a one-off dyno: {"command", "type", "attach", "size", "time_to_live",
                                            "env"} → 201 {id, name: run.N, type: run, state: starting, …}; it
                                            runs the image the current release gives `type` (422 for a type
                                            the formation lacks or a size Heroku has not)
  GET    /apps/{app}/dynos/{id|name}        one dyno; a one-off that has ended: 404
  POST   /apps/{app}/dynos/{id}/actions/stop  stops a one-off (202)
  POST   /apps/{app}/log-sessions           {"dyno", "lines", "tail"} → {id, logplex_url}; GET it → the log
                                            lines; a one-off dyno's log is logplex's lines (`heroku[run.N]:
                                            Starting process …`, `app[run.N]: …`, `heroku[run.N]: Process
                                            exited with status N`, `State changed from up to complete`), and
                                            with `tail` the stream then stays open, as a tailing session does
Errors as Heroku sends them, {"id", "message"}: 401 unauthorized, 404 not_found, 422 invalid_params, and
429 rate_limit with Retry-After (a test asks for them with throttle()).

What a release phase prints, whether a dyno comes up, and what a one-off dyno prints and exits with are
the test's choice, per image digest (behave()): the fake runs no containers. A release is `pending` for
the first read after it is made, then its outcome; a new dyno is `starting` for the first read, then up or
crashed; a one-off dyno has run to its end when its log session is opened.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

import httpx

from devstack import free_port

API_ACCEPT = "application/vnd.heroku+json; version=3"
DOCKER_RELEASES = "application/vnd.heroku+json; version=3.docker-releases"
NOW = "2026-12-01T00:00:00Z"
TAIL_HELD = 120.0  # a tailing stream outlasts any client read timeout a test uses


@dataclass
class Behaviour:
    release_output: list[str] = field(default_factory=lambda: ["running release phase", "release phase done"])
    release_succeeds: bool = True
    dyno_state: str = "up"  # or crashed
    dyno_log: list[str] = field(default_factory=list)
    one_off_output: list[str] | None = None  # None: one line naming the command
    one_off_status: int = 0


@dataclass
class FakeApp:
    name: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    config_vars: dict[str, str] = field(default_factory=dict)
    formation: dict[str, str] = field(default_factory=dict)  # process type -> docker image id (digest)
    quantities: dict[str, int] = field(default_factory=dict)  # process type -> dynos it runs
    one_offs: list[dict[str, Any]] = field(default_factory=list)  # one-off dynos that have not ended
    dyno_requests: list[dict[str, Any]] = field(default_factory=list)  # the bodies of POST /dynos, as sent
    one_off_ids: list[str] = field(default_factory=list)  # every one-off dyno made, in order
    stopped: list[str] = field(default_factory=list)  # the dyno ids or names a stop action named
    releases: list[dict[str, Any]] = field(default_factory=list)
    dynos: list[dict[str, Any]] = field(default_factory=list)
    reads: dict[str, int] = field(default_factory=dict)  # how often each release / dyno was read


class FakeHeroku:
    def __init__(self, token: str, registry_host: str, registry_auth: tuple[str, str]) -> None:
        self.token = token
        self.registry_host = registry_host
        self.registry_auth = registry_auth
        self.port = free_port()
        self.apps: dict[str, FakeApp] = {}
        self.behaviours: dict[str, Behaviour] = {}
        self.requests: list[tuple[str, str]] = []
        self._throttled, self._throttled_path = 0, ""
        self._lock = threading.Lock()
        self._logs: dict[str, tuple[list[str], bool]] = {}  # log session -> (its lines, whether it tails)
        self.stopping = threading.Event()  # ends the tailing sessions still open

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def create_app(self, name: str) -> FakeApp:
        self.apps[name] = FakeApp(name)
        return self.apps[name]

    def behave(self, digest: str, **values: Any) -> None:
        self.behaviours[digest] = Behaviour(**values)

    def throttle(self, count: int, path_end: str = "") -> None:
        """Answer the next `count` requests (to a path ending so, when given) with 429 and Retry-After: 0."""
        self._throttled, self._throttled_path = count, path_end

    def start(self) -> FakeHeroku:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    # The API, one method per route: (status, body, headers).

    def handle(self, method: str, path: str, headers: Any, body: Any) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.requests.append((method, path))
            if self._throttled and path.endswith(self._throttled_path):
                self._throttled -= 1
                return 429, _error("rate_limit", "Your account reached the API rate limit\nPlease wait a few "
                                   "minutes before making new requests"), {"Retry-After": "0"}
            if path.startswith("/streams/") or path.startswith("/log-sessions/"):
                return self._text(path)
            if not headers.get("Accept", "").startswith(API_ACCEPT):
                return 400, _error("bad_request", "Please specify a version along with Heroku's API MIME type. "
                                   f"For example, `Accept: {API_ACCEPT}`."), {}
            if headers.get("Authorization") != f"Bearer {self.token}":
                return 401, _error("unauthorized", "Invalid credentials provided."), {}
            parts = path.strip("/").split("/")
            if parts[0] != "apps" or len(parts) < 2 or parts[1] not in self.apps:
                return 404, _error("not_found", "Couldn't find that app."), {}
            return self._route(method, self.apps[parts[1]], parts[2:], headers, body)

    def _route(self, method: str, app: FakeApp, rest: list[str], headers: Any,
               body: Any) -> tuple[int, Any, dict[str, str]]:
        key = (method, rest[0] if rest else "")
        if key == ("GET", ""):
            return 200, {"id": app.id, "name": app.name}, {}
        if key == ("GET", "config-vars"):
            return 200, dict(app.config_vars), {}
        if key == ("PATCH", "config-vars"):
            return self._set_config(app, body)
        if key == ("GET", "formation"):
            return 200, self._formation(app), {}
        if key == ("PATCH", "formation"):
            return self._update_formation(app, headers, body)
        if key == ("GET", "releases"):
            return (200, self._release(app, rest[1]), {}) if len(rest) > 1 else self._releases(app, headers)
        if key == ("GET", "dynos") and len(rest) > 1:
            dyno = next((d for d in app.dynos + app.one_offs if rest[1] in (d["id"], d["name"])), None)
            return (200, _public(dyno), {}) if dyno else (404, _error("not_found", "Couldn't find that process."), {})
        if key == ("GET", "dynos"):
            return 200, [self._read_dyno(app, dyno) for dyno in app.dynos] + [_public(d) for d in app.one_offs], {}
        if key == ("POST", "dynos") and len(rest) == 4 and rest[2:] == ["actions", "stop"]:
            app.stopped.append(rest[1])
            app.one_offs = [d for d in app.one_offs if rest[1] not in (d["id"], d["name"])]
            return 202, {}, {}
        if key == ("POST", "dynos"):
            return self._one_off(app, body)
        if key == ("POST", "log-sessions"):
            return self._log_session(app, body)
        return 404, _error("not_found", "Not found."), {}

    def _set_config(self, app: FakeApp, body: Any) -> tuple[int, Any, dict[str, str]]:
        for name, value in (body or {}).items():
            if value is None:
                app.config_vars.pop(name, None)
            else:
                app.config_vars[name] = str(value)
        release = self._new_release(app, f"Set {', '.join(sorted(body or {}))} config vars", None)
        self._finish(app, release, succeeded=True)
        return 200, dict(app.config_vars), {}

    def _formation(self, app: FakeApp) -> list[dict[str, Any]]:
        return [{"id": f"{app.name}-{kind}", "type": kind, "quantity": app.quantities.get(kind, 0),
                 "size": "standard-1X",
                 "command": None, "docker_image": {"id": image}, "app": {"id": app.id, "name": app.name},
                 "created_at": NOW, "updated_at": NOW} for kind, image in app.formation.items() if kind != "release"]

    def _update_formation(self, app: FakeApp, headers: Any, body: Any) -> tuple[int, Any, dict[str, str]]:
        updates = (body or {}).get("updates") or []
        if any("docker_image" in u for u in updates) and headers.get("Accept") != DOCKER_RELEASES:
            return 422, _error("invalid_params", "docker_image can only be set with the "
                               "version=3.docker-releases API variant"), {}
        for update in updates:
            if "docker_image" not in update and update.get("type") not in app.formation:
                return 404, _error("not_found", f"Couldn't find that formation ({update.get('type')})."), {}
            if "docker_image" in update and not self._registry_has(app.name, update.get("type", ""),
                                                                   update["docker_image"]):
                return 422, _error("invalid_params", f"Couldn't find image {update.get('docker_image')} for "
                                   f"process type {update.get('type')} in the app's registry"), {}
        for update in updates:
            kind = update["type"]
            default = 1 if kind == "web" else 0
            app.quantities[kind] = int(update.get("quantity", app.quantities.get(kind, default)))
        if not any("docker_image" in u for u in updates):  # scaling only: no release
            app.dynos = [d for d in app.dynos if app.quantities.get(d["type"], 0) > 0]
            return 200, self._formation(app), {}
        images = {u["type"]: u["docker_image"] for u in updates if "docker_image" in u}
        release_image = images.get("release")
        release = self._new_release(app, "Deployed " + ", ".join(sorted(k for k in images if k != "release")),
                                    release_image)
        release["_images"] = images
        if release_image is None:
            self._finish(app, release, succeeded=True)
        return 200, self._formation(app) + [
            {"type": kind, "docker_image": {"id": image}, "quantity": 1} for kind, image in images.items()
            if kind not in app.formation], {}

    def _registry_has(self, app: str, kind: str, digest: str) -> bool:
        accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
        response = httpx.head(f"http://{self.registry_host}/v2/{app}/{kind}/manifests/{digest}",
                              auth=self.registry_auth, headers={"Accept": accept})
        return response.status_code == 200

    def _new_release(self, app: FakeApp, description: str, release_image: str | None) -> dict[str, Any]:
        release_id = str(uuid.uuid4())
        release = {
            "id": release_id, "version": len(app.releases) + 1, "status": "pending", "current": False,
            "description": description, "created_at": NOW, "updated_at": NOW,
            "app": {"id": app.id, "name": app.name}, "user": {"email": "deployer@example.com"},
            "output_stream_url": f"{self.url}/streams/{release_id}" if release_image else None,
            "_release_image": release_image,
        }
        app.releases.append(release)
        return release

    def _finish(self, app: FakeApp, release: dict[str, Any], *, succeeded: bool) -> None:
        release["status"] = "succeeded" if succeeded else "failed"
        if not succeeded:
            return
        for other in app.releases:
            other["current"] = False
        release["current"] = True
        app.formation.update(release.get("_images") or {})
        app.dynos = [self._new_dyno(app, kind, image, release) for kind, image in app.formation.items()
                     if kind != "release" and app.quantities.get(kind, 0) > 0]

    def _new_dyno(self, app: FakeApp, kind: str, image: str, release: dict[str, Any]) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "name": f"{kind}.1", "type": kind, "state": "starting",
                "command": None, "size": "standard-1X", "release": {"id": release["id"],
                                                                    "version": release["version"]},
                "app": {"id": app.id, "name": app.name}, "created_at": NOW, "updated_at": NOW,
                "attach_url": None, "_image": image}

    def _release(self, app: FakeApp, ref: str) -> dict[str, Any] | None:
        for release in app.releases:
            if ref in (release["id"], str(release["version"])):
                if release["status"] == "pending":
                    app.reads[release["id"]] = app.reads.get(release["id"], 0) + 1
                    if app.reads[release["id"]] > 1:
                        behaviour = self.behaviours.get(release["_release_image"], Behaviour())
                        self._finish(app, release, succeeded=behaviour.release_succeeds)
                return _public(release)
        return None

    def _releases(self, app: FakeApp, headers: Any) -> tuple[int, Any, dict[str, str]]:
        wanted = headers.get("Range", "")
        ordered = list(reversed(app.releases)) if "order=desc" in wanted else list(app.releases)
        limit = int(wanted.split("max=")[1].split(";")[0]) if "max=" in wanted else 200
        return (206 if len(ordered) > limit else 200), [_public(r) for r in ordered[:limit]], {}

    def _read_dyno(self, app: FakeApp, dyno: dict[str, Any]) -> dict[str, Any]:
        reads = app.reads.get(dyno["id"], 0) + 1
        app.reads[dyno["id"]] = reads
        if reads > 1 and dyno["state"] == "starting":
            dyno["state"] = self.behaviours.get(dyno["_image"], Behaviour()).dyno_state
        return _public(dyno)

    def _one_off(self, app: FakeApp, body: Any) -> tuple[int, Any, dict[str, str]]:
        body = body or {}
        app.dyno_requests.append(body)
        kind = body.get("type") or "web"
        if not isinstance(body.get("command"), str) or not body["command"]:
            return 422, _error("invalid_params", "Command can't be blank."), {}
        if kind not in app.formation:
            return 422, _error("invalid_params", f"No such process type {kind} defined in Procfile."), {}
        if body.get("size") not in (None, *SIZES):
            return 422, _error("invalid_params", f"There is no dyno size named {body['size']}."), {}
        current = next((r for r in reversed(app.releases) if r["current"]), None)
        number = 1000 + len(app.dyno_requests)
        dyno = {"id": str(uuid.uuid4()), "name": f"run.{number}", "type": "run", "state": "starting",
                "command": body["command"], "size": body.get("size") or "standard-1X", "attach_url": None,
                "release": {"id": current["id"], "version": current["version"]} if current else None,
                "app": {"id": app.id, "name": app.name}, "created_at": NOW, "updated_at": NOW,
                "_image": app.formation[kind]}
        app.one_offs.append(dyno)
        app.one_off_ids.append(dyno["id"])
        return 201, _public(dyno), {}

    def _one_off_log(self, app: FakeApp, dyno: dict[str, Any]) -> list[str]:
        """What logplex has for a one-off dyno that ran to its end; the dyno is then gone."""
        behaviour = self.behaviours.get(dyno["_image"], Behaviour())
        output = behaviour.one_off_output if behaviour.one_off_output is not None else [f"ran {dyno['command']}"]
        name, stamp = dyno["name"], "2026-12-01T00:00:00.000000+00:00"
        app.one_offs = [d for d in app.one_offs if d is not dyno]
        return ([f"{stamp} heroku[{name}]: Starting process with command `{dyno['command']}`",
                 f"{stamp} heroku[{name}]: State changed from starting to up"]
                + [f"{stamp} app[{name}]: {line}" for line in output]
                + [f"{stamp} heroku[{name}]: Process exited with status {behaviour.one_off_status}",
                   f"{stamp} heroku[{name}]: State changed from up to complete"])

    def _log_session(self, app: FakeApp, body: Any) -> tuple[int, Any, dict[str, str]]:
        name = (body or {}).get("dyno")
        dyno = next((d for d in app.dynos if d["name"] == name), None)
        one_off = next((d for d in app.one_offs if d["name"] == name), None)
        session = str(uuid.uuid4())
        if one_off is not None:
            lines = self._one_off_log(app, one_off)
        else:
            lines = self.behaviours.get(dyno["_image"], Behaviour()).dyno_log if dyno else []
        self._logs[session] = (lines[-int((body or {}).get("lines", 100)):], bool((body or {}).get("tail")))
        return 201, {"id": session, "logplex_url": f"{self.url}/log-sessions/{session}", "created_at": NOW,
                     "updated_at": NOW}, {}

    def _text(self, path: str) -> tuple[int, Any, dict[str, str]]:
        kind, _, ident = path.strip("/").partition("/")
        if kind == "log-sessions":
            lines, tail = self._logs.get(ident, ([], False))
            text = "".join(f"{line}\n" for line in lines)
            return (200, Tailing(text), {}) if tail else (200, text, {})
        for app in self.apps.values():
            for release in app.releases:
                if release["id"] == ident and release["_release_image"]:
                    lines = self.behaviours.get(release["_release_image"], Behaviour()).release_output
                    return 200, "".join(f"{line}\n" for line in lines), {}
        return 404, "", {}


SIZES = ("eco", "basic", "standard-1X", "standard-2X", "performance-m", "performance-l")


@dataclass(frozen=True)
class Tailing:
    """A tailing log session: its lines, then the stream stays open until the client hangs up (or the fake
    stops), as logplex's does."""

    text: str


def _public(record: dict[str, Any] | None) -> dict[str, Any] | None:
    return {k: v for k, v in record.items() if not k.startswith("_")} if record else None


def _error(ident: str, message: str) -> dict[str, str]:
    return {"id": ident, "message": message}


def _handler(fake: FakeHeroku) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, payload, headers = fake.handle(self.command, urlparse(self.path).path, self.headers, body)
            if isinstance(payload, Tailing):
                self._tail(payload)
                return
            if payload is None and status == 200:
                status, payload = 404, _error("not_found", "Couldn't find that release.")
            text = payload if isinstance(payload, str) else json.dumps(payload)
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("RateLimit-Remaining", "4500")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _tail(self, payload: Tailing) -> None:
            # HTTP/1.0 without Content-Length: the body is whatever comes until the connection closes.
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(payload.text.encode())
            self.wfile.flush()
            fake.stopping.wait(TAIL_HELD)

        do_GET = do_PATCH = do_POST = do_DELETE = _serve  # noqa: N815 - the http.server API

    return Handler
