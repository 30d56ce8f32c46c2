"""The few Platform API calls the heroku target makes, with Heroku's errors mapped once, here:
401 → the token is wrong (bad input), 404 → no such app, 422 → Heroku refused the request (its message),
429 → wait what Retry-After says and try again."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from conveyor.errors import BadInput, InfrastructureMissing, OperationFailed

ACCEPT = "application/vnd.heroku+json; version=3"
DOCKER_RELEASES = ACCEPT + ".docker-releases"  # the variant that takes docker_image in formation updates
RATE_LIMIT_TRIES = 5
LONGEST_WAIT = 60.0


class HerokuAPI:
    def __init__(self, base: str, token: str, token_env: str, say: Callable[[str], None]) -> None:
        self.base = base.rstrip("/")
        self._token_env = token_env
        self.say = say  # where a rate-limit wait is announced
        self._client = httpx.Client(timeout=30.0, headers={"Authorization": f"Bearer {token}"})
        # Output streams and log sessions are URLs of other hosts that carry their own access in the URL:
        # they are read without the API token.
        self._streams = httpx.Client(timeout=30.0)

    def close(self) -> None:
        self._client.close()
        self._streams.close()

    def get(self, path: str, *, headers: dict[str, str] | None = None) -> Any:
        return self.call("GET", path, headers=headers)

    def call(self, method: str, path: str, *, body: Any = None, headers: dict[str, str] | None = None,
             docker: bool = False) -> Any:
        headers = {"Accept": DOCKER_RELEASES if docker else ACCEPT, **(headers or {})}
        for _ in range(RATE_LIMIT_TRIES):
            response = self._send(method, path, body, headers)
            if response.status_code != 429:
                return _answer(response, method, path, self._token_env)
            wait = min(float(response.headers.get("Retry-After") or 1), LONGEST_WAIT)
            self.say(f"Heroku rate-limited {method} {path}; retrying after {wait:g}s (Retry-After)")
            time.sleep(wait)
        raise OperationFailed(f"Heroku kept rate-limiting {method} {path} ({RATE_LIMIT_TRIES} tries)")

    def lines(self, url: str) -> list[str]:
        """A text stream Heroku serves (release phase output, a log session), read to its end."""
        lines: list[str] = []
        self.follow(url, lambda line: bool(lines.append(line)))
        return lines

    def follow(self, url: str, stop: Callable[[str], bool], *, read_timeout: float = 30.0) -> bool:
        """Hand each line of a text stream to `stop` as it arrives, until `stop` says so (True; the stream
        is then closed: a tailing log session never ends by itself) or the stream ends (False)."""
        timeout = httpx.Timeout(30.0, read=read_timeout)
        try:
            with self._streams.stream("GET", url, headers={"Accept": "text/plain"}, timeout=timeout) as response:
                if response.status_code >= 400:
                    return False
                return any(stop(line) for line in response.iter_lines())
        except httpx.TransportError as exc:
            raise InfrastructureMissing(f"Heroku's stream {_without_query(url)} broke off: {exc}") from None

    def _send(self, method: str, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
        try:
            return self._client.request(method, self.base + path, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise InfrastructureMissing(f"the Heroku API at {self.base} is unreachable: {exc}") from None


def _answer(response: httpx.Response, method: str, path: str, token_env: str) -> Any:
    if response.status_code < 400:
        return response.json() if response.content else None
    try:
        message = str(response.json().get("message", "")).replace("\n", " ")
    except ValueError:
        message = response.text[:200]
    if response.status_code == 401:
        raise BadInput(f"Heroku rejected the API token in ${token_env} ({message})")
    if response.status_code == 404:
        raise BadInput(f"Heroku: {message} ({method} {path})")
    raise OperationFailed(f"Heroku refused {method} {path} (HTTP {response.status_code}): {message}")


def _without_query(url: str) -> str:
    """A stream URL as it may be shown: a log session's query string is its access token."""
    return url.split("?", 1)[0]
