"""Datadog events as deploy markers: POST {api_url}/api/v1/events with the DD-API-KEY header.

The event's tags (`conveyor`, `app:APP`, `env:ENV`, `event:EVENT`) overlay it on any graph filtered by them;
`aggregation_key` groups an operation's started and finished events; a failure is an `error` event.
"""

from __future__ import annotations

import json
from typing import Any

from conveyor.notify.base import answer_error, post, summary
from conveyor.notify.grafana import marker_tags

ALERT_TYPES = {"failed": "error", "interrupted": "warning", "blocked": "warning", "freeze": "warning",
               "succeeded": "success", "rolled_back": "success"}


def event(announcement: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    title, lines = summary(announcement)
    return {
        "title": title[:100], "text": "\n".join(lines)[:4000],
        "tags": marker_tags(announcement, settings.get("tags") or []),
        "alert_type": ALERT_TYPES.get(announcement["event"], "info"),
        "aggregation_key": f"conveyor-{announcement['app']}-{announcement['operation']}",
        "source_type_name": "conveyor",
    }


def send(api_url: str, api_key: str, body: dict[str, Any]) -> None:
    answer = post(api_url.rstrip("/") + "/api/v1/events", what="datadog", body=json.dumps(body).encode(),
                  headers={"Content-Type": "application/json", "DD-API-KEY": api_key})
    answer_error(answer, "datadog")
