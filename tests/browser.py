"""Playwright driving Debian's Chromium against a real `conveyor server`, for the dashboard's tests.

`playwright install` cannot download a browser here; Playwright's Python client drives /usr/bin/chromium
(set-up installs it). Screenshots of every page a test looks at go to build/test-output/screenshots/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.server import ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "build" / "test-output" / "screenshots"
LAPTOP = {"width": 1366, "height": 860}
PHONE = {"width": 390, "height": 844}
# How long an expectation waits for the page: long enough for a real deploy on a busy machine (what the
# test waits for is the DOM state, which arrives when the operation gets there).
expect.set_options(timeout=60_000)


# Named apart from the fixtures they provide, so a test module imports them without shadowing its arguments.
@pytest.fixture(scope="session", name="chromium")
def chromium_fixture() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(name="browser_page")
def browser_page_fixture(chromium: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = chromium.new_context(viewport=LAPTOP)
    context.set_default_timeout(120_000)  # the held points, not a clock, decide when things happen
    page = context.new_page()
    page.test_name = request.node.name  # type: ignore[attr-defined]
    yield page
    context.close()


def shot(page: Any, name: str, *, test: str | None = None) -> Path:
    """A full-page screenshot named after the test and the page."""
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{test or page.test_name}-{name}")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{label}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Any, server: ServerProcess, token: str) -> None:
    page.goto(server.url + "/signin")
    page.fill("input[name=token]", token)
    page.click("button.primary")
    page.wait_for_selector("[data-testid=signed-in-as]")


def csrf_of(page: Any) -> str:
    return str(page.locator("form[action='/signout'] input[name=csrf]").get_attribute("value"))
