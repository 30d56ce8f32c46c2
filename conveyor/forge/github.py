"""GitHub's REST API behind the forge interface (forge/base.py), over httpx (imported on first use).

Authentication is a token (a PAT, or CI's GITHUB_TOKEN) or a GitHub App installation: a JWT signed RS256
with the app's private key (cryptography) is traded at POST /app/installations/{id}/access_tokens for an
installation token, which is renewed REFRESH_MARGIN before its `expires_at`.

Rate limits are honoured as GitHub documents them: a 403/429 with `retry-after` waits that long; with
`x-ratelimit-remaining: 0` waits until `x-ratelimit-reset`; a secondary limit without either backs off
exponentially from a minute; a response that spends the last request makes the next call wait for the reset.
Every wait is said (`say`) and bounded by `max_wait` per call: past it the call fails with ForgeUnavailable
and its `retry_after`. Lists follow the `Link: rel="next"` header, only to the same API host.

httpx's exceptions and GitHub's error answers become the Forge* errors of conveyor/errors.py here, once,
as one line naming the call and GitHub's reason; no token or key is ever in a message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conveyor.errors import ForgeError, ForgeRefused, ForgeUnavailable, PullRequestExists
from conveyor.forge.base import WORST_FIRST, Check, CheckState, CIState, Commit, Deployment, PullRequest

API_VERSION = "2022-11-28"
TIMEOUT_SECONDS = 10.0
MAX_WAIT_SECONDS = 120.0  # rate-limit waits within one call; past it the call fails and says when to retry
SECONDARY_BACKOFF_SECONDS = 60.0  # GitHub: "wait for at least one minute", then exponentially longer
SERVER_ERROR_RETRIES = (0.5, 1.5)  # a 502/503/504 is retried after these delays
REFRESH_MARGIN_SECONDS = 300.0  # renew an installation token this long before it expires
JWT_LIFETIME_SECONDS = 540  # GitHub accepts at most 10 minutes; iat is set 60 s back for clock drift
MAX_PAGES = 100
PER_PAGE = 100
NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="next"')
SUCCESSFUL_CONCLUSIONS = {"success", "neutral", "skipped"}
STATUS_STATES: dict[str, CheckState] = {"success": "success", "pending": "pending", "failure": "failure",
                                        "error": "failure"}

Say = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------- auth


@dataclass
class TokenAuth:
    token: str

    def header(self, github: GitHub) -> str:
        return f"Bearer {self.token}"

    def renew(self) -> bool:
        return False  # a fixed token cannot be renewed: a 401 stands


class AppAuth:
    """A GitHub App installation's token, fetched with the app's JWT and renewed before it expires."""

    def __init__(self, app_id: int, installation_id: int, private_key_pem: str, key_env: str) -> None:
        self.app_id = app_id
        self.installation_id = installation_id
        self._pem = private_key_pem
        self._key_env = key_env
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def header(self, github: GitHub) -> str:
        with self._lock:
            if self._token is None or github.clock() >= self._expires_at - REFRESH_MARGIN_SECONDS:
                self._token, self._expires_at = self._fetch(github)
            return f"Bearer {self._token}"

    def renew(self) -> bool:
        """Drop the token (GitHub refused it before its time): the next header fetches another."""
        with self._lock:
            self._token = None
        return True

    def jwt(self, now: float) -> str:
        return app_jwt(self.app_id, self._pem, now, self._key_env)

    def _fetch(self, github: GitHub) -> tuple[str, float]:
        path = f"/app/installations/{self.installation_id}/access_tokens"
        answer = github.call("POST", path, expect=(201,), authorization=f"Bearer {self.jwt(github.clock())}")
        data = answer.json()
        try:
            expires = datetime.fromisoformat(str(data["expires_at"]).replace("Z", "+00:00")).timestamp()
            return str(data["token"]), expires
        except (KeyError, TypeError, ValueError):
            raise ForgeError(f"GitHub POST {path}: the answer has no token and expires_at") from None


def _b64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def app_jwt(app_id: int, private_key_pem: str, now: float, key_env: str = "the private key env var") -> str:
    """The JWT that authenticates as the GitHub App itself (RS256, issued by the app id)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    try:
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ForgeRefused(f"{key_env} does not hold a PEM private key (the GitHub App's .pem file)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ForgeRefused(f"{key_env} holds a key that is not RSA (GitHub Apps sign with RS256)")
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"iat": int(now) - 60, "exp": int(now) + JWT_LIFETIME_SECONDS, "iss": str(app_id)}
    body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = header + b"." + body
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return (signing_input + b"." + _b64url(signature)).decode()


# ---------------------------------------------------------------------------------------------- the client


class GitHub:
    """One repository's REST API. Thread-safe enough for one process: httpx's client is, and the App
    token is renewed under a lock."""

    def __init__(self, repo: str, auth: TokenAuth | AppAuth, *, api_url: str = "https://api.github.com",
                 say: Say = _quiet, max_wait: float = MAX_WAIT_SECONDS,
                 secondary_backoff: float = SECONDARY_BACKOFF_SECONDS,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.repo = repo
        self.name = f"github:{repo}"
        self.api_url = api_url.rstrip("/")
        self.auth = auth
        self.say = say
        self.max_wait = max_wait
        self.secondary_backoff = secondary_backoff
        self.clock = clock
        self.sleep = sleep
        self._spent_until = 0.0  # the reset time after a response said no request is left
        self._http: Any = None

    # --- the forge interface

    def ci_state(self, sha: str) -> CIState:
        statuses = self._pages(f"{self._repo_path}/commits/{sha}/status", "statuses")
        runs = self._pages(f"{self._repo_path}/commits/{sha}/check-runs", "check_runs", {"filter": "latest"})
        return CIState(sha, merge_checks([*map(_status_check, statuses), *map(_run_check, _latest_runs(runs))]))

    def create_deployment(self, *, sha: str, environment: str, payload: Mapping[str, Any], production: bool,
                          description: str = "") -> Deployment:
        body = {"ref": sha, "environment": environment, "payload": dict(payload), "required_contexts": [],
                "auto_merge": False, "production_environment": production, "transient_environment": False,
                "description": description[:140]}
        return _deployment(self.call("POST", f"{self._repo_path}/deployments", json_body=body, expect=(201,)).json())

    def find_deployment(self, *, sha: str, environment: str, payload_match: Mapping[str, Any]) -> Deployment | None:
        found = self._pages(f"{self._repo_path}/deployments", None, {"sha": sha, "environment": environment})
        for data in found:
            payload = data.get("payload") or {}
            if isinstance(payload, dict) and all(payload.get(k) == v for k, v in payload_match.items()):
                return _deployment(data)
        return None

    def set_deployment_status(self, deployment_id: int, state: str, *, environment_url: str | None = None,
                              log_url: str | None = None, description: str = "") -> None:
        body: dict[str, Any] = {"state": state, "description": description[:140], "auto_inactive": True}
        if environment_url:
            body["environment_url"] = environment_url
        if log_url:
            body["log_url"] = log_url
        self.call("POST", f"{self._repo_path}/deployments/{deployment_id}/statuses", json_body=body, expect=(201,))

    def commit(self, sha: str) -> Commit:
        data = self.call("GET", f"{self._repo_path}/commits/{sha}").json()
        author = data.get("commit", {}).get("author") or {}
        return Commit(sha=data["sha"], message=data.get("commit", {}).get("message", ""),
                      author_name=author.get("name", ""), author_email=author.get("email", ""),
                      author_login=(data.get("author") or {}).get("login"),
                      parents=tuple(p["sha"] for p in data.get("parents", [])), url=data.get("html_url", ""))

    def find_pull(self, *, head: str, base: str, state: str = "open") -> PullRequest | None:
        owner = self.repo.split("/")[0]
        params = {"state": state, "head": f"{owner}:{head}", "base": base, "sort": "created", "direction": "desc"}
        for data in self._pages(f"{self._repo_path}/pulls", None, params):
            return _pull(data)
        return None

    def get_pull(self, number: int) -> PullRequest:
        return _pull(self.call("GET", f"{self._repo_path}/pulls/{number}").json())

    def open_pull(self, *, head: str, base: str, title: str, body: str) -> PullRequest:
        request = {"head": head, "base": base, "title": title, "body": body}
        try:
            return _pull(self.call("POST", f"{self._repo_path}/pulls", json_body=request, expect=(201,)).json())
        except ForgeRefused as exc:
            if exc.status == 422 and "already exists" in exc.message:
                raise PullRequestExists(exc.message, 422) from None
            raise

    def update_pull(self, number: int, *, title: str | None = None, body: str | None = None) -> PullRequest:
        change = {key: value for key, value in (("title", title), ("body", body)) if value is not None}
        return _pull(self.call("PATCH", f"{self._repo_path}/pulls/{number}", json_body=change).json())

    def merge_pull(self, number: int, *, sha: str | None = None, method: str = "merge",
                   title: str | None = None) -> str:
        request: dict[str, Any] = {"merge_method": method}
        if sha:
            request["sha"] = sha
        if title:
            request["commit_title"] = title
        return str(self.call("PUT", f"{self._repo_path}/pulls/{number}/merge", json_body=request).json()["sha"])

    def comment(self, number: int, body: str) -> int:
        answer = self.call("POST", f"{self._repo_path}/issues/{number}/comments", json_body={"body": body},
                           expect=(201,))
        return int(answer.json()["id"])

    def assign(self, number: int, logins: Sequence[str]) -> None:
        self.call("POST", f"{self._repo_path}/issues/{number}/assignees", json_body={"assignees": list(logins)},
                  expect=(201,))

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    # --- requests

    @property
    def _repo_path(self) -> str:
        return f"/repos/{self.repo}"

    def call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
             json_body: Any = None, expect: tuple[int, ...] = (200,), authorization: str | None = None) -> Any:
        """One request (a path under the API, or a next-page URL on it), rate limits waited out; the httpx
        response when its status is expected, else the Forge* error for it."""
        what = f"GitHub {method} {self._shown(path)}"
        waited, attempt, renewed = 0.0, 0, False
        while True:
            waited += self._wait_for_reset(what, waited)
            response = self._send(method, path, params, json_body, authorization, what)
            self._note_spent(response)
            if response.status_code == 401 and authorization is None and not renewed and self.auth.renew():
                renewed = True  # an installation token revoked before its time: fetch another, once
                continue
            delay, why = self._retry_delay(response, attempt)
            if delay is None:
                break
            if waited + delay > self.max_wait:
                raise ForgeUnavailable(f"{what}: {why}; waiting {delay:.0f}s more is past the {self.max_wait:.0f}s "
                                       "conveyor waits in one call", response.status_code, retry_after=delay)
            self.say(f"{what}: {why}; waiting {delay:.1f}s, then retrying (attempt {attempt + 2})")
            self.sleep(delay)
            waited, attempt = waited + delay, attempt + 1
        if response.status_code in expect:
            return response
        raise _error(what, response)

    def _send(self, method: str, path: str, params: Mapping[str, Any] | None, json_body: Any,
              authorization: str | None, what: str) -> Any:
        import httpx

        headers = {"Authorization": authorization or self.auth.header(self)}
        try:
            return self._client().request(method, self._url(path), params=params, json=json_body, headers=headers)
        except httpx.TimeoutException:
            raise ForgeUnavailable(f"{what}: no answer within {TIMEOUT_SECONDS:g}s") from None
        except httpx.HTTPError as exc:
            raise ForgeUnavailable(f"{what}: {self.api_url} unreachable ({type(exc).__name__})") from None

    def _client(self) -> Any:
        if self._http is None:
            import httpx

            from conveyor import __version__

            self._http = httpx.Client(
                timeout=TIMEOUT_SECONDS, verify=self.api_url.startswith("https:"),
                headers={"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION,
                         "User-Agent": f"conveyor/{__version__}"})
        return self._http

    def _url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.api_url + path

    def _shown(self, path: str) -> str:
        url = self._url(path)
        return url[len(self.api_url):].split("?")[0] if url.startswith(self.api_url) else url.split("?")[0]

    def _note_spent(self, response: Any) -> None:
        if response.headers.get("x-ratelimit-remaining") == "0" and response.status_code < 400:
            self._spent_until = _float(response.headers.get("x-ratelimit-reset")) or 0.0

    def _wait_for_reset(self, what: str, waited: float) -> float:
        """The previous answer spent the last request of the hour: wait for the reset before this one."""
        delay = self._spent_until - self.clock()
        if delay <= 0:
            return 0.0
        if waited + delay > self.max_wait:
            raise ForgeUnavailable(f"{what}: GitHub's rate limit is spent until its reset in {delay:.0f}s",
                                   retry_after=delay)
        self.say(f"{what}: GitHub's rate limit is spent; waiting {delay:.1f}s for its reset")
        self.sleep(delay)
        self._spent_until = 0.0
        return delay

    def _retry_delay(self, response: Any, attempt: int) -> tuple[float | None, str]:
        status, headers = response.status_code, response.headers
        if status in (502, 503, 504) and attempt < len(SERVER_ERROR_RETRIES):
            return SERVER_ERROR_RETRIES[attempt], f"GitHub answered {status}"
        if status not in (403, 429):
            return None, ""
        retry_after = _float(headers.get("retry-after"))
        if retry_after is not None:
            return max(retry_after, 0.0), f"rate limited ({status}, retry-after {headers['retry-after']})"
        if headers.get("x-ratelimit-remaining") == "0":
            reset = _float(headers.get("x-ratelimit-reset")) or self.clock()
            return max(reset - self.clock(), 0.0) + 1.0, f"rate limit spent ({status}, until x-ratelimit-reset)"
        if "secondary rate limit" in _message(response).lower() or status == 429:
            return self.secondary_backoff * 2 ** attempt, f"secondary rate limit ({status})"
        return None, ""

    def _pages(self, path: str, key: str | None, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """Every item of a list, page by page (`key` names the list inside an object answer)."""
        url: str | None = path
        query: dict[str, Any] | None = {"per_page": PER_PAGE, **(params or {})}
        for _ in range(MAX_PAGES):
            assert url is not None
            response = self.call("GET", url, params=query)
            data = response.json()
            yield from (data.get(key) or []) if key else data
            url, query = self._next_page(response.headers.get("link")), None
            if url is None:
                return
        raise ForgeError(f"GitHub GET {self._shown(path)}: more than {MAX_PAGES} pages")

    def _next_page(self, link: str | None) -> str | None:
        found = NEXT_LINK.search(link or "")
        if found is None:
            return None
        url = found.group(1)
        if not url.startswith(self.api_url + "/"):
            raise ForgeError(f"GitHub's next page is on another host ({url.split('?')[0]}); not followed")
        return url


# ---------------------------------------------------------------------------------------------- answers


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _message(response: Any) -> str:
    """GitHub's reason: `message`, and the first of `errors` (where a 422 says what was wrong)."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:200].strip()
    if not isinstance(data, dict):
        return ""
    message = str(data.get("message") or "")
    errors = data.get("errors") or []
    details = [e.get("message") or e.get("code") for e in errors if isinstance(e, dict)]
    details = [str(d) for d in details if d]
    return f"{message}: {details[0]}" if details else message


def _error(what: str, response: Any) -> ForgeError:
    status = response.status_code
    message = f"{what}: {status} {_message(response)}".strip()
    if status == 401:
        return ForgeRefused(f"{message} (the token or the App's credentials are not accepted)", status)
    if status in (403, 404, 405, 409, 410, 422):
        return ForgeRefused(message, status)
    return ForgeUnavailable(message, status)


def _status_check(data: Mapping[str, Any]) -> Check:
    return Check(str(data["context"]), STATUS_STATES.get(str(data.get("state")), "pending"),
                 data.get("target_url") or None, "status", str(data.get("description") or data.get("state") or ""))


def _latest_runs(runs: Iterator[Any]) -> list[Mapping[str, Any]]:
    """The newest run of each name (a re-run adds a run; the newest has the highest id)."""
    newest: dict[str, Mapping[str, Any]] = {}
    for run in runs:
        seen = newest.get(run["name"])
        if seen is None or int(run["id"]) > int(seen["id"]):
            newest[run["name"]] = run
    return list(newest.values())


def _run_check(data: Mapping[str, Any]) -> Check:
    conclusion = data.get("conclusion")
    if data.get("status") != "completed" or conclusion is None:
        state: CheckState = "pending"
        detail = str(data.get("status") or "queued")
    else:
        state = "success" if conclusion in SUCCESSFUL_CONCLUSIONS else "failure"
        detail = str(conclusion)
    return Check(str(data["name"]), state, data.get("html_url") or data.get("details_url") or None, "check_run",
                 detail)


def merge_checks(checks: Sequence[Check]) -> tuple[Check, ...]:
    """One Check per name: a status and a check run of one name read as the worse of the two."""
    merged: dict[str, Check] = {}
    for check in checks:
        seen = merged.get(check.name)
        if seen is None:
            merged[check.name] = check
            continue
        worse, other = (check, seen) if WORST_FIRST.index(check.state) < WORST_FIRST.index(seen.state) \
            else (seen, check)
        source = "+".join(sorted({*seen.source.split("+"), *check.source.split("+")}, reverse=True))
        merged[check.name] = Check(worse.name, worse.state, worse.url or other.url, source, worse.detail)
    return tuple(sorted(merged.values(), key=lambda c: c.name))


def _deployment(data: Mapping[str, Any]) -> Deployment:
    payload = data.get("payload")
    return Deployment(int(data["id"]), str(data.get("environment", "")), str(data.get("sha", "")),
                      payload if isinstance(payload, dict) else {}, str(data.get("url", "")))


def _pull(data: Mapping[str, Any]) -> PullRequest:
    created = data.get("created_at")
    return PullRequest(
        number=int(data["number"]), state=str(data["state"]), merged=bool(data.get("merged") or data.get("merged_at")),
        head=str(data["head"]["ref"]), base=str(data["base"]["ref"]), head_sha=str(data["head"]["sha"]),
        title=str(data.get("title") or ""), body=str(data.get("body") or ""), url=str(data.get("html_url") or ""),
        merge_commit_sha=data.get("merge_commit_sha"),
        created_at=datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None,
        assignees=tuple(a["login"] for a in data.get("assignees") or []),
    )


# ---------------------------------------------------------------------------------------------- the factory

_clients: dict[str, GitHub] = {}  # one per repository and credentials a process: App tokens and connections kept
_clients_lock = threading.Lock()


def credentials_key(*parts: object) -> str:
    """A key for the client cache that holds no credential itself."""
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()


def cached_client(key: str, make: Callable[[], GitHub]) -> GitHub:
    with _clients_lock:
        if key not in _clients:
            _clients[key] = make()
        return _clients[key]
