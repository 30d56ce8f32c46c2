"""Honest progress: a person never stares at silence, and what conveyor says is true (the builder's own
output, what it waits for, the whole operation's time, a drain only when there is something to drain,
one clear line for a missing git remote)."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.e2e import App


@pytest.fixture
def silent_registry() -> Iterator[str]:
    """host:port of a TCP listener that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for sock in held:
        sock.close()
    listener.close()


def _commit_config(app: App, old: str, new: str, message: str) -> None:
    config = app.repo / "conveyor.yml"
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))
    app.git("commit", "-qam", message)


def test_build_streams_the_builders_output_and_a_failure_shows_its_last_lines(app: App) -> None:
    dockerfile = app.repo / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("COPY www /www", "COPY www /www\nCOPY no-such-file /x"))
    app.git("commit", "-qam", "a build that fails at its third step")
    result = app.run("build", "HEAD")
    assert result.code == 1
    streamed = [line for line in result.err.splitlines() if line.startswith("  buildah: ")]
    assert any("STEP 1/" in line for line in streamed), result.err  # the builder's lines, as they came
    message = result.err[result.err.index("error: "):]
    assert "its last lines:" in message and "no-such-file" in message
    assert "Traceback" not in result.err


def test_a_silent_registry_is_named_while_waiting_then_one_clear_error(app: App, silent_registry: str) -> None:
    image_line = next(line for line in (app.repo / "conveyor.yml").read_text().splitlines()
                      if line.startswith("image:"))
    _commit_config(app, image_line, f"image: {silent_registry}/hello", "a registry that never answers")
    result = app.run("build", "HEAD", "--json")
    assert result.code == 2
    assert f"waiting for registry {silent_registry} to answer" in result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: registry {silent_registry} did not answer within 10s "
                      f"(asked for the manifest of {silent_registry}/hello:{app.git('rev-parse', 'HEAD')})"]
    assert result.json()["error"]["kind"] == "infrastructure_missing"


def test_a_deploy_reports_its_whole_time_and_drains_only_a_previous_container(app: App) -> None:
    first = app.ok("deploy", "staging", "v1")
    assert "previous container" not in first.err  # nothing was serving before
    timing = re.search(r"staging#1 succeeded in (\d+\.\d)s \(the deploy step (\d+\.\d)s\)", first.err)
    assert timing, first.err
    assert float(timing[1]) >= float(timing[2])
    assert first.err.rstrip().splitlines()[-1] == timing[0]  # the last word of the run
    second = app.ok("deploy", "staging", "v2")
    assert "letting requests to the previous container finish" in second.err


def test_a_missing_git_remote_is_one_clear_line_and_git_keeps_its_own_words(app: App) -> None:
    app.git("remote", "remove", "origin")
    result = app.ok("deploy", "staging", "v1")
    named = [line for line in result.err.splitlines() if "no git remote 'origin'" in line]
    assert len(named) == 1 and "release_refs: false" in named[0], result.err
    assert "Could not read from remote repository" not in result.err
    assert "no git remote 'origin'" in app.ok("outbox", "--json").json()[0]["last_error"]
    app.git("remote", "add", "origin", str(app.repo.parent / "no-such-remote.git"))
    # flush: delivered now, whatever the backoff the first failure set (a later deploy would wait behind it)
    result = app.run("outbox", "flush")
    assert result.code == 1
    assert "does not appear to be a git repository" in result.err  # git's own reason, not only its verdict
