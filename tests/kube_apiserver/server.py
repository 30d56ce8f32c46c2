"""The HTTPS front of the test API server: TLS, authentication, routing, bodies, watch and log streaming.

`http.server` speaking HTTP/1.1 with keep-alive (the client's urllib3 pool reuses connections) and
chunked transfer for watches and followed logs, exactly as the real server streams them. HTTPS only, as
every real cluster: each connection's TLS handshake runs in its own handler thread (a client that stalls
mid-handshake holds up nobody else), and a plain-HTTP request gets the 400 the real server sends.
Users are authenticated by bearer token or by a client certificate signed by the cluster's CA, whose
CN names the user.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from . import openapi, resources, tables
from .pki import Pki
from .resources import BY_PATH, Resource
from .selectors import field_matcher, label_matcher
from .status import (
    ApiError,
    bad_request,
    method_not_allowed,
    no_route,
    unauthorized,
    unsupported_media,
)
from .store import Store, now_ts

APPLY = "application/apply-patch+yaml"
MERGE_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")


@dataclass
class RequestRecord:
    """One request as the server saw it, for tests that assert how a client talked to the API."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    user_agent: str
    status: int = 0
    user: str = ""  # who the request was authenticated as
    accept: str = ""


PLAIN_HTTP_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)


class _TlsServer(ThreadingHTTPServer):
    """Accepts plain TCP and does the TLS handshake in the connection's own thread."""

    daemon_threads = True
    tls: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(_Handler.timeout)
            if request.recv(1, socket.MSG_PEEK) in (b"G", b"P", b"D", b"H", b"O"):  # an HTTP verb, not TLS
                request.sendall(PLAIN_HTTP_ANSWER)
                return
            conn = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        except OSError:
            return
        try:
            conn.do_handshake()
        except (ssl.SSLError, OSError):  # a refused handshake (wrong CA, expired certificate) ends here
            _close_after_alert(conn)
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()


def _close_after_alert(conn: ssl.SSLSocket) -> None:
    """Close a connection whose handshake we refused so that the client reads our alert (`certificate
    expired`): with TLS 1.3 its request is already on the way, and closing with unread data would send a
    reset that can overtake the alert."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(2)
        while conn.recv(4096):
            pass
    except OSError:
        pass
    finally:
        conn.close()


def _server_tls(pki: Pki, expired: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pair = pki.expired_server if expired else pki.server
    context.load_cert_chain(pair.cert_file, pair.key_file)
    # Client certificates are optional (token users send none) but verified against the CA when sent.
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cafile=pki.ca.cert_file)
    return context


class ApiServer:
    def __init__(
        self,
        store: Store,
        tokens: dict[str, str],
        pki: Pki,
        host: str = "127.0.0.1",
        port: int = 0,
        expired_certificate: bool = False,
    ) -> None:
        """tokens: bearer token -> user name."""
        self.store = store
        self.tokens = tokens
        self.requests: list[RequestRecord] = []
        self._requests_lock = threading.Lock()
        self.httpd = _TlsServer((host, port), _Handler)
        self.httpd.tls = _server_tls(pki, expired_certificate)
        self.httpd.daemon_threads = True
        self.httpd.api = self  # type: ignore[attr-defined]
        # A short poll interval so shutdown() returns quickly (the default 0.5 s would add up per test).
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="kube-apiserver",
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"https://{host}:{port}"

    def start(self) -> ApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.store.close()  # ends open watches and log follows
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def record(self, rec: RequestRecord) -> None:
        with self._requests_lock:
            self.requests.append(rec)


def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() in ("true", "1")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-apiserver-test/1.30"
    timeout = 120  # idle keep-alive connections are closed after this

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: tests read `requests` instead

    @property
    def api(self) -> ApiServer:
        return self.server.api  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    # --- plumbing ------------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        self._warnings: list[str] = []
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        rec = RequestRecord(
            method,
            split.path,
            query,
            content_type,
            self.headers.get("User-Agent") or "",
            accept=self.headers.get("Accept") or "",
        )
        self.api.record(rec)
        try:
            if split.path in ("/healthz", "/readyz", "/livez"):
                return self._send_text(200, "ok")
            rec.user = self._authenticate()
            self._route(method, split.path, query, raw, content_type, rec)
        except ApiError as err:
            rec.status = err.code
            self._send_json(err.code, err.status())
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):  # the client went away
            self.close_connection = True
        except Exception as exc:  # a bug in the test server: say so loudly, like a 500 from the real one
            rec.status = 500
            detail = "".join(traceback.format_exception(exc))
            self._send_json(500, ApiError(500, "InternalError", f"test apiserver bug: {detail}").status())

    def _authenticate(self) -> str:
        """The user a bearer token names, else the CN of a verified client certificate; else 401."""
        header = self.headers.get("Authorization") or ""
        if header:
            user = self.api.tokens.get(header.removeprefix("Bearer ")) if header.startswith("Bearer ") else None
            if user is None:  # a wrong token is refused even when a certificate was sent, as upstream
                raise unauthorized()
            return user
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        for rdn in (peer or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        raise unauthorized()

    def _send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", str(time.monotonic_ns()))
        for warning in self._warnings:
            quoted = warning.replace("\\", "\\\\").replace('"', '\\"')
            self.send_header("Warning", f'299 - "{quoted}"')
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_chunks(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # --- routing -----------------------------------------------------------------------------------------

    def _route(
        self, method: str, path: str, query: dict[str, str], raw: bytes, ctype: str, rec: RequestRecord
    ) -> None:
        parts = [p for p in path.split("/") if p]
        discovery = self._discovery(parts) if parts[:2] != ["openapi", "v3"] else self._openapi(parts[2:])
        if discovery is not None:
            if method != "GET":
                raise method_not_allowed(method)
            rec.status = 200
            return self._send_json(200, discovery)
        if len(parts) < 3 or parts[0] not in ("api", "apis"):
            raise no_route()
        group, version, rest = (
            ("", parts[1], parts[2:]) if parts[0] == "api" else (parts[1], parts[2], parts[3:])
        )
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            candidate = BY_PATH.get((group, version, rest[2]))
            if candidate is not None and candidate.namespaced:
                namespace, rest = rest[1], rest[2:]
        res = BY_PATH.get((group, version, rest[0]))
        if res is None or len(rest) > 3 or (res.namespaced and namespace is None and len(rest) > 1):
            raise no_route()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if sub and sub not in res.subresources:
            raise no_route()
        ns = namespace or ""
        handler = {
            "GET": self._get,
            "POST": self._post,
            "PUT": self._put,
            "PATCH": self._patch,
            "DELETE": self._delete,
        }[method]
        handler(res, ns if res.namespaced else "", namespace, name, sub, query, raw, ctype, rec)

    @staticmethod
    def _openapi(parts: list[str]) -> dict[str, Any]:
        if not parts:
            return openapi.discovery_document()
        return openapi.document_for_path(parts) or _raise(no_route())

    def _discovery(self, parts: list[str]) -> dict[str, Any] | None:
        if parts == ["version"]:
            return resources.SERVER_VERSION
        if parts == ["api"]:
            host, port = self.server.server_address[:2]
            return resources.api_versions(f"{host}:{port}")
        if parts == ["apis"]:
            return resources.api_group_list()
        if len(parts) == 2 and parts[0] == "api":
            return resources.resource_list("", parts[1]) or _raise(no_route())
        if len(parts) == 2 and parts[0] == "apis":
            return resources.api_group(parts[1]) or _raise(no_route())
        if len(parts) == 3 and parts[0] == "apis":
            return resources.resource_list(parts[1], parts[2]) or _raise(no_route())
        return None

    def _validate_fields(
        self, res: Resource, body: Any, query: dict[str, str], apply: bool, where: str = ""
    ) -> None:
        """fieldValidation: Strict refuses fields the schema lacks, Warn (the default) names them in
        Warning headers, Ignore drops the check. Messages as upstream's for apply and for JSON bodies."""
        directive = query.get("fieldValidation") or "Warn"
        if directive not in ("Ignore", "Warn", "Strict"):
            raise bad_request(f'fieldValidation: Unsupported value: "{directive}": supported values: '
                              '"Ignore", "Strict", "Warn"')
        if directive == "Ignore" or not isinstance(body, dict):
            return
        unknown = openapi.unknown_fields(res, body)
        if not unknown:
            return
        if directive == "Warn":
            self._warnings.extend(f'unknown field "{path}"' for path in unknown)
            return
        if apply:
            raise bad_request(
                f"failed to create typed patch object ({where}; {res.api_version}, Kind={res.kind}): "
                + "; ".join(f".{path}: field not declared in schema" for path in unknown)
            )
        fields = ", ".join(f'unknown field "{path}"' for path in unknown)
        raise bad_request(
            f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: '
            f"strict decoding error: {fields}"
        )

    # --- verbs ------------------------------------------------------------------------------------------

    def _get(
        self,
        res: Resource,
        ns: str,
        namespace: str | None,
        name: str | None,
        sub: str,
        query: dict[str, str],
        raw: bytes,
        ctype: str,
        rec: RequestRecord,
    ) -> None:
        store = self.api.store
        if name is None:
            labels = label_matcher(query.get("labelSelector"))
            fields = field_matcher(res, query.get("fieldSelector"))
            if _flag(query, "watch"):
                rec.status = 200
                return self._watch(res, namespace, query, labels, fields)
            limit = int(query["limit"]) if query.get("limit") else None
            items, rv, token, remaining = store.list_page(
                res, namespace, labels, fields, limit, query.get("continue")
            )
            meta: dict[str, Any] = {"resourceVersion": str(rv)}
            if token:
                meta["continue"] = token
                meta["remainingItemCount"] = remaining
            for item in items:  # items of a typed list carry no kind/apiVersion on the real server
                item.pop("kind", None)
                item.pop("apiVersion", None)
            rec.status = 200
            if tables.wants_table(self.headers.get("Accept") or ""):
                table = tables.table(res, items, str(rv), query.get("includeObject", "Metadata"))
                table["metadata"].update({k: v for k, v in meta.items() if k != "resourceVersion"})
                return self._send_json(200, table)
            return self._send_json(
                200,
                {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta, "items": items},
            )
        if sub == "log":
            return self._logs(ns, name, query, rec)
        obj = store.require(res, ns, name)
        rec.status = 200
        if not sub and tables.wants_table(self.headers.get("Accept") or ""):
            rv = obj["metadata"].get("resourceVersion", "")
            return self._send_json(200, tables.table(res, [obj], rv, query.get("includeObject", "Metadata")))
        self._send_json(200, {"kind": res.kind, "apiVersion": res.api_version, **obj})

    def _post(
        self,
        res: Resource,
        ns: str,
        namespace: str | None,
        name: str | None,
        sub: str,
        query: dict[str, str],
        raw: bytes,
        ctype: str,
        rec: RequestRecord,
    ) -> None:
        if name is not None:
            raise method_not_allowed("POST")
        body = _decode(raw, ctype)
        self._validate_fields(res, body, query, apply=False)
        obj = self.api.store.create(res, ns, body, _manager(query, self.headers), _dry_run(query))
        rec.status = 201
        self._send_json(201, obj)

    def _put(
        self,
        res: Resource,
        ns: str,
        namespace: str | None,
        name: str | None,
        sub: str,
        query: dict[str, str],
        raw: bytes,
        ctype: str,
        rec: RequestRecord,
    ) -> None:
        if name is None or sub == "log":
            raise method_not_allowed("PUT")
        body = _decode(raw, ctype)
        self._validate_fields(res, body, query, apply=False)
        obj = self.api.store.replace(res, ns, name, body, _manager(query, self.headers), sub, _dry_run(query))
        rec.status = 200
        self._send_json(200, obj)

    def _patch(
        self,
        res: Resource,
        ns: str,
        namespace: str | None,
        name: str | None,
        sub: str,
        query: dict[str, str],
        raw: bytes,
        ctype: str,
        rec: RequestRecord,
    ) -> None:
        if name is None or sub == "log":
            raise method_not_allowed("PATCH")
        store = self.api.store
        if ctype == APPLY:
            manager = query.get("fieldManager")
            if not manager:
                raise ApiError(
                    422,
                    "Invalid",
                    'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required '
                    "value: is required for apply patch",
                    {
                        "group": "meta.k8s.io",
                        "kind": "PatchOptions",
                        "causes": [
                            {
                                "reason": "FieldValueRequired",
                                "message": "Required value: is required for apply patch",
                                "field": "fieldManager",
                            }
                        ],
                    },
                )
            body = _decode(raw, ctype)
            self._validate_fields(res, body, query, apply=True, where=f"{ns}/{name}" if ns else name)
            existed = store.get(res, ns, name) is not None
            obj = store.apply(res, ns, name, body, manager, _flag(query, "force"), sub, _dry_run(query))
            code = 200 if existed else 201
        elif ctype in MERGE_TYPES:
            body = _decode(raw, ctype)
            self._validate_fields(res, body, query, apply=False)
            obj = store.merge_patch(res, ns, name, body, _manager(query, self.headers), sub, _dry_run(query))
            code = 200
        else:
            raise unsupported_media(ctype)
        rec.status = code
        self._send_json(code, obj)

    def _delete(
        self,
        res: Resource,
        ns: str,
        namespace: str | None,
        name: str | None,
        sub: str,
        query: dict[str, str],
        raw: bytes,
        ctype: str,
        rec: RequestRecord,
    ) -> None:
        store = self.api.store
        options = _decode(raw, "application/json") if raw.strip() else {}
        propagation = query.get("propagationPolicy") or options.get("propagationPolicy") or "Background"
        dry_run = _dry_run(query) or "All" in (options.get("dryRun") or [])
        if name is None:  # deletecollection
            labels = label_matcher(query.get("labelSelector"))
            fields = field_matcher(res, query.get("fieldSelector"))
            items, _ = store.list(res, namespace, labels, fields)
            gone = [
                store.delete(
                    res, i["metadata"].get("namespace", ""), i["metadata"]["name"], propagation, dry_run
                )
                for i in items
            ]
            rec.status = 200
            return self._send_json(
                200,
                {
                    "kind": f"{res.kind}List",
                    "apiVersion": res.api_version,
                    "metadata": {"resourceVersion": str(store.current_rv())},
                    "items": gone,
                },
            )
        if sub:
            raise method_not_allowed("DELETE")
        gone = store.delete(res, ns, name, propagation, dry_run)
        rec.status = 200
        if res.kind == "Pod":  # graceful deletion answers with the object, others with a Status
            return self._send_json(200, {"kind": res.kind, "apiVersion": res.api_version, **gone})
        details: dict[str, Any] = {"name": name}
        if res.group:
            details["group"] = res.group
        details.update({"kind": res.plural, "uid": gone["metadata"]["uid"]})
        self._send_json(
            200,
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details},
        )

    # --- streams -------------------------------------------------------------------------------------------

    def _watch(
        self, res: Resource, namespace: str | None, query: dict[str, str], labels: Any, fields: Any
    ) -> None:
        timeout = float(query.get("timeoutSeconds") or 1800)
        send_initial = _check_watch_list(query)
        events = self.api.store.watch(
            res,
            namespace,
            query.get("resourceVersion"),
            labels,
            fields,
            timeout,
            send_initial_events=send_initial,
            bookmarks=_flag(query, "allowWatchBookmarks"),
        )
        self._start_chunks("application/json")
        try:
            for event in events:
                self._chunk(json.dumps(event).encode() + b"\n")
            self._end_chunks()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):  # the client went away
            self.close_connection = True

    def _logs(self, ns: str, name: str, query: dict[str, str], rec: RequestRecord) -> None:
        store = self.api.store
        pods = resources.BY_KIND["Pod"]
        pod = store.require(pods, ns, name)
        spec = pod.get("spec") or {}
        containers = [c["name"] for c in spec.get("containers") or []]
        init = [c["name"] for c in spec.get("initContainers") or []]
        container = query.get("container")
        if not container:
            if len(containers) != 1:
                raise bad_request(
                    f"a container name must be specified for pod {name}, choose one of: "
                    f"[{' '.join(containers)}]"
                    + (f" or one of the init containers: [{' '.join(init)}]" if init else "")
                )
            container = containers[0]
        if container not in containers + init:
            raise bad_request(f"container {container} is not valid for pod {name}")
        lines = store.read_log(ns, name, container)
        state = _container_state(pod, container)
        if not lines and "waiting" in state:
            reason = state["waiting"].get("reason", "ContainerCreating")
            raise bad_request(f'container "{container}" in pod "{name}" is waiting to start: {reason}')
        if "tailLines" in query:
            tail = int(query["tailLines"])
            lines = lines[-tail:] if tail > 0 else []
        stamps = _flag(query, "timestamps")
        render = (lambda s, line: f"{s} {line}\n") if stamps else (lambda s, line: f"{line}\n")
        rec.status = 200
        if not _flag(query, "follow"):
            return self._send_text(200, "".join(render(s, line) for s, line in lines))
        # follow: stream what is there, then new lines until the container stops running
        self._start_chunks("text/plain")
        sent = len(store.read_log(ns, name, container))
        try:
            for s, line in lines:
                self._chunk(render(s, line).encode())
            while not store.closed:
                with store.cond:
                    all_lines = store.read_log(ns, name, container)
                    if len(all_lines) == sent:
                        current = store.get(pods, ns, name)
                        if current is None or "running" not in _container_state(current, container):
                            break
                        store.cond.wait(timeout=0.5)
                        continue
                for s, line in all_lines[sent:]:
                    self._chunk(render(s, line).encode())
                sent = len(all_lines)
            self._end_chunks()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):  # the client went away
            self.close_connection = True


def _check_watch_list(query: dict[str, str]) -> bool:
    """Whether a watch asks for its initial events (watch-list), refusing the combinations upstream's
    ListOptions validation refuses."""
    send_initial = _flag(query, "sendInitialEvents")
    match = query.get("resourceVersionMatch", "")
    problem = ""
    if send_initial and match != "NotOlderThan":
        problem = "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to "
        problem += "NotOlderThan"
    elif send_initial and not _flag(query, "allowWatchBookmarks"):
        problem = "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true"
    elif match and "sendInitialEvents" not in query:
        problem = "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless "
        problem += "sendInitialEvents is provided"
    if problem:
        raise ApiError(
            422,
            "Invalid",
            f'ListOptions.meta.k8s.io "" is invalid: {problem}',
            {"group": "meta.k8s.io", "kind": "ListOptions"},
        )
    return send_initial


def _raise(err: ApiError) -> Any:
    raise err


def _container_state(pod: dict[str, Any], container: str) -> dict[str, Any]:
    status = pod.get("status") or {}
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        if cs.get("name") == container:
            return cs.get("state") or {}
    return {"waiting": {"reason": "ContainerCreating"}}


def _decode(raw: bytes, ctype: str) -> Any:
    try:
        if ctype == APPLY or ctype.endswith("yaml"):
            return yaml.safe_load(raw.decode() or "{}")
        return json.loads(raw.decode() or "{}")
    except (ValueError, yaml.YAMLError) as exc:
        raise bad_request(f"error decoding request body: {exc}") from exc


def _dry_run(query: dict[str, str]) -> bool:
    value = query.get("dryRun")
    if value is None:
        return False
    if value != "All":
        raise ApiError(400, "BadRequest", f'dryRun: Unsupported value: "{value}": supported values: "All"')
    return True


def _manager(query: dict[str, str], headers: Any) -> str:
    """Update operations without a fieldManager are attributed to the client's user agent, as upstream."""
    return query.get("fieldManager") or (headers.get("User-Agent") or "unknown").split("/")[0]


__all__ = ["ApiServer", "RequestRecord", "now_ts"]
