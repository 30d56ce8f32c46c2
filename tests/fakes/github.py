"""An in-repo server speaking the parts of GitHub's REST API conveyor uses, over real HTTP on a free port
(GitHub cannot be reached from here). Bodies are shaped as GitHub sends them; tests/test_forge.py validates
them against githubkit's published models (githubkit-schemas), so the fake cannot drift from the real shapes.

Served (under /repos/{owner}/{name} unless said):
  GET    /commits/{sha}/status            combined status (latest per context), paginated `statuses`
  GET    /commits/{sha}/check-runs        {total_count, check_runs}, paginated with Link rel="next"
  GET    /commits/{sha}                   a commit (from `git_dir` when given, else add_commit())
  GET    /deployments?sha=&environment=   POST /deployments → 201
  GET    /deployments/{id}/statuses       POST → 201
  GET    /pulls?state=&head=OWNER:BR&base=   POST /pulls → 201, or 422 "A pull request already exists for …"
  GET    /pulls/{n}   PATCH /pulls/{n}   PUT /pulls/{n}/merge (a real merge in `git_dir` when given)
  POST   /issues/{n}/comments (GET too)   POST /issues/{n}/assignees → 201
  POST   /app/installations/{id}/access_tokens   the Bearer JWT verified with the App's public key (RS256)
Errors as GitHub sends them: {"message", "documentation_url"} (422 adds "errors"): 401 Bad credentials,
404 Not Found, 405/409 on merge.

The test controls it: set_status(), add_check_run() / update_check_run(), add_commit(), merge() and
close_pull() (as a person on GitHub would), rate_limit(n, how) — `retry-after`, `reset`
(x-ratelimit-remaining: 0 with x-ratelimit-reset) or `secondary` (403 without either) — down()/up() for an
outage, spend(seconds) (an answer that spends the last request), drop_answer() (the request takes effect,
the answer never comes), page_size for pagination, and
wait_for(predicate) to hold a test until a request has arrived.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

DOCS = "https://docs.github.com/rest"
ORIGIN = "https://github.com"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    authorization: str
    body: Any


@dataclass
class FakeApp:
    """A GitHub App installed on the repo's owner: installation tokens for a JWT its key signed."""

    id: int
    installation_id: int
    public_key_pem: bytes
    token_ttl: float = 3600.0
    issued: list[str] = field(default_factory=list)
    expiry: dict[str, float] = field(default_factory=dict)  # token → when it stops being accepted
    jwts: list[dict[str, Any]] = field(default_factory=list)  # the verified claims of each token request


class GitHubError(Exception):
    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors, self.headers = status, message, errors, headers or {}


class FakeGitHub:
    def __init__(self, repo: str = "acme/hello", token: str | None = None, *, app: FakeApp | None = None,
                 git_dir: Path | None = None, port: int = 0, clock: Callable[[], float] = time.time) -> None:
        self.repo = repo
        self.clock = clock  # the App tokens' and JWTs' time (a test moves it to see a token expire)
        self.owner, self.name = repo.split("/")
        self.token = token
        self.app = app
        self.git_dir = git_dir  # a bare repo: PR heads, merges and commits are real git there
        self.port = port
        self.page_size = 100  # the most a page holds, whatever per_page asks (tests make it small)
        self.requests: list[Request] = []
        self.statuses: dict[str, list[dict[str, Any]]] = {}
        self.check_runs: dict[str, list[dict[str, Any]]] = {}
        self.commits: dict[str, dict[str, Any]] = {}
        self.deployments: list[dict[str, Any]] = []
        self.deployment_statuses: dict[int, list[dict[str, Any]]] = {}
        self.pulls: list[dict[str, Any]] = []
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self._ids = itertools.count(1000)
        self._limited: list[str] = []
        self._dropped: list[tuple[str, str]] = []
        self._spent: int | None = None  # (method, path pattern): do it, then hang up unanswered
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self.up()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- switches the test controls

    def up(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def down(self) -> None:
        """Stop listening: connections are refused, as in an outage (or the network to GitHub gone)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    close = down

    def rate_limit(self, calls: int, how: str = "retry-after", seconds: int = 1) -> None:
        """The next `calls` requests are refused as GitHub's limits do: `retry-after` (a 429 with Retry-After),
        `reset` (403, x-ratelimit-remaining: 0, x-ratelimit-reset `seconds` ahead), `secondary` (403 naming
        the secondary rate limit, no header)."""
        with self._changed:
            self._limited = [f"{how}:{seconds}"] * calls

    def spend(self, seconds: int) -> None:
        """The next answer succeeds but spends the last request of the window: x-ratelimit-remaining: 0,
        x-ratelimit-reset `seconds` ahead (a client must wait for the reset before its next request)."""
        with self._changed:
            self._spent = seconds

    def drop_answer(self, method: str, pattern: str) -> None:
        """The next such request takes effect, then the connection closes without an answer (as when the
        network or the caller dies just then)."""
        with self._changed:
            self._dropped.append((method, pattern))

    def set_status(self, sha: str, context: str, state: str, *, target_url: str | None = None,
                   description: str = "") -> None:
        with self._changed:
            self.statuses.setdefault(sha, []).append(self._status(context, state, target_url, description))

    def add_check_run(self, sha: str, name: str, *, status: str = "completed", conclusion: str | None = "success",
                      html_url: str | None = None) -> int:
        with self._changed:
            run = self._check_run(sha, name, status, conclusion, html_url)
            self.check_runs.setdefault(sha, []).append(run)
            return int(run["id"])

    def update_check_run(self, run_id: int, *, status: str = "completed", conclusion: str | None = "success") -> None:
        with self._changed:
            for run in itertools.chain.from_iterable(self.check_runs.values()):
                if run["id"] == run_id:
                    run.update(status=status, conclusion=conclusion,
                               completed_at=_now() if status == "completed" else None)

    def add_commit(self, sha: str, message: str, *, name: str = "Sample Dev", email: str = "dev@example.com",
                   login: str | None = "sampledev", parents: tuple[str, ...] = ()) -> None:
        self.commits[sha] = self._commit(sha, message, name, email, login, parents)

    def merge(self, number: int, sha: str | None = None) -> str:
        """Merge a pull request as a person on GitHub would; the merge commit's SHA."""
        with self._changed:
            pull = self._pull_or_404(number)
            return self._merge(pull, sha)

    def close_pull(self, number: int) -> None:
        with self._changed:
            pull = self._pull_or_404(number)
            pull.update(state="closed", closed_at=_now(), updated_at=_now())

    def wait_for(self, predicate: Callable[[FakeGitHub], bool], timeout: float = 60) -> None:
        """Hold the test until `predicate(self)` holds after some request (or fail after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("the fake GitHub never saw what the test waited for")
                self._changed.wait(left)

    # --- views for assertions

    def calls(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def deployment_states(self, environment: str | None = None) -> list[tuple[str, list[str]]]:
        """(environment, [status states in order]) per deployment, oldest first."""
        return [(d["environment"], [s["state"] for s in self.deployment_statuses.get(d["id"], [])])
                for d in self.deployments if environment in (None, d["environment"])]

    # --- serving

    def dropped(self, method: str, target: str) -> bool:
        """Whether this answer is to be dropped (the request has been answered already)."""
        path = urlparse(target).path
        with self._changed:
            for dropped in self._dropped:
                if dropped[0] == method and re.search(dropped[1], path):
                    self._dropped.remove(dropped)
                    return True
        return False

    def answer(self, method: str, target: str, authorization: str, body: Any) -> tuple[int, dict[str, str], Any]:
        parsed = urlparse(target)
        query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        with self._changed:
            self.requests.append(Request(method, parsed.path, query, authorization, body))
            try:
                status, headers, data = self._route(method, parsed.path, query, authorization, body)
            except GitHubError as exc:
                data = {"message": exc.message, "documentation_url": DOCS, "status": str(exc.status)}
                if exc.errors:
                    data["errors"] = exc.errors
                status, headers = exc.status, exc.headers
            self._changed.notify_all()
            limits = {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "4999",
                      "x-ratelimit-reset": str(int(time.time()) + 3600)}
            if self._spent is not None and status < 400:
                limits.update({"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time()) + self._spent)})
                self._spent = None
            return status, {**limits, **headers}, data

    def _route(self, method: str, path: str, query: dict[str, str], authorization: str,
               body: Any) -> tuple[int, dict[str, str], Any]:
        self._throttle()
        found = re.fullmatch(r"/app/installations/(\d+)/access_tokens", path)
        if found and method == "POST":
            return 201, {}, self._access_token(int(found.group(1)), authorization)
        self._authorize(authorization)
        prefix = f"/repos/{self.repo}"
        if not path.startswith(prefix + "/"):
            raise GitHubError(404, "Not Found")
        rest = path[len(prefix):]
        for pattern, verb, handler in self._routes():
            found = re.fullmatch(pattern, rest)
            if found and verb == method:
                return handler(query, body, *found.groups())
        raise GitHubError(404, "Not Found")

    def _routes(self) -> list[tuple[str, str, Callable[..., tuple[int, dict[str, str], Any]]]]:
        return [
            (r"/commits/([^/]+)/status", "GET", self._combined_status),
            (r"/commits/([^/]+)/check-runs", "GET", self._list_check_runs),
            (r"/commits/([^/]+)", "GET", self._get_commit),
            (r"/deployments", "GET", self._list_deployments),
            (r"/deployments", "POST", self._create_deployment),
            (r"/deployments/(\d+)/statuses", "GET", self._list_deployment_statuses),
            (r"/deployments/(\d+)/statuses", "POST", self._create_deployment_status),
            (r"/pulls", "GET", self._list_pulls),
            (r"/pulls", "POST", self._create_pull),
            (r"/pulls/(\d+)", "GET", lambda q, b, n: (200, {}, self._pull_or_404(int(n)))),
            (r"/pulls/(\d+)", "PATCH", self._update_pull),
            (r"/pulls/(\d+)/merge", "PUT", self._merge_pull),
            (r"/issues/(\d+)/comments", "GET", lambda q, b, n: self._page(q, self.comments.get(int(n), []))),
            (r"/issues/(\d+)/comments", "POST", self._create_comment),
            (r"/issues/(\d+)/assignees", "POST", self._add_assignees),
        ]

    def _throttle(self) -> None:
        if not self._limited:
            return
        how, seconds = self._limited.pop(0).split(":")
        if how == "retry-after":
            raise GitHubError(429, "API rate limit exceeded", headers={"retry-after": seconds})
        if how == "reset":
            raise GitHubError(403, "API rate limit exceeded for installation.", headers={
                "x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time()) + int(seconds))})
        raise GitHubError(403, "You have exceeded a secondary rate limit. Please wait a few minutes before you "
                               "try again.")

    def _authorize(self, authorization: str) -> None:
        token = authorization.removeprefix("Bearer ").removeprefix("token ")
        if self.token is not None and token == self.token:
            return
        if self.app is not None and self.app.expiry.get(token, 0) > self.clock():
            return
        raise GitHubError(401, "Bad credentials")

    # --- App installation tokens

    def _access_token(self, installation_id: int, authorization: str) -> dict[str, Any]:
        if self.app is None or installation_id != self.app.installation_id:
            raise GitHubError(404, "Not Found")
        claims = self._verified_jwt(authorization.removeprefix("Bearer "))
        self.app.jwts.append(claims)
        token = "ghs_" + secrets.token_urlsafe(27)
        self.app.issued.append(token)
        self.app.expiry[token] = self.clock() + self.app.token_ttl
        expires = datetime.fromtimestamp(self.clock() + self.app.token_ttl, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"token": token, "expires_at": expires, "permissions": {"deployments": "write", "statuses": "read",
                                                                       "checks": "read", "pull_requests": "write"},
                "repository_selection": "all"}

    def _verified_jwt(self, jwt: str) -> dict[str, Any]:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        assert self.app is not None
        try:
            header_b64, claims_b64, signature_b64 = jwt.split(".")
            header, claims = json.loads(_unb64(header_b64)), json.loads(_unb64(claims_b64))
            key = serialization.load_pem_public_key(self.app.public_key_pem)
            key.verify(_unb64(signature_b64), f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(),
                       hashes.SHA256())  # type: ignore[union-attr, call-arg]
        except (ValueError, InvalidSignature):
            raise GitHubError(401, "A JSON web token could not be decoded") from None
        now = self.clock()
        if header.get("alg") != "RS256" or str(claims.get("iss")) != str(self.app.id):
            raise GitHubError(401, "'Issuer' claim ('iss') must be the App's id")
        if not claims.get("iat", now + 1) <= now + 60 or not now < claims.get("exp", 0) <= now + 660:
            raise GitHubError(401, "'Expiration time' claim ('exp') is too far in the future")
        return claims

    # --- statuses and check runs

    def _status(self, context: str, state: str, target_url: str | None, description: str) -> dict[str, Any]:
        number = next(self._ids)
        return {"url": f"{self.api_url}/repos/{self.repo}/statuses/{number}", "avatar_url": None, "id": number,
                "node_id": f"SC_{number}", "state": state, "description": description or None,
                "target_url": target_url, "context": context, "created_at": _now(), "updated_at": _now()}

    def _combined_status(self, query: dict[str, str], body: Any, sha: str) -> tuple[int, dict[str, str], Any]:
        latest: dict[str, dict[str, Any]] = {}
        for status in self.statuses.get(sha, []):
            latest[status["context"]] = status  # newest wins
        statuses = list(reversed(latest.values()))
        states = {s["state"] for s in statuses}
        combined = "failure" if states & {"failure", "error"} else \
            "pending" if "pending" in states or not statuses else "success"
        start, end, headers = self._bounds(query, len(statuses), f"/commits/{sha}/status")
        data = {"state": combined, "statuses": statuses[start:end], "sha": sha, "total_count": len(statuses),
                "repository": self._minimal_repo(), "commit_url": f"{self.api_url}/repos/{self.repo}/commits/{sha}",
                "url": f"{self.api_url}/repos/{self.repo}/commits/{sha}/status"}
        return 200, headers, data

    def _check_run(self, sha: str, name: str, status: str, conclusion: str | None,
                   html_url: str | None) -> dict[str, Any]:
        number = next(self._ids)
        html = html_url or f"{ORIGIN}/{self.repo}/actions/runs/{number}/job/{number}"
        return {
            "id": number, "head_sha": sha, "node_id": f"CR_{number}", "external_id": str(number),
            "url": f"{self.api_url}/repos/{self.repo}/check-runs/{number}", "html_url": html, "details_url": html,
            "status": status, "conclusion": conclusion if status == "completed" else None, "started_at": _now(),
            "completed_at": _now() if status == "completed" else None,
            "output": {"title": None, "summary": None, "text": None, "annotations_count": 0,
                       "annotations_url": f"{self.api_url}/repos/{self.repo}/check-runs/{number}/annotations"},
            "name": name, "check_suite": {"id": number + 1}, "app": self._integration(), "pull_requests": [],
        }

    def _list_check_runs(self, query: dict[str, str], body: Any, sha: str) -> tuple[int, dict[str, str], Any]:
        runs = list(reversed(self.check_runs.get(sha, [])))
        start, end, headers = self._bounds(query, len(runs), f"/commits/{sha}/check-runs")
        return 200, headers, {"total_count": len(runs), "check_runs": runs[start:end]}

    # --- pagination

    def _bounds(self, query: dict[str, str], total: int, path: str) -> tuple[int, int, dict[str, str]]:
        size = min(int(query.get("per_page", 30)), 100, self.page_size)
        page = int(query.get("page", 1))
        start, end = (page - 1) * size, page * size
        links = []
        extra = {k: v for k, v in query.items() if k not in ("page",)}

        def link(number: int, rel: str) -> str:
            params = "&".join(f"{k}={v}" for k, v in {**extra, "page": number}.items())
            return f'<{self.api_url}/repos/{self.repo}{path}?{params}>; rel="{rel}"'

        last = max((total + size - 1) // size, 1)
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links += [link(1, "first"), link(page - 1, "prev")]
        return start, end, ({"link": ", ".join(links)} if links else {})

    def _page(self, query: dict[str, str], items: list[Any], path: str = "") -> tuple[int, dict[str, str], Any]:
        start, end, headers = self._bounds(query, len(items), path)
        return 200, headers, items[start:end]

    # --- commits

    def _commit(self, sha: str, message: str, name: str, email: str, login: str | None,
                parents: tuple[str, ...]) -> dict[str, Any]:
        base = f"{self.api_url}/repos/{self.repo}"
        person = {"name": name, "email": email, "date": _now()}
        return {
            "url": f"{base}/commits/{sha}", "sha": sha, "node_id": f"C_{sha[:12]}",
            "html_url": f"{ORIGIN}/{self.repo}/commit/{sha}", "comments_url": f"{base}/commits/{sha}/comments",
            "commit": {"url": f"{base}/git/commits/{sha}", "author": person, "committer": person,
                       "message": message, "comment_count": 0,
                       "tree": {"sha": "0" * 40, "url": f"{base}/git/trees/{'0' * 40}"},
                       "verification": {"verified": False, "reason": "unsigned", "payload": None,
                                        "signature": None, "verified_at": None}},
            "author": self._user(login) if login else None, "committer": self._user(login) if login else None,
            "parents": [{"sha": p, "url": f"{base}/commits/{p}", "html_url": f"{ORIGIN}/{self.repo}/commit/{p}"}
                        for p in parents],
        }

    def _get_commit(self, query: dict[str, str], body: Any, ref: str) -> tuple[int, dict[str, str], Any]:
        if ref in self.commits:
            return 200, {}, self.commits[ref]
        if self.git_dir is not None:
            shown = self._git("log", "-1", "--format=%H%x00%an%x00%ae%x00%P%x00%B", ref, "--", check=False)
            if shown:
                sha, name, email, parents, message = shown.split("\0", 4)
                return 200, {}, self._commit(sha, message.strip(), name, email, None, tuple(parents.split()))
        raise GitHubError(422, f"No commit found for SHA: {ref}")

    # --- deployments

    def _list_deployments(self, query: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        found = [d for d in reversed(self.deployments)
                 if query.get("sha") in (None, d["sha"]) and query.get("environment") in (None, d["environment"])]
        return self._page(query, found, "/deployments")

    def _create_deployment(self, query: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        if not isinstance(body, dict) or not body.get("ref"):
            raise GitHubError(422, "Invalid request.", [{"resource": "Deployment", "field": "ref", "code": "missing"}])
        if body.get("required_contexts") != []:
            raise GitHubError(409, "Conflict: Commit status checks failed for " + str(body["ref"]))
        number = next(self._ids)
        base = f"{self.api_url}/repos/{self.repo}"
        environment = body.get("environment", "production")
        deployment = {
            "url": f"{base}/deployments/{number}", "id": number, "node_id": f"DE_{number}", "sha": body["ref"],
            "ref": body["ref"], "task": body.get("task", "deploy"), "payload": body.get("payload") or {},
            "original_environment": environment, "environment": environment,
            "description": body.get("description") or None, "creator": self._user(self.owner),
            "created_at": _now(), "updated_at": _now(), "statuses_url": f"{base}/deployments/{number}/statuses",
            "repository_url": base, "transient_environment": bool(body.get("transient_environment")),
            "production_environment": bool(body.get("production_environment", environment == "production")),
        }
        self.deployments.append(deployment)
        return 201, {}, deployment

    def _deployment_or_404(self, number: str) -> dict[str, Any]:
        for deployment in self.deployments:
            if deployment["id"] == int(number):
                return deployment
        raise GitHubError(404, "Not Found")

    def _list_deployment_statuses(self, query: dict[str, str], body: Any, number: str
                                  ) -> tuple[int, dict[str, str], Any]:
        self._deployment_or_404(number)
        return self._page(query, list(reversed(self.deployment_statuses.get(int(number), []))))

    def _create_deployment_status(self, query: dict[str, str], body: Any, number: str
                                  ) -> tuple[int, dict[str, str], Any]:
        deployment = self._deployment_or_404(number)
        states = ("error", "failure", "inactive", "in_progress", "queued", "pending", "success")
        if not isinstance(body, dict) or body.get("state") not in states:
            raise GitHubError(422, "Validation Failed", [{"resource": "DeploymentStatus", "field": "state",
                                                          "code": "invalid"}])
        status_id = next(self._ids)
        status = {
            "url": f"{deployment['url']}/statuses/{status_id}", "id": status_id, "node_id": f"DES_{status_id}",
            "state": body["state"], "creator": self._user(self.owner), "description": body.get("description", ""),
            "environment": deployment["environment"], "target_url": body.get("log_url", ""),
            "created_at": _now(), "updated_at": _now(), "deployment_url": deployment["url"],
            "repository_url": deployment["repository_url"], "environment_url": body.get("environment_url", ""),
            "log_url": body.get("log_url", ""),
        }
        self.deployment_statuses.setdefault(int(number), []).append(status)
        if body["state"] == "success" and body.get("auto_inactive", True):
            self._mark_inactive(deployment)
        return 201, {}, status

    def _mark_inactive(self, current: dict[str, Any]) -> None:
        """GitHub marks the environment's earlier successful deployments inactive (auto_inactive)."""
        for deployment in self.deployments:
            states = self.deployment_statuses.get(deployment["id"], [])
            if (deployment is not current and deployment["environment"] == current["environment"]
                    and states and states[-1]["state"] == "success"):
                inactive = dict(states[-1], id=next(self._ids), state="inactive", updated_at=_now())
                states.append(inactive)

    # --- pull requests

    def _pull_or_404(self, number: int) -> dict[str, Any]:
        for pull in self.pulls:
            if pull["number"] == number:
                if self.git_dir is not None and pull["state"] == "open":
                    pull["head"]["sha"] = self._git("rev-parse", f"refs/heads/{pull['head']['ref']}")
                    pull["base"]["sha"] = self._git("rev-parse", f"refs/heads/{pull['base']['ref']}")
                return pull
        raise GitHubError(404, "Not Found")

    def _list_pulls(self, query: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        state = query.get("state", "open")
        head = query.get("head")
        found = [self._pull_or_404(p["number"]) for p in reversed(self.pulls)
                 if state in ("all", p["state"]) and query.get("base") in (None, p["base"]["ref"])
                 and head in (None, p["head"]["label"])]
        return self._page(query, found, "/pulls")

    def _create_pull(self, query: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        head, base = body.get("head", ""), body.get("base", "")
        head_branch = head.split(":", 1)[-1]
        if not body.get("title") or not head or not base:
            raise GitHubError(422, "Validation Failed", [{"resource": "PullRequest", "code": "missing_field"}])
        for pull in self.pulls:
            if pull["state"] == "open" and pull["head"]["ref"] == head_branch and pull["base"]["ref"] == base:
                raise GitHubError(422, "Validation Failed", [{
                    "resource": "PullRequest", "code": "custom",
                    "message": f"A pull request already exists for {self.owner}:{head_branch}."}])
        number = len(self.pulls) + 1
        pull = self._pull(number, head_branch, base, body["title"], body.get("body") or "")
        self.pulls.append(pull)
        return 201, {}, self._pull_or_404(number)

    def _pull(self, number: int, head: str, base: str, title: str, text: str) -> dict[str, Any]:
        api, html = f"{self.api_url}/repos/{self.repo}", f"{ORIGIN}/{self.repo}"
        pull_id = next(self._ids)
        head_sha = self._git("rev-parse", f"refs/heads/{head}", check=False) if self.git_dir else "0" * 40
        base_sha = self._git("rev-parse", f"refs/heads/{base}", check=False) if self.git_dir else "0" * 40

        def side(branch: str, sha: str) -> dict[str, Any]:
            return {"label": f"{self.owner}:{branch}", "ref": branch, "sha": sha or "0" * 40,
                    "user": self._user(self.owner), "repo": self._repository()}

        def link(href: str) -> dict[str, str]:
            return {"href": href}

        return {
            "url": f"{api}/pulls/{number}", "id": pull_id, "node_id": f"PR_{pull_id}",
            "html_url": f"{html}/pull/{number}", "diff_url": f"{html}/pull/{number}.diff",
            "patch_url": f"{html}/pull/{number}.patch", "issue_url": f"{api}/issues/{number}",
            "commits_url": f"{api}/pulls/{number}/commits", "review_comments_url": f"{api}/pulls/{number}/comments",
            "review_comment_url": f"{api}/pulls/comments{{/number}}", "comments_url": f"{api}/issues/{number}/comments",
            "statuses_url": f"{api}/statuses/{head_sha}", "number": number, "state": "open", "locked": False,
            "title": title, "user": self._user(self.owner), "body": text, "labels": [], "milestone": None,
            "active_lock_reason": None, "created_at": _now(), "updated_at": _now(), "closed_at": None,
            "merged_at": None, "merge_commit_sha": None, "assignee": None, "assignees": [],
            "requested_reviewers": [], "requested_teams": [], "head": side(head, head_sha),
            "base": side(base, base_sha),
            "_links": {"self": link(f"{api}/pulls/{number}"), "html": link(f"{html}/pull/{number}"),
                       "issue": link(f"{api}/issues/{number}"), "comments": link(f"{api}/issues/{number}/comments"),
                       "review_comments": link(f"{api}/pulls/{number}/comments"),
                       "review_comment": link(f"{api}/pulls/comments{{/number}}"),
                       "commits": link(f"{api}/pulls/{number}/commits"),
                       "statuses": link(f"{api}/statuses/{head_sha}")},
            "author_association": "OWNER", "auto_merge": None, "draft": False, "merged": False,
            "mergeable": True, "rebaseable": True, "mergeable_state": "clean", "merged_by": None, "comments": 0,
            "review_comments": 0, "maintainer_can_modify": False, "commits": 1, "additions": 0, "deletions": 0,
            "changed_files": 0,
        }

    def _update_pull(self, query: dict[str, str], body: Any, number: str) -> tuple[int, dict[str, str], Any]:
        pull = self._pull_or_404(int(number))
        for key in ("title", "body"):
            if key in body:
                pull[key] = body[key]
        if body.get("state") == "closed":
            pull.update(state="closed", closed_at=_now())
        pull["updated_at"] = _now()
        return 200, {}, pull

    def _merge_pull(self, query: dict[str, str], body: Any, number: str) -> tuple[int, dict[str, str], Any]:
        pull = self._pull_or_404(int(number))
        sha = self._merge(pull, (body or {}).get("sha"))
        return 200, {}, {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}

    def _merge(self, pull: dict[str, Any], expected_head: str | None) -> str:
        if pull["state"] != "open":
            raise GitHubError(405, "Pull Request is not mergeable")
        if expected_head and expected_head != pull["head"]["sha"]:
            raise GitHubError(409, "Head branch was modified. Review and try the merge again.")
        merge_sha = self._git_merge(pull) if self.git_dir is not None else secrets.token_hex(20)
        pull.update(state="closed", merged=True, merged_at=_now(), closed_at=_now(), merge_commit_sha=merge_sha,
                    merged_by=self._user(self.owner), updated_at=_now())
        return merge_sha

    def _git_merge(self, pull: dict[str, Any]) -> str:
        """A real merge commit on the base branch, as GitHub's merge button makes."""
        head, base = pull["head"]["sha"], pull["base"]["sha"]
        tree = self._git("merge-tree", "--write-tree", base, head).splitlines()[0]
        message = f"Merge pull request #{pull['number']} from {self.owner}/{pull['head']['ref']}\n\n{pull['title']}"
        sha = self._git("commit-tree", tree, "-p", base, "-p", head, "-m", message)
        self._git("update-ref", f"refs/heads/{pull['base']['ref']}", sha, base)
        return sha

    def _create_comment(self, query: dict[str, str], body: Any, number: str) -> tuple[int, dict[str, str], Any]:
        self._pull_or_404(int(number))
        comment_id = next(self._ids)
        api = f"{self.api_url}/repos/{self.repo}"
        comment = {"id": comment_id, "node_id": f"IC_{comment_id}", "url": f"{api}/issues/comments/{comment_id}",
                   "html_url": f"{ORIGIN}/{self.repo}/pull/{number}#issuecomment-{comment_id}",
                   "body": body.get("body", ""), "user": self._user(self.owner), "created_at": _now(),
                   "updated_at": _now(), "issue_url": f"{api}/issues/{number}", "author_association": "OWNER"}
        self.comments.setdefault(int(number), []).append(comment)
        return 201, {}, comment

    def _add_assignees(self, query: dict[str, str], body: Any, number: str) -> tuple[int, dict[str, str], Any]:
        pull = self._pull_or_404(int(number))
        for login in body.get("assignees", []):
            if login not in [a["login"] for a in pull["assignees"]]:
                pull["assignees"].append(self._user(login))
        pull["assignee"] = pull["assignees"][0] if pull["assignees"] else None
        return 201, {}, self._issue(pull)

    def _issue(self, pull: dict[str, Any]) -> dict[str, Any]:
        api = f"{self.api_url}/repos/{self.repo}"
        number = pull["number"]
        return {"id": pull["id"], "node_id": f"I_{pull['id']}", "url": pull["issue_url"], "repository_url": api,
                "labels_url": f"{api}/issues/{number}/labels{{/name}}", "comments_url": pull["comments_url"],
                "events_url": f"{api}/issues/{number}/events", "html_url": pull["html_url"], "number": number,
                "state": pull["state"], "title": pull["title"], "body": pull["body"], "user": pull["user"],
                "labels": [], "assignee": pull["assignee"], "assignees": pull["assignees"], "milestone": None,
                "locked": False, "comments": len(self.comments.get(number, [])), "closed_at": pull["closed_at"],
                "created_at": pull["created_at"], "updated_at": pull["updated_at"],
                "pull_request": {"url": pull["url"], "html_url": pull["html_url"], "diff_url": pull["diff_url"],
                                 "patch_url": pull["patch_url"], "merged_at": pull["merged_at"]},
                "author_association": "OWNER"}

    # --- shared shapes

    def _user(self, login: str) -> dict[str, Any]:
        api = f"{self.api_url}/users/{login}"
        number = sum(map(ord, login))
        return {"login": login, "id": number, "node_id": f"U_{number}",
                "avatar_url": f"https://avatars.githubusercontent.com/u/{number}", "gravatar_id": "",
                "url": api, "html_url": f"{ORIGIN}/{login}", "followers_url": f"{api}/followers",
                "following_url": f"{api}/following{{/other_user}}", "gists_url": f"{api}/gists{{/gist_id}}",
                "starred_url": f"{api}/starred{{/owner}}{{/repo}}", "subscriptions_url": f"{api}/subscriptions",
                "organizations_url": f"{api}/orgs", "repos_url": f"{api}/repos",
                "events_url": f"{api}/events{{/privacy}}", "received_events_url": f"{api}/received_events",
                "type": "User", "site_admin": False}

    def _integration(self) -> dict[str, Any]:
        return {"id": 15368, "slug": "github-actions", "node_id": "MDM6QXBwMTUzNjg=", "owner": self._user("github"),
                "name": "GitHub Actions", "description": "Automate your workflow from idea to production",
                "external_url": "https://help.github.com/en/actions", "html_url": f"{ORIGIN}/apps/github-actions",
                "created_at": "2018-07-30T09:30:17Z", "updated_at": "2024-04-10T20:33:16Z",
                "permissions": {"checks": "write", "contents": "write", "metadata": "read"},
                "events": ["check_run", "check_suite", "push"]}

    def _minimal_repo(self) -> dict[str, Any]:
        api, html = f"{self.api_url}/repos/{self.repo}", f"{ORIGIN}/{self.repo}"
        urls = {f"{name}_url": f"{api}/{name}" for name in (
            "archive", "assignees", "blobs", "branches", "collaborators", "comments", "commits", "compare",
            "contents", "contributors", "deployments", "downloads", "events", "forks", "git_commits", "git_refs",
            "git_tags", "issue_comment", "issue_events", "issues", "keys", "labels", "languages", "merges",
            "milestones", "notifications", "pulls", "releases", "stargazers", "statuses", "subscribers",
            "subscription", "tags", "teams", "trees", "hooks")}
        return {"id": 4242, "node_id": "R_4242", "name": self.name, "full_name": self.repo,
                "owner": self._user(self.owner), "private": True, "html_url": html, "description": None,
                "fork": False, "url": api, **urls}

    def _repository(self) -> dict[str, Any]:
        html = f"{ORIGIN}/{self.repo}"
        return {**self._minimal_repo(), "license": None, "forks": 0, "git_url": f"git://github.com/{self.repo}.git",
                "ssh_url": f"git@github.com:{self.repo}.git", "clone_url": f"{html}.git", "mirror_url": None,
                "svn_url": html, "homepage": None, "language": "Python", "forks_count": 0, "stargazers_count": 0,
                "watchers_count": 0, "size": 1, "default_branch": "main", "open_issues_count": 0,
                "has_pages": False, "disabled": False, "pushed_at": _now(), "created_at": "2026-01-01T00:00:00Z",
                "updated_at": _now(), "open_issues": 0, "watchers": 0, "visibility": "private", "archived": False}

    def _git(self, *args: str, check: bool = True) -> str:
        assert self.git_dir is not None
        env = {"GIT_AUTHOR_NAME": "GitHub", "GIT_AUTHOR_EMAIL": "noreply@github.com",
               "GIT_COMMITTER_NAME": "GitHub", "GIT_COMMITTER_EMAIL": "noreply@github.com", "PATH": "/usr/bin:/bin"}
        done = subprocess.run(["git", "-C", str(self.git_dir), *args], capture_output=True, text=True, env=env)
        if check and done.returncode != 0:
            raise GitHubError(422, f"git {args[0]} failed: {done.stderr.strip()[:200]}")
        return done.stdout.strip() if done.returncode == 0 else ""


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _handler(github: FakeGitHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            status, headers, data = github.answer(self.command, self.path, self.headers.get("Authorization", ""), body)
            if github.dropped(self.command, self.path):
                self.close_connection = True
                return
            payload = json.dumps(data).encode()
            try:
                self.send_response(status)
                for key, value in {"Content-Type": "application/json; charset=utf-8", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve  # noqa: N815 - the http.server API

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server API
            pass

    return Handler


def main() -> None:
    """Serve until interrupted, nothing reported yet: `python -m tests.fakes.github PORT TOKEN [OWNER/NAME]`."""
    import sys

    port, token = int(sys.argv[1]), sys.argv[2]
    github = FakeGitHub(sys.argv[3] if len(sys.argv) > 3 else "acme/hello", token, port=port)
    print(f"fake GitHub REST API at {github.api_url} (repo {github.repo})", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
