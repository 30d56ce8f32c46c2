"""GitHub webhook deliveries on the server (`POST /webhooks/github`): whose they are, whether they are
genuine, whether they were seen before, and which trigger they concern (pipeline/triggers.py acts).

Nothing in a body is trusted before its signature is: the body is parsed for `repository.full_name` only,
to pick the candidate apps (those whose config's `forge.github.repo` names that repository); each
candidate's secret is the env var its config names (`webhook_secret_env`), read from the server's
environment, and the delivery belongs to the candidates whose secret verifies `X-Hub-Signature-256`
(HMAC-SHA256 of the raw body, compared in constant time). Several apps may live in one repository: each
whose secret verifies gets the delivery.

Answers: 401 for a missing or bad signature (or no candidate with a secret set), 404 for a repository no
registered app names (GitHub then shows the delivery as failed, so a hook pointed at the wrong server is
seen), 400 for a body that is not JSON or lacks X-GitHub-Delivery, 200 otherwise: `pong` for a ping,
`duplicate` for a delivery id already recorded (nothing runs twice), what it did, or why it ignored it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConveyorError

if TYPE_CHECKING:
    from conveyor.config.models import AppConfig
    from conveyor.pipeline.worker import Server

log = logging.getLogger("conveyor.server")
SIGNATURE_PREFIX = "sha256="


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    """A verified delivery: its id, event name, parsed payload, and the apps it is for."""

    id: str
    event: str
    payload: dict[str, Any]
    apps: list[str] = field(default_factory=list)

    @property
    def actor(self) -> str:
        sender = self.payload.get("sender")
        login = sender.get("login") if isinstance(sender, dict) else None
        return f"github:{login}" if isinstance(login, str) and login else "github"

    @property
    def origin(self) -> str:
        return f"github delivery {self.id}"


def signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    """X-Hub-Signature-256 is `sha256=` and the hex HMAC-SHA256 of the raw body under the shared secret."""
    if not secret or not header or not header.startswith(SIGNATURE_PREFIX):
        return False
    expected = SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().encode("ascii", "replace"))


def repository_name(body: bytes) -> str | None:
    """The one field read before the signature is checked: which repository the delivery says it is from."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    repository = payload.get("repository") if isinstance(payload, dict) else None
    name = repository.get("full_name") if isinstance(repository, dict) else None
    return name if isinstance(name, str) and 0 < len(name) <= 200 else None


# ------------------------------------------------------------------------------------------- which apps


class RepoIndex:
    """Registered app → the forge settings in its config at the mirror's default branch, re-read only when
    that branch's head moves (a config parse per app per delivery would not scale to hundreds of apps)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, str | None, str | None]] = {}  # app → (head sha, repo, secret env)

    def candidates(self, server: Server, full_name: str) -> list[tuple[str, str | None]]:
        """(app, its webhook secret env var) for every registered app whose config names `full_name`."""
        wanted = full_name.lower()
        found = []
        for app in server.store.list_apps():
            entry = self._entry(server, app.name)
            if entry is not None and entry[1] is not None and entry[1].lower() == wanted:
                found.append((app.name, entry[2]))
        return found

    def _entry(self, server: Server, app: str) -> tuple[str, str | None, str | None] | None:
        from conveyor.pipeline.apps import mirror_path
        from conveyor.vcs.git import Repo, head_from_files

        path = mirror_path(server.home, app)
        try:
            head = head_from_files(path) or Repo(path).resolve("HEAD")
        except ConveyorError:
            return None  # an app whose mirror is not there (yet): not a candidate
        cached = self._seen.get(app)
        if cached is not None and cached[0] == head:
            return cached
        try:
            config = _config_at(server, app, head)
        except ConveyorError as exc:
            log.warning("webhooks: cannot read %s's config at %s: %s", app, head[:12], exc.message)
            return None
        github = config.forge.github
        entry = (head, github.repo if github else None, github.webhook_secret_env if github else None)
        self._seen[app] = entry
        return entry


def _config_at(server: Server, app: str, sha: str) -> AppConfig:
    ws = server.workspace(app)
    try:
        ws.ship(sha)
        return ws.config
    finally:
        ws.close()


def verify(server: Server, index: RepoIndex, headers: dict[str, str], body: bytes) -> Delivery | Reply:
    """The verified delivery, or the reply that refuses it."""
    signature = headers.get("x-hub-signature-256")
    if not signature:
        return Reply(401, _error("unauthenticated", "missing X-Hub-Signature-256 (set the hook's secret)"))
    full_name = repository_name(body)
    if full_name is None:
        return Reply(400, _error("bad_input", "the body is not a JSON delivery naming repository.full_name"))
    candidates = index.candidates(server, full_name)
    if not candidates:
        return Reply(404, _error("not_found", f"no registered app has forge.github.repo {full_name}"))
    unset = [app for app, secret_env in candidates if not secret_env or not os.environ.get(secret_env)]
    for app in unset:
        log.warning("webhooks: %s names %s but no webhook secret is set for it (forge.github.webhook_secret_env "
                    "and that env var in the server's environment)", app, full_name)
    apps = [app for app, secret_env in candidates
            if app not in unset and signature_valid(os.environ.get(secret_env or "", ""), body, signature)]
    if not apps:
        return Reply(401, _error("unauthenticated", "X-Hub-Signature-256 does not match the secret configured "
                                                    f"for {full_name}"))
    delivery_id = headers.get("x-github-delivery", "").strip()
    if not delivery_id or len(delivery_id) > 100:
        return Reply(400, _error("bad_input", "missing X-GitHub-Delivery"))
    payload = json.loads(body)
    return Delivery(delivery_id, headers.get("x-github-event", "").strip(), payload, apps)


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"kind": kind, "message": message}}


# ---------------------------------------------------------------------------------------------- receive


def receive(server: Server, index: RepoIndex, headers: dict[str, str], body: bytes) -> Reply:
    """Verify, deduplicate, then act on one delivery (pipeline/triggers.py)."""
    from conveyor.ledger.hooks_store import HooksStore
    from conveyor.pipeline.triggers import handle

    verified = verify(server, index, headers, body)
    if isinstance(verified, Reply):
        return verified
    if verified.event == "ping":
        return Reply(200, {"ok": True, "pong": True, "apps": verified.apps})
    store = HooksStore(server.ledger)
    if not store.record_delivery(verified.id, app=",".join(verified.apps), event=verified.event):
        return Reply(200, {"ok": True, "duplicate": True, "delivery": verified.id,
                           "outcome": store.delivery_outcome(verified.id) or ""})
    try:
        outcomes = [handle(server, app, verified) for app in verified.apps]
    except Exception:
        store.forget_delivery(verified.id)  # GitHub redelivers what failed: that must not read as a duplicate
        raise
    outcome = "; ".join(f"{app}: {what}" for app, what in zip(verified.apps, outcomes, strict=True))
    store.set_outcome(verified.id, outcome)
    log.info("webhook %s %s: %s", verified.event, verified.id, outcome)
    return Reply(200, {"ok": True, "delivery": verified.id, "event": verified.event, "outcome": outcome})
