"""What an app's dashboard page shows, in one call: each environment's status (with the target's answer:
outage and drift), a page of history, the diff between two stages, the queue, and the blocks in force."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.errors import ConveyorError

if TYPE_CHECKING:
    from conveyor.pipeline.workspace import Workspace


def app_page_data(ws: Workspace, app: str, *, env: str | None, before: int | None, source: str | None,
                  target: str | None, limit: int, queue: list[dict[str, Any]]) -> dict[str, Any]:
    from conveyor.pipeline.diff import diff
    from conveyor.pipeline.views import app_blocks, history_page, outbox_view, status

    stages = [e.name for e in ws.config.environments]
    rows, next_before = history_page(ws, env, limit, before_id=before)
    compared = None
    if len(stages) > 1:
        try:
            compared = diff(ws, source or stages[0], target or stages[1]).as_dict()
        except ConveyorError as exc:
            compared = {"error": exc.message, "from": source, "to": target}
    environments = status(ws)
    return {
        "stages": stages,
        "environments": environments,
        "history": rows,
        "history_env": env,
        "next_before": next_before,
        "diff": compared,
        "queue": {name: [op for op in queue if op["env"] == name] for name in stages},
        "builds": [op for op in queue if op["env"] is None],
        "blocks": app_blocks(ws),
        "undelivered": outbox_view(ws),
        "rollback_choices": {row["env"]: _succeeded(ws, app, row["env"]) for row in environments},
    }


def _succeeded(ws: Workspace, app: str, env: str, shown: int = 20) -> list[dict[str, Any]]:
    """The recent succeeded releases of env: what a rollback may go back to."""
    from conveyor.pipeline.views import release_view

    found = [r for r in ws.ledger.list_releases(app, env, 100) if r.status == "succeeded"]
    return [release_view(r) for r in found[:shown]]
