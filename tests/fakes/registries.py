"""Real registries with credentials for the copy tests: Debian's docker-registry behind htpasswd (basic
auth) or behind a bearer-token server. The token server is ours (Distribution ships none): it checks
the basic credentials and signs a JWT with a throwaway RSA key through the openssl CLI, the key's
self-signed certificate being the registry's `rootcertbundle`."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from devstack import free_port, wait_for_port

SERVICE = "conveyor-test-registry"
ISSUER = "conveyor-test-token-server"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """GET /token?service=…&scope=… with basic auth → {"token": JWT}, granting the scopes asked for."""

    root: Path
    users: dict[str, str]
    port: int = field(default_factory=free_port)
    issued: list[list[str]] = field(default_factory=list)  # the scopes of each token, for tests to read

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def certificate(self) -> Path:
        return self.root / "token.crt"

    def start(self) -> TokenServer:
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=conveyor-test-token", "-keyout", str(self.root / "token.key"), "-out",
                        str(self.certificate)], check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.certificate), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self._x5c = base64.b64encode(der).decode()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def token(self, scopes: list[str]) -> str:
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self._x5c]}
        now = int(time.time())
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        claims = {"iss": ISSUER, "sub": "tester", "aud": SERVICE, "exp": now + 600, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.root / "token.key")],
                                   input=signing_input.encode(), check=True, capture_output=True).stdout
        return f"{signing_input}.{_b64(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if not self._authorised():
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                scopes = parse_qs(urlparse(self.path).query).get("scope", [])
                server.issued.append(scopes)
                body = json.dumps({"token": server.token(scopes)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self) -> bool:
                value = self.headers.get("Authorization", "")
                if not value.startswith("Basic "):
                    return False
                user, _, password = base64.b64decode(value[6:]).decode().partition(":")
                return server.users.get(user) == password

        return Handler


@dataclass
class AuthRegistry:
    """docker-registry with htpasswd (auth="basic") or token (auth="token", with a TokenServer) auth."""

    root: Path
    auth: str  # basic | token
    users: dict[str, str]
    port: int = field(default_factory=free_port)
    tokens: TokenServer | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def blob_file(self, digest: str) -> Path:
        hex_part = digest.split(":")[1]
        return self.data / "docker/registry/v2/blobs/sha256" / hex_part[:2] / hex_part / "data"

    def start(self) -> AuthRegistry:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "registry.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.data}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n" + self._auth_section()
        )
        log = open(self.root / "registry.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log,
                                        start_new_session=True)
        wait_for_port(self.port)
        return self

    def _auth_section(self) -> str:
        if self.auth == "basic":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt  # Python 3.11's; its bcrypt ($2b$) is what htpasswd files hold

                lines = [f"{user}:{crypt.crypt(pw, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}"
                         for user, pw in self.users.items()]
            (self.root / "htpasswd").write_text("\n".join(lines) + "\n")
            return f"auth:\n  htpasswd:\n    realm: conveyor-test\n    path: {self.root / 'htpasswd'}\n"
        self.tokens = TokenServer(self.root / "tokens", self.users).start()
        return (f"auth:\n  token:\n    realm: {self.tokens.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
                f"    rootcertbundle: {self.tokens.certificate}\n")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        if self.tokens:
            self.tokens.stop()


def push_test_image(host: str, repo: str, layers: list[bytes], *, auth: tuple[str, str] | None = None,
                    token: str | None = None, tag: str = "latest") -> tuple[str, list[str]]:
    """Push an OCI image (a config and the given layer blobs) with plain httpx, apart from conveyor's own
    registry code. Returns the manifest digest and the blob digests (config first)."""
    import hashlib

    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = f"http://{host}/v2/{repo}"
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                         "nonce": uuid.uuid4().hex}).encode()
    with httpx.Client(auth=auth, headers=headers, timeout=30) as client:
        descriptors = [push_test_blob(client, base, blob) for blob in [config, *layers]]
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **descriptors[0]},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **d} for d in descriptors[1:]],
        }).encode()
        response = client.put(f"{base}/manifests/{tag}", content=manifest,
                              headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        response.raise_for_status()
    return "sha256:" + hashlib.sha256(manifest).hexdigest(), [d["digest"] for d in descriptors]


def push_test_blob(client: object, base: str, blob: bytes) -> dict[str, object]:
    import hashlib

    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    started = client.post(f"{base}/blobs/uploads/")  # type: ignore[attr-defined]
    started.raise_for_status()
    location = started.headers["Location"]
    location = location if location.startswith("http") else base.split("/v2/")[0] + location
    done = client.put(location + ("&" if "?" in location else "?") + f"digest={digest}",  # type: ignore[attr-defined]
                      content=blob, headers={"Content-Type": "application/octet-stream"})
    done.raise_for_status()
    return {"digest": digest, "size": len(blob)}


def push_test_index(host: str, repo: str, children: list[str]) -> str:
    """Push an OCI index naming the given image manifests (already in `repo`); returns its digest."""
    import hashlib

    import httpx

    entries = []
    for child, arch in zip(children, ("amd64", "arm64", "riscv64"), strict=False):
        body = httpx.get(f"http://{host}/v2/{repo}/manifests/{child}",
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).content
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": child,
                        "size": len(body), "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}).encode()
    response = httpx.put(f"http://{host}/v2/{repo}/manifests/multi", content=index,
                         headers={"Content-Type": "application/vnd.oci.image.index.v1+json"})
    response.raise_for_status()
    return "sha256:" + hashlib.sha256(index).hexdigest()
