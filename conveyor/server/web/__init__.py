"""The dashboard `conveyor server` serves under `/`: server-rendered pages over the same pipeline calls the
JSON API makes (routes in pages.py, sign-in in session.py, charts in charts.py)."""

from __future__ import annotations

from typing import Any


def add_dashboard(api: Any, server: Any, *, anonymous_read: bool) -> None:
    from conveyor.server.web.pages import add_pages

    add_pages(api, server, anonymous_read=anonymous_read)
