"""GitHub Deployments: every release shows on GitHub as a deployment of its commit to its environment,
with statuses `in_progress` → `success` / `failure` / `error`.

Both are outbox items (pipeline/outbox.py), so they are never lost and never change a release's outcome:
the `start` item is queued with the release's pending record (in the same transaction) and delivered right
after; the `finish` item is queued with its final status. They share one lane per repository, so a status
never lands before its deployment. The deployment's id is remembered in the ledger's notify_messages table
(the record of "the outside message an operation updates in place": destination `github-deployment:REPO`,
operation `release-ID`, ts the deployment id), claimed before it is created: a run killed between creating
it and noting the id finds it again on GitHub by its payload instead of making a second one.

Each item freezes what delivery needs (the repository's settings with env var names, never a token), so
`conveyor outbox flush` on another commit, or in another process, delivers it the same way.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from conveyor.errors import ForgeRefused, ForgeUnavailable
from conveyor.forge.base import Forge
from conveyor.ledger.models import OutboxItem, Release
from conveyor.pipeline.workspace import Workspace

KIND = "github-deployment"
FINAL_STATES = {"succeeded": "success", "failed": "failure"}  # any other end (interrupted…) reads as `error`


def started_items(ws: Workspace, release: Release) -> list[tuple[str, dict[str, Any]]]:
    """The deployment to create for a release just recorded as pending (none when not configured)."""
    payload = _payload(ws, release, "start", "in_progress")
    return [(KIND, payload)] if payload else []


def _payload(ws: Workspace, release: Release, action: str, state: str) -> dict[str, Any] | None:
    settings = ws.config.forge.github
    if settings is None or not settings.deployments.enabled:
        return None
    stages = [env.name for env in ws.config.environments]
    template = ws.config.notify.release_page
    return {
        "action": action, "state": state, "forge": settings.model_dump(mode="json"),
        "release_id": release.id, "app": release.app, "env": release.env, "number": release.number,
        "kind": release.kind, "sha": release.sha, "digest": release.digest, "actor": release.actor,
        "production": bool(stages) and release.env == stages[-1],
        "environment_url": settings.deployments.environment_urls.get(release.env),
        "log_url": template.format(app=release.app, env=release.env, number=release.number) if template else None,
    }


class GitHubDeployments:
    """The outbox handler: create the deployment and say `in_progress`, then its final state."""

    retry_delays: tuple[float, ...] = ()  # one attempt per run: a deploy never waits on a GitHub outage

    def owed(self, ws: Workspace, release: Release, finished_at: datetime) -> list[dict[str, Any]]:
        payload = _payload(ws, release, "finish", FINAL_STATES.get(release.status, "error"))
        return [payload] if payload else []

    def lane(self, item: OutboxItem) -> str:
        return f"{KIND}:{item.payload['forge']['repo']}"

    def describe(self, item: OutboxItem) -> str:
        p = item.payload
        what = "create the GitHub deployment of" if p["action"] == "start" else "mark the GitHub deployment of"
        return f"{what} {p['env']}#{p['number']} ({p['sha'][:12]}) {p['state']} on {p['forge']['repo']}"

    def deliver(self, ws: Workspace, item: OutboxItem) -> None:
        from conveyor.notify.base import Refused, Unavailable

        try:
            self._deliver(ws, item.payload)
        except ForgeUnavailable as exc:
            raise Unavailable(exc.message, exc.retry_after) from None
        except ForgeRefused as exc:
            raise Refused(exc.message) from None

    def _deliver(self, ws: Workspace, payload: dict[str, Any]) -> None:
        from conveyor.config.forge import GitHub
        from conveyor.forge import github_for

        forge = github_for(GitHub.model_validate(payload["forge"]), os.environ, ws.say)
        deployment_id = _deployment_id(ws, forge, payload)
        description = f"{payload['kind']} {payload['env']}#{payload['number']} by {payload['actor']}"
        forge.set_deployment_status(deployment_id, payload["state"], environment_url=payload["environment_url"],
                                    log_url=payload["log_url"], description=description)


def _deployment_id(ws: Workspace, forge: Forge, payload: dict[str, Any]) -> int:
    """The release's deployment: remembered, or found on GitHub after a run that died before noting it, or
    created now (claimed first, so that the next run knows to look)."""
    app, destination = payload["app"], f"{KIND}:{payload['forge']['repo']}"
    operation = f"release-{payload['release_id']}"
    known = ws.ledger.notify_message(app, destination, operation)
    if known is not None and known.ts:
        return int(known.ts)
    marker = {"conveyor_release": f"{app}/{payload['env']}#{payload['number']}"}
    found = forge.find_deployment(sha=payload["sha"], environment=payload["env"], payload_match=marker) \
        if known is not None else None
    if found is None:
        ws.ledger.claim_notify_message(app, destination, operation, payload["env"])
        found = forge.create_deployment(
            sha=payload["sha"], environment=payload["env"], production=payload["production"],
            payload={**marker, "release": payload["number"], "digest": payload["digest"], "kind": payload["kind"]},
            description=f"conveyor {payload['kind']} {payload['env']}#{payload['number']}")
    ws.ledger.set_notify_ts(app, destination, operation, channel=payload["env"], ts=str(found.id))
    return found.id
