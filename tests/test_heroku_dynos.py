"""A one-off dyno's request body and how its log says it ended (pure functions, on logplex-shaped lines)."""

from __future__ import annotations

import pytest

from conveyor.targets.heroku.dynos import LogReading, OneOff

STAMP = "2026-12-01T10:00:00.123456+00:00"


def test_the_exit_status_comes_from_this_dynos_heroku_line_only() -> None:
    shown: list[str] = []
    reading = LogReading("run.4321", shown.append)
    lines = [f"{STAMP} heroku[run.4321]: Starting process with command `rake db:migrate`",
             f"{STAMP} app[web.1]: GET / 200",  # another dyno's line in the same stream
             f"{STAMP} app[run.4321]: Process exited with status 9",  # the app printing it is not Heroku saying it
             f"{STAMP} heroku[run.1111]: Process exited with status 0",
             f"{STAMP} app[run.4321]: done"]
    assert not any(reading.take(line) for line in lines)
    assert reading.take(f"{STAMP} heroku[run.4321]: Process exited with status 2")
    assert reading.exit_code == 2 and shown == ["Process exited with status 9", "done"]


def test_a_dyno_that_crashes_without_an_exit_status_ends_the_reading() -> None:
    reading = LogReading("run.7", lambda _: None)
    assert reading.take(f"{STAMP} heroku[run.7]: State changed from starting to crashed")
    assert reading.exit_code is None and reading.ended_as == "crashed"


def test_the_command_is_quoted_for_herokus_shell() -> None:
    body = OneOff(["sh", "-c", "echo $HOME's"], "conveyor-task", 120.5, "performance-m", {"A": "1"}).body()
    assert body == {"command": "sh -c 'echo $HOME'\"'\"'s'", "type": "conveyor-task", "attach": False,
                    "time_to_live": 120, "size": "performance-m", "env": {"A": "1"}}


def test_a_one_off_dyno_is_stopped_when_conveyor_is_stopped_before_it_ends() -> None:
    from conveyor.targets.heroku.api import HerokuAPI
    from conveyor.targets.heroku.dynos import run_one_off
    from tests.fakes.heroku import FakeHeroku

    fake = FakeHeroku("t0ken", "127.0.0.1:1", ("_", "t0ken")).start()
    api = HerokuAPI(fake.url, "t0ken", "HEROKU_API_KEY", lambda _: None)
    try:
        app = fake.create_app("hello-staging")
        app.formation["web"] = "sha256:" + "b" * 64

        def interrupted(line: str) -> None:
            raise KeyboardInterrupt  # Ctrl-C while the dyno's output streams

        with pytest.raises(KeyboardInterrupt):
            run_one_off(api, "hello-staging", OneOff(["rake", "backfill"], "web", 60), interrupted, lambda _: None)
        assert len(app.one_off_ids) == 1 and app.stopped == app.one_off_ids
    finally:
        api.close()
        fake.stop()
