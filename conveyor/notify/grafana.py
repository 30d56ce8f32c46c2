"""Grafana annotations as deploy markers: POST {api_url}/api/annotations with a service account token.

Tags `conveyor`, `app:APP`, `env:ENV` and `event:EVENT` let a dashboard's annotation query pick one app's
or one environment's deploys; the text holds the release, who shipped it, and the links (release page,
compare, trace).
"""

from __future__ import annotations

import json
import time
from typing import Any

from conveyor.notify.base import answer_error, post, summary


def annotation(announcement: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    title, lines = summary(announcement)
    body: dict[str, Any] = {
        "time": int(time.time() * 1000),
        "tags": marker_tags(announcement, settings.get("tags") or []),
        "text": "\n".join([title, *lines]),
    }
    if settings.get("dashboard_uid"):
        body["dashboardUID"] = settings["dashboard_uid"]
    return body


def marker_tags(announcement: dict[str, Any], extra: list[str]) -> list[str]:
    tags = ["conveyor", f"app:{announcement['app']}", f"event:{announcement['event']}"]
    if announcement["env"]:
        tags.append(f"env:{announcement['env']}")
    return [*tags, *extra]


def send(api_url: str, token: str, body: dict[str, Any]) -> None:
    answer = post(api_url.rstrip("/") + "/api/annotations", what="grafana", body=json.dumps(body).encode(),
                  headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    answer_error(answer, "grafana")
