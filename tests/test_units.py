"""Small pure pieces: identity from CI variables, block expiry parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conveyor.errors import BadInput
from conveyor.pipeline.blocks import parse_until
from conveyor.pipeline.identity import identify


def test_identity_from_circleci() -> None:
    who = identify({"CIRCLECI": "true", "CIRCLE_USERNAME": "ada", "CIRCLE_BUILD_URL": "https://ci/1"})
    assert (who.actor, who.origin) == ("ada", "https://ci/1")


def test_identity_from_github_actions() -> None:
    who = identify({"GITHUB_ACTIONS": "true", "GITHUB_ACTOR": "octo", "GITHUB_SERVER_URL": "https://github.com",
                    "GITHUB_REPOSITORY": "acme/app", "GITHUB_RUN_ID": "9"})
    assert (who.actor, who.origin) == ("octo", "https://github.com/acme/app/actions/runs/9")


def test_identity_of_a_person_uses_git_and_the_os_user() -> None:
    who = identify({}, "Ada Lovelace", "ada@example.com")
    assert who.actor == "Ada Lovelace <ada@example.com>"
    assert "@" in who.origin


def test_until_accepts_durations_and_iso_times() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_until("2h", now) == now + timedelta(hours=2)
    assert parse_until("30m", now) == now + timedelta(minutes=30)
    assert parse_until("2026-01-02T10:00", now) == datetime(2026, 1, 2, 10, tzinfo=UTC)
    assert parse_until(None, now) is None
    with pytest.raises(BadInput, match="in the past"):
        parse_until("2025-01-01T00:00", now)
    with pytest.raises(BadInput, match="give an ISO time"):
        parse_until("tomorrow-ish", now)
