"""A small Distribution (OCI registry) API v2 client: find an image's digest by tag, confirm a digest
exists, and the manifest and blob calls registry.copy moves images with. Anonymous, basic, and
bearer-token auth (the token flow Docker Hub, GHCR, Heroku and most hosted registries use)."""

from __future__ import annotations

import functools
import os
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from conveyor.errors import BadInput, InfrastructureMissing

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
PATIENCE = 1.5  # seconds of silence from the registry before conveyor says what it is waiting for


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verification, made once per process: loading the CA bundle costs 60-100 ms, and the
    server makes a Registry for every operation it performs (it was most of a queued build's start-up)."""
    return httpx.create_ssl_context()


@dataclass(frozen=True)
class RepositoryName:
    host: str
    path: str

    @classmethod
    def parse(cls, repository: str) -> RepositoryName:
        first, _, rest = repository.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            return cls(first, rest)
        return cls("registry-1.docker.io", repository if rest else f"library/{repository}")


class Registry:
    def __init__(
        self, repository: str, *, insecure: bool = False, username_env: str | None = None,
        password_env: str | None = None, timeout: float = 10.0, say: Callable[[str], None] | None = None,
        username: str | None = None,
    ) -> None:
        self.repository = repository
        self.timeout = timeout
        self._say = say
        self.name = RepositoryName.parse(repository)
        scheme = "http" if insecure else "https"
        self.base = f"{scheme}://{self.name.host}/v2/{self.name.path}"
        # A fixed user name (Heroku's registry takes any, e.g. "_", with the API token as password) or one
        # read from an env var.
        user = username or (os.environ.get(username_env, "") if username_env else "")
        password = os.environ.get(password_env, "") if password_env else ""
        self._basic = (user, password) if user else None
        self._client = httpx.Client(timeout=timeout, verify=_tls_context())
        self._token: str | None = None
        # What a bearer token is asked for: pull here, plus push and other repositories' pull (for a
        # cross-repository mount) when registry.copy writes.
        self._scopes = [f"repository:{self.name.path}:pull"]

    @property
    def host(self) -> str:
        return self.name.host

    def allow(self, scope: str) -> None:
        """Ask for `scope` too in the next token (e.g. repository:team/app:pull,push)."""
        if scope not in self._scopes:
            self._scopes.append(scope)
            self._token = None

    def url(self, path: str) -> str:
        """The absolute URL of `path` under this repository (`manifests/…`, `blobs/…`)."""
        return f"{self.base}/{path}"

    def call(self, method: str, url: str, what: str, *, headers: dict[str, str] | None = None,
             content: bytes | None = None) -> httpx.Response:
        """One authenticated request; a 401 gets a token (or proves the credentials wrong) and is retried."""
        return self._request(method, url, what, headers=headers, content=content)

    @contextmanager
    def stream(self, url: str, what: str, headers: dict[str, str] | None = None) -> Iterator[httpx.Response]:
        """A GET whose body is read as it arrives (a layer is never held in memory)."""
        self.call("HEAD", url, what, headers=headers)  # authenticates first: a streamed 401 cannot be replayed
        try:
            with self._client.stream("GET", url, headers=self._auth_headers(headers or {}),
                                     auth=None if self._token else self._basic) as response:
                yield response
        except httpx.TransportError as exc:
            raise InfrastructureMissing(f"registry {self.name.host} broke off {what}: {_transport_reason(exc)}") \
                from None

    def send_streamed(self, method: str, url: str, what: str, headers: dict[str, str],
                      content: Iterator[bytes]) -> httpx.Response:
        """A request whose body is produced as it is sent; the caller has authenticated already."""
        try:
            return self._client.request(method, url, headers=self._auth_headers(headers), content=content,
                                        auth=None if self._token else self._basic)
        except httpx.TransportError as exc:
            raise InfrastructureMissing(f"registry {self.name.host} broke off {what}: {_transport_reason(exc)}") \
                from None

    def close(self) -> None:
        self._client.close()

    def digest_for_tag(self, tag: str) -> str | None:
        """The digest the tag points to now, or None when the registry has no such tag."""
        return self._head_manifest(tag)

    def has_digest(self, digest: str) -> bool:
        return self._head_manifest(digest) is not None

    def _head_manifest(self, reference: str) -> str | None:
        response = self._manifest_request("HEAD", f"{self.base}/manifests/{reference}", reference)
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise InfrastructureMissing(
                f"registry {self.name.host} refused the manifest lookup for {self.repository}:{reference} "
                f"(HTTP {response.status_code})"
            )
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            # Some registries omit the header on HEAD; the body's digest is then computed by GET.
            body = self._manifest_request("GET", f"{self.base}/manifests/{reference}", reference)
            import hashlib

            digest = "sha256:" + hashlib.sha256(body.content).hexdigest()
        return digest

    def _manifest_request(self, method: str, url: str, reference: str) -> httpx.Response:
        return self._request(method, url, f"the manifest of {self.repository}:{reference}",
                             headers={"Accept": MANIFEST_TYPES})

    def _request(self, method: str, url: str, what: str, *, headers: dict[str, str] | None = None,
                 content: bytes | None = None) -> httpx.Response:
        headers = headers or {}
        try:
            with self._announce_when_slow(what):
                response = self._send(method, url, headers, content)
                if response.status_code == 401:
                    self._authenticate(response)
                    response = self._send(method, url, headers, content)
        except httpx.TimeoutException:
            raise InfrastructureMissing(
                f"registry {self.name.host} did not answer within {self.timeout:g}s (asked for {what})"
            ) from None
        except httpx.TransportError as exc:
            raise InfrastructureMissing(
                f"registry {self.name.host} is unreachable: {_transport_reason(exc)}"
            ) from None
        if response.status_code == 401:
            raise BadInput(f"registry {self.name.host} rejected the credentials for {self.repository}")
        return response

    @contextmanager
    def _announce_when_slow(self, what: str) -> Iterator[None]:
        """A silent registry must not make a silent conveyor: after PATIENCE seconds, say what it waits for."""
        if self._say is None:
            yield
            return
        notice = f"waiting for registry {self.name.host} to answer (asked for {what}; gives up after " \
                 f"{self.timeout:g}s)"
        timer = threading.Timer(PATIENCE, self._say, [notice])
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _send(self, method: str, url: str, headers: dict[str, str], content: bytes | None) -> httpx.Response:
        return self._client.request(method, url, headers=self._auth_headers(headers), content=content,
                                    auth=None if self._token else self._basic)

    def _auth_headers(self, headers: dict[str, str]) -> dict[str, str]:
        return {**headers, "Authorization": f"Bearer {self._token}"} if self._token else headers

    def _authenticate(self, challenge: httpx.Response) -> None:
        header = challenge.headers.get("WWW-Authenticate", "")
        scheme, _, params = header.partition(" ")
        if scheme.lower() != "bearer":
            return  # basic auth was already sent when configured
        fields = dict(_parse_challenge(params))
        query = [("service", fields.get("service", "")), *(("scope", scope) for scope in self._scopes)]
        try:
            response = self._client.get(fields["realm"], params=query, auth=self._basic)
        except httpx.TransportError as exc:
            raise InfrastructureMissing(f"the token server of registry {self.name.host} ({fields['realm']}) is "
                                        f"unreachable: {_transport_reason(exc)}") from None
        if response.status_code == 200:
            body = response.json()
            self._token = body.get("token") or body.get("access_token")


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One per process: loading the CA bundle costs ~50 ms, more than a whole copy of a present image."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def _parse_challenge(params: str) -> list[tuple[str, str]]:
    pairs = []
    for part in params.split(","):
        key, _, value = part.strip().partition("=")
        if key:
            pairs.append((key, value.strip('"')))
    return pairs


def _transport_reason(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text or isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({text})"
    return text
