"""What every announcement adapter shares: one HTTP call with a short timeout, and two errors.

`Unavailable` means try again later (down, slow, rate limited: `retry_after` says when, if the destination
said); `Refused` means retrying cannot help until someone acts (a revoked token, a webhook gone). httpx's own
exceptions are mapped here, once, and nowhere else. httpx is imported on first use, never on `--help`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conveyor.errors import OperationFailed

TIMEOUT_SECONDS = 3.0  # one attempt on a deploy's path: a slow destination waits for the next run, not the deploy


class Unavailable(OperationFailed):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Refused(OperationFailed):
    """The destination refused for a reason a retry cannot fix."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        try:
            return json.loads(self.body)
        except ValueError:
            return None


_clients: dict[bool, Any] = {}  # one httpx.Client per process for https, one for plain http


def _client(url: str) -> Any:
    """Shared clients keep connections alive between calls, and load the CA certificates (a few hundred ms
    on a busy machine) once a process, only for https: a plain-http URL has nothing to verify."""
    import httpx

    tls = url.lower().startswith("https:")
    if tls not in _clients:
        _clients[tls] = httpx.Client(verify=tls)
    return _clients[tls]


def post(url: str, *, what: str, body: bytes, headers: dict[str, str], timeout: float = TIMEOUT_SECONDS) -> Answer:
    """POST once. Connection failures and timeouts are Unavailable; `what` names the destination in errors
    (never the URL, which may hold a secret: an incoming webhook's URL is one)."""
    import httpx

    try:
        response = _client(url).post(url, content=body, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        raise Unavailable(f"{what} did not answer within {timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise Unavailable(f"{what} unreachable: {type(exc).__name__}") from None
    return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)


def retry_after(answer: Answer) -> float | None:
    """Seconds from a Retry-After header (the delay form; an HTTP date is rare for APIs and read as absent)."""
    value = answer.headers.get("retry-after", "").strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def summary(announcement: dict[str, Any]) -> tuple[str, list[str]]:
    """A plain-text title and detail lines for a deploy marker (Grafana annotations, Datadog events): what
    changed where, who did it, why it failed, and the links (release page, compare, trace)."""
    release, block = announcement.get("release"), announcement.get("block")
    event = announcement["event"].replace("_", " ")
    if release:
        title = (f"{announcement['app']} {announcement['env']}#{release['number']} {release['kind']} {event}: "
                 f"{release['sha'][:12]}")
        reason = f": {release['reason']}" if release["reason"] else ""
        lines = [f"by {release['actor']} ({release['origin']}){reason}"]
        if release.get("error"):
            lines.append(f"why: {release['error']}")
        lines += [f"{name}: {url}" for name, url in (release.get("links") or {}).items() if url]
        if release.get("trace_id"):
            lines.append(f"trace id: {release['trace_id']}")
        return title, lines
    if block:
        where = announcement["env"] or ("every app" if block["scope"] == "org" else "the app")
        return f"{announcement['app']} {where} {event}", [f"by {block['actor']}: {block['reason']}"]
    return f"conveyor test message for {announcement['app']}", [f"from {announcement['actor']}"]


def answer_error(answer: Answer, what: str) -> None:
    """Raise for a non-2xx answer: 401/403/404 stop the destination (a token or URL to fix), others retry."""
    if 200 <= answer.status < 300:
        return
    if answer.status in (401, 403, 404):
        raise Refused(f"{what} answered HTTP {answer.status}: check its token and URL")
    if answer.status == 429:
        raise Unavailable(f"{what} rate limited (429)", retry_after=retry_after(answer))
    raise Unavailable(f"{what} answered HTTP {answer.status}")
