"""A small Distribution (OCI registry) API v2 client: enough to find an image's digest by tag and to
confirm a digest exists. Anonymous, basic, and bearer-token auth (the token flow Docker Hub, GHCR and
most hosted registries use)."""

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
    ) -> None:
        self.repository = repository
        self.timeout = timeout
        self._say = say
        self.name = RepositoryName.parse(repository)
        scheme = "http" if insecure else "https"
        self.base = f"{scheme}://{self.name.host}/v2/{self.name.path}"
        user = os.environ.get(username_env, "") if username_env else ""
        password = os.environ.get(password_env, "") if password_env else ""
        self._basic = (user, password) if user else None
        self._client = httpx.Client(timeout=timeout, verify=_tls_context())
        self._token: str | None = None

    def close(self) -> None:
        self._client.close()

    def digest_for_tag(self, tag: str) -> str | None:
        """The digest the tag points to now, or None when the registry has no such tag."""
        return self._head_manifest(tag)

    def has_digest(self, digest: str) -> bool:
        return self._head_manifest(digest) is not None

    def _head_manifest(self, reference: str) -> str | None:
        response = self._request("HEAD", f"{self.base}/manifests/{reference}", reference)
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
            body = self._request("GET", f"{self.base}/manifests/{reference}", reference)
            import hashlib

            digest = "sha256:" + hashlib.sha256(body.content).hexdigest()
        return digest

    def _request(self, method: str, url: str, reference: str) -> httpx.Response:
        headers = {"Accept": MANIFEST_TYPES}
        what = f"the manifest of {self.repository}:{reference}"
        try:
            with self._announce_when_slow(what):
                response = self._send(method, url, headers)
                if response.status_code == 401:
                    self._authenticate(response)
                    response = self._send(method, url, headers)
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

    def _send(self, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
        if self._token:
            headers = {**headers, "Authorization": f"Bearer {self._token}"}
            return self._client.request(method, url, headers=headers)
        return self._client.request(method, url, headers=headers, auth=self._basic)

    def _authenticate(self, challenge: httpx.Response) -> None:
        header = challenge.headers.get("WWW-Authenticate", "")
        scheme, _, params = header.partition(" ")
        if scheme.lower() != "bearer":
            return  # basic auth was already sent when configured
        fields = dict(_parse_challenge(params))
        query = {"service": fields.get("service", ""), "scope": f"repository:{self.name.path}:pull"}
        response = self._client.get(fields["realm"], params=query, auth=self._basic)
        if response.status_code == 200:
            body = response.json()
            self._token = body.get("token") or body.get("access_token")


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
