"""`conveyor server` end to end: a real server process (and a second replica), real PostgreSQL and SQLite,
git, the registry, podman and HAProxy, driven through its API and through the CLI as its client.

Hold points are the sample's pre-deploy task connecting to a socket the test listens on (held_task): the
deploy waits there until the test lets it go.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import App
from tests.server import ServerProcess
from tests.test_records import held_task, read_until, wait_for_task


@pytest.fixture
def server(app: App) -> Iterator[ServerProcess]:
    running = ServerProcess.start(app)
    running.add_app()
    yield running
    running.stop()


@pytest.fixture
def pg_server(ledger_app: App) -> Iterator[ServerProcess]:
    running = ServerProcess.start(ledger_app)
    running.add_app()
    yield running
    running.stop()


def env_setting(name: str, line: str) -> Callable[[str], str]:
    """An edit adding `line` at the level of environment `name`'s keys (not its target's)."""

    def edit(text: str) -> str:
        return text.replace(f"  - name: {name}\n", f"  - name: {name}\n    {line}\n", 1)

    return edit


def submit(server: ServerProcess, kind: str, body: dict[str, Any], token: str = "admin") -> dict[str, Any]:
    status, found = server.api("POST", f"/api/apps/hello/{kind}", body, token=token)
    assert status == 202, found
    return found


def events(server: ServerProcess, number: int, last_id: str | None = None) -> list[tuple[str, str, str]]:
    """(event, id, data) of a finished operation's stream, read to its end with a plain HTTP client."""
    headers = {"Authorization": f"Bearer {server.token('admin', 'admin')}", "Accept": "text/event-stream"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    request = urllib.request.Request(f"{server.url}/api/operations/{number}/events", headers=headers)
    found, current = [], {"event": "message", "id": "", "data": ""}
    with urllib.request.urlopen(request, timeout=60) as response:
        for raw in response:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if current["data"]:
                    found.append((current["event"], current["id"], current["data"]))
                current = {"event": "message", "id": "", "data": ""}
            elif line.startswith(":"):
                continue
            else:
                key, _, value = line.partition(":")
                current[key] = value[1:] if value.startswith(" ") else value
    return found


# ------------------------------------------------------------------------------ 6. the CLI as a client


def test_the_main_job_runs_through_the_server_with_the_same_output_as_locally(pg_server: ServerProcess) -> None:
    server, app = pg_server, pg_server.app
    built = server.cli_ok("build", "v1", "--json").json()
    assert built["built"] is False and built["sha"] == app.git("rev-parse", "v1")  # built by the session already

    deployed = server.cli_ok("deploy", "staging", "v1", "--reason", "first", "--json")
    view = deployed.json()
    assert (view["env"], view["number"], view["status"], view["actor"]) == ("staging", 1, "succeeded", "ci")
    assert "operation #" in deployed.err and "switch:" in deployed.err  # followed live: the target's steps
    assert app.serves("staging") == "v1"

    promoted = server.cli_ok("promote", "staging", "production", "--only", "v1", "--json").json()
    assert (promoted["env"], promoted["kind"], promoted["digest"]) == ("production", "promote", view["digest"])
    server.cli_ok("deploy", "staging", "v2")
    # Views through the API print byte for byte what the CLI prints on the same ledger by itself.
    for args in (["status", "--json"], ["history", "--json"], ["history", "staging", "--limit", "1", "--json"],
                 ["diff", "--json"], ["diff"], ["outbox", "--json"], ["history"]):
        remote, local = server.cli(*args), app.run(*args)
        assert (remote.code, remote.out) == (local.code, local.out), args

    rolled = server.cli_ok("rollback", "staging", "--reason", "back", "--json").json()
    assert (rolled["kind"], rolled["status"], rolled["sha"]) == ("rollback", "succeeded", app.git("rev-parse", "v1"))
    assert [line.split(": ")[0] for line in rolled["not_undone"]] == ["task 'migrate' ran in staging#2 (" +
                                                                     app.git("rev-parse", "v2")[:12] + ")"]

    failed = server.cli("deploy", "staging", "broken", "--json")
    assert failed.code == 1, failed.err
    body = failed.json()
    assert body["ok"] is False and body["error"]["kind"] == "failed" and body["release"]["status"] == "failed"
    assert app.serves("staging") == "v1"  # the previous release kept serving

    bad = server.cli("deploy", "staging", "no-such-ref", "--json")
    assert bad.code == 2 and bad.json()["error"]["kind"] == "bad_input"
    assert "unknown ref 'no-such-ref'" in bad.err and "Traceback" not in bad.err

    assert server.cli_ok("lock", "production", "--reason", "freeze").code == 0
    refused = server.cli("promote", "staging", "production", "--json")
    assert refused.code == 3 and refused.json()["error"]["kind"] == "refused"
    assert server.cli_ok("unlock", "production", "--json").json()["lifted"] == 1

    queued = server.cli_ok("deploy", "staging", "v1", "--no-follow").out.strip()
    assert queued.isdigit()
    followed = server.cli("operation", queued, "--follow", "--json")
    assert followed.code == 0 and followed.json()["env"] == "staging", followed.err


def test_the_cli_needs_no_checkout_with_app_named(server: ServerProcess) -> None:
    elsewhere = server.app.home.parent / "ci-job"
    elsewhere.mkdir()
    import subprocess

    from tests.e2e import CONVEYOR

    env = server.app.env(**server.client_env(), CONVEYOR_APP="hello")
    done = subprocess.run([CONVEYOR, "deploy", "staging", "v1", "--json"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sha"] == server.app.git("rev-parse", "v1")  # the server resolved the tag
    nameless = subprocess.run([CONVEYOR, "status"], cwd=elsewhere, env={**env, "CONVEYOR_APP": ""},
                              capture_output=True, text=True, timeout=60)
    assert nameless.returncode == 2 and "--app NAME" in nameless.stderr


def test_a_client_without_a_token_or_server_gets_one_line_and_exit_2(server: ServerProcess) -> None:
    no_token = server.app.run("status", CONVEYOR_SERVER=server.url, CONVEYOR_TOKEN="")
    assert no_token.code == 2 and "CONVEYOR_TOKEN" in no_token.err
    wrong = server.app.run("status", CONVEYOR_SERVER=server.url, CONVEYOR_TOKEN="cvy_not-a-token")
    assert wrong.code == 2 and "not valid" in wrong.err and "Traceback" not in wrong.err
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    down = server.app.run("deploy", "staging", "v1", CONVEYOR_SERVER=f"http://127.0.0.1:{port}",
                          CONVEYOR_TOKEN="cvy_x")
    assert down.code == 2 and "cannot reach the conveyor server" in down.err


def test_ctrl_c_stops_following_and_the_operation_goes_on(server: ServerProcess) -> None:
    with held_task(server.app) as (listener, accepted):
        sha = server.push()
        follower = server.cli_start("deploy", "staging", sha)
        wait_for_task(listener, accepted)
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=60)
        assert follower.returncode == 130
        assert "goes on on the server" in err
        number = int(re.search(r"operation #(\d+)", err).group(1))
        assert server.operation(number)["state"] == "running"
        accepted[0].close()
    assert server.wait_for_state(number, "succeeded", "failed")["state"] == "succeeded"


# ------------------------------------------------------------------------------------------ 3. tokens


def test_every_endpoint_needs_a_token_and_the_right_scope(server: ServerProcess) -> None:
    status, schema = server.api("GET", "/api/openapi.json", token=None)
    assert status == 200
    reader = server.token("reader", "read")
    other_app = server.token("other", "operate:other-app")
    checked = 0
    for path, methods in schema["paths"].items():
        concrete = (path.replace("{app}", "hello").replace("{env}", "staging").replace("{operation_id}", "1")
                    .replace("{name}", "reader"))
        for method in methods:
            if path == "/api/health":
                continue
            for token in (None, "cvy_forged"):
                code, body = server.api(method.upper(), concrete, {} if method != "get" else None, token=token)
                assert code == 401, (method, path, token, code, body)
                assert body["error"]["kind"] == "unauthenticated"
            if method != "get":
                for narrow in (reader, other_app):
                    code, body = server.api(method.upper(), concrete, {}, token=narrow)
                    assert code == 403, (method, path, code, body)
                    assert "lacks the scope" in body["error"]["message"]
            checked += 1
    assert checked >= 20
    assert server.api("GET", "/api/tokens", token=reader)[0] == 403  # reading tokens is admin-only


def test_a_token_is_shown_once_stored_hashed_and_named_as_the_actor(server: ServerProcess) -> None:
    token = server.token("deploy-bot", "operate:hello")
    listed = server.app.ok("server", "token", "list", "--json").json()
    assert {"name": "deploy-bot", "scopes": ["operate:hello"]}.items() <= next(
        t for t in listed if t["name"] == "deploy-bot").items()
    from conveyor.ledger import open_ledger

    ledger = open_ledger(server.app.ledger_url)
    try:
        stored = [row for row in ledger._engine.connect().exec_driver_sql("SELECT * FROM tokens")]
    finally:
        ledger.close()
    from conveyor.pipeline.tokens import token_hash

    assert token not in repr(stored) and token_hash(token) in repr(stored)
    done = server.cli_ok("deploy", "staging", "v1", "--json", token=token).json()
    assert done["actor"] == "deploy-bot"
    assert token not in server.log.read_text()
    server.app.ok("server", "token", "revoke", "deploy-bot")
    assert server.cli("status", token=token).code == 2
    bad_scope = server.app.run("server", "token", "create", "x", "--scope", "root")
    assert bad_scope.code == 2 and "unknown scope 'root'" in bad_scope.err


# ------------------------------------------------------------------------------------------- 2. apps


def test_apps_are_registered_by_url_and_shipped_from_what_the_remote_has(server: ServerProcess) -> None:
    names = [a["name"] for a in server.cli_ok("apps", "list", "--json", token=server.token("admin", "admin")).json()]
    assert names == ["hello"]
    bad = server.cli("apps", "add", "ghost", "--repo", "/nowhere/at/all.git", token=server.token("admin", "admin"))
    assert bad.code == 2 and "cannot clone" in bad.err
    # A commit only in the checkout is not on the remote: the server refuses it instead of guessing.
    server.app.reconfigure(lambda text: text + "\n# local only\n", build=False, message="local only")
    unpushed = server.cli("deploy", "staging", "HEAD")
    assert unpushed.code == 2 and "unknown ref" in unpushed.err
    server.push()
    server.app.ok("build", "HEAD")
    assert server.cli("deploy", "staging", "HEAD").code == 0


# ---------------------------------------------------------------------------------------- 5. the queue


def test_a_queued_operation_can_be_cancelled_and_a_running_one_cannot(server: ServerProcess) -> None:
    with held_task(server.app) as (listener, accepted):
        first = submit(server, "deploy", {"env": "staging", "ref": server.push()})
        wait_for_task(listener, accepted)
        second = submit(server, "deploy", {"env": "staging", "ref": "v1"})
        assert second["state"] == "queued" and second["queue_position"] == 1
        other_lane = submit(server, "deploy", {"env": "production", "ref": "v1", "force": True, "reason": "t"})
        # Another environment runs in parallel with the held one.
        assert server.wait_for_state(other_lane["id"], "succeeded", "failed")["state"] == "succeeded"
        code, body = server.api("POST", f"/api/operations/{first['id']}/cancel", {})
        assert code == 409 and "only a queued operation" in body["error"]["message"]
        follower = server.cli_start("operation", str(second["id"]), "--follow")
        read_until(follower, "waiting: 1 operation(s) ahead of it in staging")  # told where it waits
        cancelled = server.cli("cancel", str(second["id"]))
        assert cancelled.code == 0, cancelled.err
        _, err = follower.communicate(timeout=60)
        assert follower.returncode == 3 and "was cancelled by ci while queued" in err
        accepted[0].close()
    assert server.wait_for_state(first["id"], "succeeded", "failed")["state"] == "succeeded"
    final = server.operation(second["id"])
    assert final["state"] == "cancelled" and final["exit_code"] == 3 and "cancelled by ci" in final["note"]
    assert [r["number"] for r in server.app.history("staging")] == [1]  # the cancelled one never ran


def test_supersede_runs_only_the_newest_waiting_deploy(server: ServerProcess) -> None:
    app = server.app
    superseding = app.reconfigure(env_setting("staging", "queue: supersede"), message="supersede staging")
    server.push(superseding)
    with held_task(app) as (listener, accepted):
        holding = submit(server, "deploy", {"env": "staging", "ref": server.push()})
        wait_for_task(listener, accepted)
        waiting = [submit(server, "deploy", {"env": "staging", "ref": ref}) for ref in (superseding, "v1", "v2")]
        accepted[0].close()
    newest = server.wait_for_state(waiting[-1]["id"], "succeeded", "failed")
    assert newest["state"] == "succeeded", newest
    for skipped in waiting[:-1]:
        found = server.operation(skipped["id"])
        assert found["state"] == "superseded" and found["exit_code"] == 3
        assert f"superseded by operation #{waiting[-1]['id']}" in found["note"]
    assert server.operation(holding["id"])["state"] == "succeeded"
    assert [r["sha"] for r in app.history("staging")][0] == app.git("rev-parse", "v2")
    assert len(app.history("staging")) == 2  # the held one and the newest: the superseded never ran


def test_events_stream_live_and_resume_from_last_event_id(server: ServerProcess) -> None:
    done = server.cli_ok("--events", "json", "deploy", "staging", "v1", "--json")
    number = int(re.search(r"operation #(\d+)", done.err).group(1))
    stream = events(server, number)
    assert stream[-1][0] == "end" and json.loads(stream[-1][2])["state"] == "succeeded"
    progress = [item for item in stream if item[0] == "progress"]
    ids = [int(item[1]) for item in progress]
    assert ids == sorted(ids) and len(ids) > 5
    printed = [json.loads(line) for line in done.err.splitlines() if line.startswith("{")]
    printed = [e for e in printed if e["step"] != "queue"]  # where it waited: told live, not recorded
    assert [e["message"] for e in printed] == [json.loads(item[2])["message"] for item in progress]
    middle = progress[len(progress) // 2][1]
    resumed = events(server, number, last_id=middle)
    assert [item[1] for item in resumed if item[0] == "progress"] == [i[1] for i in progress if int(i[1]) > int(middle)]


# ----------------------------------------------------------------------------- 1. drain, 5. replicas


def test_sigterm_drains_the_running_operation_and_starts_nothing_new(server: ServerProcess) -> None:
    with held_task(server.app) as (listener, accepted):
        running = submit(server, "deploy", {"env": "staging", "ref": server.push()})
        wait_for_task(listener, accepted)
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_log("draining")
        late = submit(server, "deploy", {"env": "production", "ref": "v1", "force": True, "reason": "late"})
        code, health = server.api("GET", "/api/health", token=None)
        assert code == 200 and health["running"] == [running["id"]]  # still answering while it drains
        accepted[0].close()
        assert server.proc.wait(timeout=180) == 0
    assert "drained" in server.log.read_text()
    from conveyor.ledger import open_ledger

    ledger = open_ledger(server.app.ledger_url)
    try:
        assert ledger.server.get_operation(running["id"]).state == "succeeded"
        assert ledger.server.get_operation(late["id"]).state == "queued"  # nothing new started
    finally:
        ledger.close()


@pytest.mark.parametrize("ledger_app", ["postgres"], indirect=True)
def test_a_replica_killed_mid_deploy_is_taken_over_and_nothing_runs_twice(ledger_app: App) -> None:
    app = ledger_app
    first = ServerProcess.start(app, "replica-a", CONVEYOR_LEASE_TTL="2")
    second = None
    try:
        first.add_app()
        with held_task(app) as (listener, accepted):
            sha = first.push()
            operation = submit(first, "deploy", {"env": "staging", "ref": sha})
            wait_for_task(listener, accepted)
            assert first.operation(operation["id"])["replica"].split(":")[1] == str(first.proc.pid)
            second = ServerProcess.start(app, "replica-b", CONVEYOR_LEASE_TTL="2")
            second.tokens = first.tokens  # one ledger, so the same tokens
            first.kill()
            wait_for_task(listener, accepted)  # the second replica runs it again, after the lease lapsed
            accepted[-1].close()
            done = second.wait_for_state(operation["id"], "succeeded", "failed")
        assert done["state"] == "succeeded" and done["attempts"] == 2, done
        assert "stopped renewing its lease" in done["note"]
        assert done["replica"].split(":")[1] == str(second.proc.pid)
        releases = app.history("staging")
        assert [r["status"] for r in releases] == ["succeeded", "interrupted"]
        assert done["result"]["number"] == releases[0]["number"]
        after = submit(second, "deploy", {"env": "staging", "ref": "v1"})  # the queue goes on
        assert second.wait_for_state(after["id"], "succeeded", "failed")["state"] == "succeeded"
    finally:
        first.stop()
        if second is not None:
            second.stop()


# ------------------------------------------------------------------------------------------ 7. recovery


def test_recovery_is_listed_and_cleared_through_the_api_with_actor_and_reason(server: ServerProcess) -> None:
    app = server.app
    with held_task(app) as (listener, accepted):
        victim = app.start("deploy", "staging", "HEAD", CONVEYOR_LEASE_TTL="1")  # a local run, killed
        wait_for_task(listener, accepted)
        victim.kill()
        victim.wait()
    from tests.test_records import wait_until_lease_expired

    wait_until_lease_expired(app, "staging")
    code, report = server.api("GET", "/api/recovery", token=server.token("reader", "read"))
    assert code == 200
    assert [(lease["app"], lease["env"]) for lease in report["expired_leases"]] == [("hello", "staging")]
    assert [r["env"] for r in report["unfinished_releases"]] == ["staging"]
    assert report["unfinished_releases"][0]["status"] in ("pending", "running")
    assert server.api("POST", "/api/apps/hello/environments/staging/recover", {"reason": "x"},
                      token=server.token("reader", "read"))[0] == 403
    code, body = server.api("POST", "/api/apps/hello/environments/staging/recover",
                            {"reason": "replica died", "force": False}, token=server.token("ops", "block"))
    assert code == 200 and [r["status"] for r in body["interrupted"]] == ["interrupted"]
    code, report = server.api("GET", "/api/recovery")
    assert report["expired_leases"] == [] and report["interrupted_releases"][0]["env"] == "staging"
    from conveyor.ledger import open_ledger

    ledger = open_ledger(app.ledger_url)
    try:
        recorded = [e for e in ledger.events() if e.step == "recover"]
    finally:
        ledger.close()
    assert recorded and recorded[-1].data == {"actor": "ops", "reason": "replica died",
                                              "interrupted": ["staging#1"]}
    code, body = server.api("POST", "/api/apps/hello/outbox/flush", {"reason": "remote back"},
                            token=server.token("ops", "block"))
    assert code == 200 and body == {"undelivered": []}
    ledger = open_ledger(app.ledger_url)
    try:
        retried = [e for e in ledger.events() if e.step == "outbox"]
    finally:
        ledger.close()
    assert retried[-1].data["actor"] == "ops" and retried[-1].data["reason"] == "remote back"


# ---------------------------------------------------------------------- org-wide announcements (issue 12)


def test_the_servers_org_wide_destinations_announce_every_apps_deploys(app: App, tmp_path: Path) -> None:
    """`conveyor server --notify FILE`: an app with no `notify:` of its own is announced there too, and the
    destination's token never reaches the record."""
    from tests.fakes.slack import FakeSlack
    from tests.notify_setup import SLACK_TOKEN

    slack = FakeSlack(SLACK_TOKEN, {"#deploys": "C0DEP"}, {})
    defaults = tmp_path / "org-notify.yml"
    defaults.write_text("notify:\n"
                        f'  - slack: {{channel: "#deploys", token_env: ORG_SLACK, api_url: "{slack.api_url}"}}\n')
    broken = tmp_path / "broken-notify.yml"
    broken.write_text("notify:\n  - slack: {channel: 7}\n")
    refused = app.run("server", "--bind", "127.0.0.1:0", "--notify", str(broken))
    assert refused.code == 2 and "Traceback" not in refused.err
    assert "broken-notify.yml:1: notify.destinations[0].slack.channel: expected a text value" in refused.err
    server = ServerProcess.start(app, CONVEYOR_NOTIFY=str(defaults), ORG_SLACK=SLACK_TOKEN)
    try:
        server.add_app()
        server.cli_ok("deploy", "staging", "v1")
        (message,) = slack.top_level("#deploys")
        assert "*hello* staging#1 deploy succeeded" in message.text and "by ci" in message.text
    finally:
        server.stop()
        slack.close()
    ledger_bytes = b"".join(p.read_bytes() for p in app.home.glob("ledger.db*"))
    assert SLACK_TOKEN.encode() not in ledger_bytes


# ------------------------------------------------------------------------------------------ 1. limits


def test_a_body_too_large_is_413_and_one_that_stops_arriving_is_408(app: App) -> None:
    server = ServerProcess.start(app, CONVEYOR_SERVER_BODY_TIMEOUT="1")
    try:
        token = server.token("admin", "admin")
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=60) as conn:
            conn.sendall(f"POST /api/apps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {200 * 1024}\r\n\r\n".encode())
            assert conn.recv(4096).startswith(b"HTTP/1.1 413")  # refused on the declared length
        with socket.create_connection((host, int(port)), timeout=60) as conn:
            conn.sendall(f"POST /api/apps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"na".encode())
            answer = b""
            while chunk := conn.recv(4096):  # the rest never comes: the server answers, then closes
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive" in answer
        assert server.api("GET", "/api/health", token=None)[0] == 200  # and goes on serving
    finally:
        server.stop()


def test_delivery_metrics_judge_each_app_at_its_last_stage(server: ServerProcess) -> None:
    admin = server.token("admin", "admin")
    [listed] = server.cli_ok("apps", "list", "--json", token=admin).json()
    assert listed["stages"] == ["staging", "production"]  # read from the config when the app was registered
    assert server.cli("deploy", "staging", "HEAD").code == 0
    status, org = server.api("GET", "/api/delivery?days=7")
    assert status == 200 and org["deployments"] == 0  # staging is not where users are
    assert server.cli("promote", "staging", "production").code == 0
    org = server.api("GET", "/api/delivery?days=7")[1]
    assert org["deployments"] == 1 and org["change_failure_rate"] == 0 and org["lead_time_seconds"] >= 0
    assert org["daily"][-1]["deployments"] == 1 and len(org["daily"]) == 7
    status, one = server.api("GET", "/api/apps/hello/delivery?days=30")
    assert status == 200 and one["deployments"] == 1 and one["days"] == 30
    assert server.api("GET", "/api/apps/ghost/delivery")[0] == 404
    assert server.api("GET", "/api/delivery?days=0")[0] == 422
