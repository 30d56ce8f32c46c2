"""`POST /webhooks/github`: GitHub's deliveries, authenticated by their signature rather than a token
(pipeline/webhooks.py verifies and deduplicates, pipeline/triggers.py acts), and `POST /api/triggers/poll`,
which runs the poll that backs up missed CI events at once (scope admin).

No `from __future__ import annotations`: FastAPI reads the routes' annotations when they are defined.
"""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from conveyor.pipeline.worker import Server
from conveyor.server import schemas as s


def add_webhooks(api: FastAPI, server: Server, reader: Any, admin: Any) -> None:
    from conveyor.pipeline.webhooks import RepoIndex

    index = RepoIndex()

    @api.post("/webhooks/github", tags=["webhooks"], response_model=dict[str, Any],
              responses={401: {"model": s.ErrorBody, "description": "Missing or bad X-Hub-Signature-256"},
                         404: {"model": s.ErrorBody, "description": "No registered app names this repository"}})
    async def github(request: Request) -> JSONResponse:
        """A GitHub delivery (push, check_suite, check_run, status, pull_request, ping), signed with the
        secret the app's `forge.github.webhook_secret_env` names."""
        import anyio

        from conveyor.pipeline.webhooks import receive

        body = await request.body()
        headers = {key.lower(): value for key, value in request.headers.items()}
        reply = await anyio.to_thread.run_sync(receive, server, index, headers, body)
        return JSONResponse(reply.body, status_code=reply.status)

    @api.get("/api/apps/{app}/triggers", tags=["webhooks"], response_model=dict[str, Any])
    def triggers(app: str, who: reader) -> dict[str, Any]:  # type: ignore[valid-type]
        """Pushes waiting for green CI (and why), the trigger pauses in force, the open release PR."""
        from conveyor.pipeline.triggers import triggers_view
        from conveyor.server.app import ApiError

        if server.store.get_app(app) is None:
            raise ApiError(404, "not_found", f"no app named '{app}' is registered")
        return triggers_view(server, app)

    @api.post("/api/triggers/poll", tags=["webhooks"], response_model=dict[str, Any])
    def poll(who: admin) -> dict[str, Any]:  # type: ignore[valid-type]
        """Look at every push still waiting for CI and every release PR due to merge, now."""
        from conveyor.pipeline.poller import poll_once

        return poll_once(server)
