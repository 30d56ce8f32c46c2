"""The dashboard in a real browser: Chromium (Playwright) against a real `conveyor server` on SQLite and
PostgreSQL, with real deploys (git, the registry, podman, HAProxy).

A deploy is held "running" by the sample's pre-deploy task connecting to a socket the test listens on
(held_task); the page is watched with Playwright's auto-waiting expectations, never a sleep.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser import PHONE, browser_page_fixture, chromium_fixture, csrf_of, shot, sign_in  # noqa: F401
from tests.e2e import App
from tests.server import ServerProcess
from tests.test_records import held_task, ledger_events, service_containers, wait_for_task, wait_until_lease_expired


@pytest.fixture
def dash(app: App) -> Iterator[ServerProcess]:
    running = ServerProcess.start(app)
    running.add_app()
    yield running
    running.stop()


@pytest.fixture
def dash_both(ledger_app: App) -> Iterator[ServerProcess]:
    """The server on each ledger backend (SQLite, then PostgreSQL)."""
    running = ServerProcess.start(ledger_app)
    running.add_app()
    yield running
    running.stop()


def tile(page: Any, env: str, app: str = "hello") -> Any:
    return page.locator(f"tr[data-app={app}] td[data-env={env}]")


def history(server: ServerProcess, env: str) -> list[dict[str, Any]]:
    status, body = server.api("GET", f"/api/apps/hello/history?env={env}")
    assert status == 200, body
    return body["releases"]


# ------------------------------------------------------------------- 1. overview, 4. operation page


def test_the_overview_shows_every_stage_and_a_cli_deploy_live_to_its_end(dash_both: ServerProcess,
                                                                          browser_page: Any) -> None:
    server, app, page = dash_both, dash_both.app, browser_page
    server.cli_ok("deploy", "staging", "v1")
    server.cli_ok("promote", "staging", "production")
    server.cli_ok("deploy", "staging", "v2")
    v1, v2 = app.git("rev-parse", "v1"), app.git("rev-parse", "v2")

    sign_in(page, server, server.token("viewer", "read"))
    apps = page.locator("tr[data-app]")
    expect(apps).to_have_count(1)
    expect(page.locator("tr[data-app] td[data-env]")).to_have_count(2)
    assert page.locator("tr[data-app] td[data-env]").evaluate_all(
        "tiles => tiles.map(t => t.dataset.env)") == ["staging", "production"]  # the config's order
    expect(tile(page, "staging")).to_contain_text("#2")
    expect(tile(page, "staging")).to_contain_text(v2[:7])
    expect(tile(page, "staging")).to_contain_text("live")
    expect(tile(page, "production")).to_contain_text("#1")
    expect(tile(page, "production")).to_contain_text(v1[:7])
    expect(tile(page, "production")).to_contain_text("promote")
    waiting = page.locator("tr[data-app] td.w")
    expect(waiting).to_contain_text("1 commit waiting")
    expect(waiting).to_contain_text("Sample Dev")  # who wrote what waits
    shot(page, "overview")

    page.evaluate("window.notReloaded = true")
    with held_task(app) as (listener, accepted):
        sha = server.push()
        follower = server.cli_start("deploy", "staging", sha)
        wait_for_task(listener, accepted)
        running = page.locator("[data-testid=operation]")
        expect(running).to_have_count(1)
        expect(running).to_contain_text("running")
        expect(running).to_contain_text("deploy hello → staging")
        expect(tile(page, "staging")).to_contain_text("deploying")
        shot(page, "overview-deploying")

        # 4. the operation page shows the log so far, then follows it from there.
        number = int(running.get_attribute("data-operation"))
        log_page = page.context.new_page()
        log_page.goto(f"{server.url}/operations/{number}")
        expect(log_page.locator("[data-testid=log]")).to_contain_text("pre-deploy task")
        accepted[0].close()
        assert follower.wait(timeout=180) == 0
    expect(running).to_have_count(0)
    expect(tile(page, "staging")).to_contain_text("#3")
    expect(tile(page, "staging")).to_contain_text(sha[:7])
    expect(waiting).to_contain_text("2 commits waiting")
    assert page.evaluate("window.notReloaded") is True  # it all arrived without a reload
    expect(log_page.locator("[data-testid=op-state]")).to_contain_text("succeeded")
    expect(log_page.locator("[data-testid=log]")).to_contain_text("switch")
    expect(log_page.locator("[data-testid=op-result]")).to_contain_text("staging#3")
    lines = log_page.locator("[data-testid=log] span").all_inner_texts()
    started = [line for line in lines if f"operation #{number} started" in line]
    assert len(started) == 1, lines  # followed from where the page opened: nothing shown twice
    shot(log_page, "operation", test=page.test_name)


def test_the_overview_flags_drift_and_an_outage_from_the_servers_own_checks(app: App, browser_page: Any,
                                                                            tmp_path: Path) -> None:
    """The server checks every live release's target in the background (here every second) and the tiles
    show the cached verdict, in words; the open page gets a changed verdict without a reload."""
    bad = app.run("server", "--bind", "127.0.0.1:0", CONVEYOR_SERVER_CHECK_EVERY="soon")
    assert bad.code == 2 and "CONVEYOR_SERVER_CHECK_EVERY='soon'" in bad.err and "Traceback" not in bad.err
    server = ServerProcess.start(app, CONVEYOR_SERVER_CHECK_EVERY="1")
    try:
        server.add_app()
        server.cli_ok("deploy", "staging", "v1")
        server.cli_ok("promote", "staging", "production")
        page = browser_page
        sign_in(page, server, server.token("viewer", "read"))
        row = page.locator("tr[data-app=hello]")
        expect(row.locator("th")).to_contain_text("checked")  # both answered, so no tile is flagged
        expect(tile(page, "staging")).to_contain_text("live")
        expect(row.locator("[data-testid=check]")).to_have_count(0)
        page.evaluate("window.notReloaded = true")

        # Drift: someone deploys v2 to staging around this server (a CLI on a ledger of its own, the same
        # targets); the server's ledger still says staging#1 (v1).
        app.ok("deploy", "staging", "v2", CONVEYOR_DATABASE_URL=f"sqlite:///{tmp_path / 'elsewhere.db'}")
        assert app.serves("staging") == "v2"
        staging = tile(page, "staging")
        expect(staging.locator("i")).to_have_text("drift")
        expect(staging.locator("[data-testid=check]")).to_contain_text("not staging#1")

        # An outage: production's live container is removed for real.
        subprocess.run(["podman", "rm", "-f", "-t", "0", *service_containers("production")], check=True,
                       capture_output=True)
        production = tile(page, "production")
        expect(production.locator("i")).to_have_text("outage")
        expect(production.locator("[data-testid=check]")).to_contain_text("outage")
        assert page.evaluate("window.notReloaded") is True  # both arrived on the open page
        shot(page, "overview-drift-outage")
    finally:
        server.stop()


# ------------------------------------------------------------------------------------ 2. app page


def test_promote_and_rollback_from_the_app_page_run_as_the_signed_in_token(dash: ServerProcess,
                                                                            browser_page: Any) -> None:
    server, page = dash, browser_page
    server.cli_ok("deploy", "staging", "v1")
    server.cli_ok("promote", "staging", "production")
    server.cli_ok("deploy", "staging", "v2")
    sign_in(page, server, server.token("alice", "operate:hello"))
    page.goto(f"{server.url}/apps/hello")
    expect(page.locator("[data-testid=history-row]")).to_have_count(3)
    expect(page.locator("[data-testid=diff-commit]")).to_have_count(1)  # v2, in staging, not in production
    shot(page, "app")

    production = page.locator("[data-testid=env][data-env=production]")
    production.locator("[data-testid=promote]").click()
    plan = page.locator("[data-testid=plan]")
    expect(plan).to_contain_text("pinned source: staging#2")
    expect(plan).to_contain_text("acquire the lease on hello/production")
    shot(page, "confirm-promote")
    page.click("[data-testid=confirm]")
    expect(page.locator("[data-testid=op-state]")).to_contain_text("succeeded")
    shot(page, "operation-promote")
    promoted = history(server, "production")[0]
    assert (promoted["number"], promoted["kind"], promoted["actor"]) == (2, "promote", "alice")
    assert promoted["origin"] == "dashboard"

    page.goto(f"{server.url}/apps/hello")
    production.locator("select[name=to]").select_option("1")
    production.locator("[data-testid=rollback]").click()
    expect(page.locator("[data-testid=plan]")).to_contain_text("re-apply production#1 exactly")
    page.fill("input[name=reason]", "v2 misbehaves")
    page.click("[data-testid=confirm]")
    expect(page.locator("[data-testid=op-state]")).to_contain_text("succeeded")
    rolled = history(server, "production")[0]
    assert (rolled["number"], rolled["kind"], rolled["actor"], rolled["reason"]) == \
        (3, "rollback", "alice", "v2 misbehaves")
    assert server.app.serves("production") == "v1"
    page.goto(f"{server.url}/apps/hello/releases/production/3")  # the rollback's record
    expect(page.locator("[data-testid=not-undone]")).to_contain_text("ran in production#2")
    expect(page.locator("[data-testid=commits]")).to_contain_text("removes")
    shot(page, "release-rollback")

    # A failed operation offers to run the same again, through the same confirmation.
    assert server.cli("deploy", "staging", "no-such-ref").code == 2
    failed = server.api("GET", "/api/operations?limit=1")[1]["operations"][0]
    page.goto(f"{server.url}/operations/{failed['id']}")
    expect(page.locator("[data-testid=op-state]")).to_contain_text("failed")
    page.click("[data-testid=retry]")
    expect(page.locator("[data-testid=refused]")).to_contain_text("unknown ref 'no-such-ref'")

    # History pages on: 25 a page, and these five all fit on the first.
    page.goto(f"{server.url}/apps/hello")
    expect(page.locator("[data-testid=history-row]")).to_have_count(5)
    expect(page.locator("[data-testid=older]")).to_have_count(0)

    # 5. delivery metrics for the app and for the organisation, over 7, 30 and 90 days.
    page.goto(f"{server.url}/apps/hello/delivery")
    for days in (7, 30, 90):
        expect(page.locator(f"[data-testid=window-{days}] svg.chart")).to_have_count(1)
    expect(page.locator("[data-testid=window-7] [data-testid=deployments]")).to_have_text(re.compile(r"\d+"))
    shot(page, "delivery-app")
    page.goto(f"{server.url}/delivery")
    expect(page.locator("[data-testid=window-90] svg.chart")).to_have_count(1)
    shot(page, "delivery")


def test_a_queued_operation_is_cancelled_from_the_app_page_as_the_signed_in_token(dash: ServerProcess,
                                                                                  browser_page: Any) -> None:
    server, app, page = dash, dash.app, browser_page
    server.cli_ok("deploy", "staging", "v1")
    with held_task(app) as (listener, accepted):
        sha = server.push()
        follower = server.cli_start("deploy", "staging", sha)
        wait_for_task(listener, accepted)  # that deploy runs, held at its pre-deploy task
        running = server.api("GET", "/api/operations?limit=1")[1]["operations"][0]
        status, queued = server.api("POST", "/api/apps/hello/deploy", {"env": "staging", "ref": "v2"})
        assert status == 202 and queued["state"] == "queued", queued
        sign_in(page, server, server.token("alice", "operate:hello"))
        page.goto(f"{server.url}/apps/hello")
        expect(page.locator(f"[data-testid=queued][data-operation='{running['id']}'] "
                            "[data-testid=cancel]")).to_have_count(0)  # only a queued one offers it
        page.locator(f"[data-testid=queued][data-operation='{queued['id']}'] [data-testid=cancel]").click()
        plan = page.locator("[data-testid=plan]")
        expect(plan).to_contain_text(f"take #{queued['id']} (deploy hello → staging, queued by admin")
        expect(plan).to_contain_text("record it as cancelled by alice")
        shot(page, "confirm-cancel")
        page.click("[data-testid=confirm]")
        expect(page.locator("[data-testid=op-state]")).to_contain_text("cancelled")
        cancelled = server.operation(queued["id"])
        assert cancelled["state"] == "cancelled" and cancelled["note"] == "cancelled by alice while queued"
        shot(page, "operation-cancelled")

        refused = page.request.post(f"{server.url}/apps/hello/actions/cancel", form={
            "operation": str(running["id"]), "confirm": "yes", "csrf": csrf_of(page)})
        assert refused.status == 409 and "only a queued operation can be cancelled" in refused.text()
        accepted[0].close()
        assert follower.wait(timeout=180) == 0
    assert [r["sha"] for r in history(server, "staging")][:1] == [sha]  # the cancelled deploy never ran


def test_lock_and_unlock_from_the_app_page_are_recorded_as_the_signed_in_token(dash: ServerProcess,
                                                                               browser_page: Any) -> None:
    server, page = dash, browser_page
    server.cli_ok("deploy", "staging", "v1")
    sign_in(page, server, server.token("bob", "block"))
    page.goto(f"{server.url}/apps/hello")
    staging = page.locator("[data-testid=env][data-env=staging]")
    expect(staging.locator("[data-testid=deploy]")).to_have_count(0)  # "block" does not operate
    staging.locator("input[name=reason]").fill("db maintenance")
    staging.locator("[data-testid=lock]").click()
    expect(page.locator("[data-testid=plan]")).to_contain_text("lock hello/staging")
    expect(page.locator("[data-testid=plan]")).to_contain_text("db maintenance")
    page.click("[data-testid=confirm]")
    expect(staging.locator("[data-testid=block]")).to_contain_text("locked (env) by bob: “db maintenance”")
    blocks = server.api("GET", "/api/apps/hello/blocks")[1]
    assert [(b["actor"], b["reason"], b["env"]) for b in blocks] == [("bob", "db maintenance", "staging")]
    page.goto(f"{server.url}/")
    expect(tile(page, "staging").locator("i")).to_have_text("locked")
    expect(tile(page, "staging")).to_contain_text("locked by bob: “db maintenance”")
    shot(page, "overview-locked")

    page.goto(f"{server.url}/apps/hello")
    staging.locator("[data-testid=unlock]").click()
    expect(page.locator("[data-testid=plan]")).to_contain_text("lift the env lock on hello/staging")
    page.click("[data-testid=confirm]")
    expect(staging.locator("[data-testid=block]")).to_have_count(0)
    assert server.api("GET", "/api/apps/hello/blocks")[1] == []


def test_a_dead_holders_stuck_state_is_cleared_from_the_app_page(dash: ServerProcess, browser_page: Any) -> None:
    server, app, page = dash, dash.app, browser_page
    server.cli_ok("deploy", "staging", "v1")
    with held_task(app) as (listener, accepted):
        victim = app.start("deploy", "staging", "HEAD", CONVEYOR_LEASE_TTL="2")  # a CLI on the same ledger
        wait_for_task(listener, accepted)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        wait_until_lease_expired(app, "staging")
        sign_in(page, server, server.token("carol", "block"))
        page.goto(f"{server.url}/apps/hello")
        staging = page.locator("[data-testid=env][data-env=staging]")
        expect(staging).to_contain_text("holder gone since")
        shot(page, "app-stuck")
        staging.locator("input[aria-label='recover reason']").fill("deploy box rebooted")
        staging.locator("[data-testid=recover]").click()
        expect(page.locator("[data-testid=plan]")).to_contain_text("take over staging's lease if its holder is gone")
        page.click("[data-testid=confirm]")
        expect(staging.locator("[data-testid=recover]")).to_have_count(0)
        expect(staging).not_to_contain_text("holder gone since")
    latest = history(server, "staging")[0]
    assert (latest["number"], latest["status"]) == (2, "interrupted")
    recorded = ledger_events(app, "staging", "recover")[-1].message
    assert "deploy box rebooted" in recorded and "carol" in recorded


def test_the_app_pages_history_pages_on_25_at_a_time(dash: ServerProcess, browser_page: Any) -> None:
    """30 releases of staging: one real deploy, then 29 more recorded through the ledger's own API with its
    commit, artifact and spec (paging is a view of the ledger; 29 real deploys would only cost minutes)."""
    from conveyor.ledger import open_ledger

    server, page = dash, browser_page
    server.cli_ok("deploy", "staging", "v1")
    ledger = open_ledger(server.app.ledger_url)
    try:
        real = ledger.get_release("hello", "staging", 1)
        assert real is not None
        for number in range(2, 31):
            made = ledger.create_release(
                app="hello", env="staging", kind="deploy", sha=real.sha, digest=real.digest, image=real.image,
                spec=real.spec, config_digest=real.config_digest, actor="ci", origin="test",
                reason=f"release {number}", forced=False, previous_number=number - 1, source_release_id=None)
            ledger.update_release(made.id, status="succeeded", finished=True)
    finally:
        ledger.close()
    sign_in(page, server, server.token("viewer", "read"))
    page.goto(f"{server.url}/apps/hello")
    rows = page.locator("[data-testid=history-row]")
    expect(rows).to_have_count(25)
    expect(rows.first).to_contain_text("staging#30")
    expect(rows.last).to_contain_text("staging#6")
    page.click("[data-testid=older]")
    expect(rows).to_have_count(5)
    expect(rows.first).to_contain_text("staging#5")
    expect(rows.last).to_contain_text("staging#1")
    expect(page.locator("[data-testid=older]")).to_have_count(0)
    shot(page, "app-history-page-2")


# ------------------------------------------------------------------------- 6. sign-in, CSRF, scopes


def test_a_read_only_token_sees_no_actions_and_forged_posts_are_refused(dash: ServerProcess,
                                                                        browser_page: Any) -> None:
    server, page = dash, browser_page
    server.cli_ok("deploy", "staging", "v1")
    page.goto(server.url + "/")
    expect(page).to_have_url(re.compile(r"/signin\?next=/$"))  # anonymous read is off by default
    page.fill("input[name=token]", "cvy_not-a-token")
    page.click("button.primary")
    expect(page.locator(".error")).to_contain_text("not valid")
    shot(page, "signin-refused")

    reader = server.token("viewer", "read")
    sign_in(page, server, reader)
    cookie = next(c for c in page.context.cookies() if c["name"] == "conveyor_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and reader not in cookie["value"]
    page.goto(f"{server.url}/apps/hello")
    expect(page.locator("[data-testid=env]")).to_have_count(2)
    expect(page.locator("[data-testid=actions]")).to_have_count(0)
    expect(page.locator("button[data-testid]")).to_have_count(0)
    assert reader not in page.content()
    shot(page, "app-read-only")

    form = {"env": "staging", "ref": "v1", "confirm": "yes"}
    no_csrf = page.request.post(f"{server.url}/apps/hello/actions/deploy", form=form)
    wrong_csrf = page.request.post(f"{server.url}/apps/hello/actions/deploy", form={**form, "csrf": "0" * 64})
    right_csrf_no_scope = page.request.post(f"{server.url}/apps/hello/actions/deploy",
                                            form={**form, "csrf": csrf_of(page)})
    assert (no_csrf.status, wrong_csrf.status, right_csrf_no_scope.status) == (403, 403, 403)
    assert "CSRF" in no_csrf.text() and "lacks the scope operate:hello" in right_csrf_no_scope.text()

    # An operator's session is refused the same without the form's token: a cross-site form carries the
    # cookie at most (SameSite=Lax keeps even that from a cross-site POST), never the token.
    sign_in(page, server, server.token("op", "operate:hello", "block"))
    forged = page.request.post(f"{server.url}/apps/hello/actions/deploy", form=form)
    forged_lock = page.request.post(f"{server.url}/apps/hello/actions/lock",
                                    form={"env": "staging", "reason": "x", "confirm": "yes", "csrf": "nope"})
    assert (forged.status, forged_lock.status) == (403, 403)
    status, listed = server.api("GET", "/api/operations")
    assert [op["actor"] for op in listed["operations"]] == ["ci"]  # only the CLI's deploy was ever queued
    assert server.api("GET", "/api/apps/hello/blocks")[1] == []

    # Revoking the token signs its sessions out.
    server.app.ok("server", "token", "revoke", "op")
    page.goto(f"{server.url}/apps/hello")
    expect(page).to_have_url(re.compile(r"/signin"))


def test_anonymous_read_is_a_server_option_and_shows_no_actions(app: App, browser_page: Any) -> None:
    server = ServerProcess.start(app, CONVEYOR_SERVER_ANONYMOUS_READ="1")
    try:
        server.add_app()
        page = browser_page
        page.goto(server.url + "/")
        expect(page.locator("tr[data-app=hello]")).to_have_count(1)
        page.goto(server.url + "/apps/hello")
        expect(page.locator("[data-testid=actions]")).to_have_count(0)
        refused = page.request.post(f"{server.url}/apps/hello/actions/lock",
                                    form={"env": "staging", "reason": "x", "confirm": "yes"})
        assert refused.status == 403
        shot(page, "app-anonymous")

        # 7. Without JavaScript the pages still read: everything is rendered on the server.
        no_js = page.context.browser.new_context(java_script_enabled=False, viewport=PHONE)
        try:
            bare = no_js.new_page()
            bare.goto(server.url + "/")
            expect(bare.locator("tr[data-app=hello] td[data-env]")).to_have_count(2)
            expect(bare.locator("[data-testid=operations]")).to_contain_text("Nothing is running")
            shot(bare, "overview-no-js-phone", test=page.test_name)
        finally:
            no_js.close()
    finally:
        server.stop()


# -------------------------------------------------------------------------------- 3. release page


def test_the_release_page_shows_its_commits_and_its_redacted_config_diff(dash: ServerProcess,
                                                                         browser_page: Any) -> None:
    server, app, page = dash, dash.app, browser_page
    server.cli_ok("deploy", "staging", "v1")
    secret = "s3cr3t-value-7781"

    def edit(text: str) -> str:
        return text.replace("    env:\n      APP_VERSION: staging",
                            f"    secrets: [DB_PASSWORD]\n    env:\n      APP_VERSION: staging\n"
                            f"      GREETING: hello-{secret}", 1)

    sha = app.reconfigure(edit, on="v2", message="greet with the password")
    server.push(sha)
    server.stop()  # again, with the secret in its environment
    restarted = ServerProcess.start(app, "server2", DB_PASSWORD=secret)
    try:
        restarted.tokens = server.tokens
        restarted.cli_ok("deploy", "staging", sha)
        sign_in(page, restarted, restarted.token("viewer", "read"))
        page.goto(f"{restarted.url}/apps/hello/releases/staging/2")
        expect(page.locator("[data-testid=release-title]")).to_contain_text("staging#2")
        expect(page.locator("[data-testid=actor]")).to_have_text("ci")
        commits = page.locator("[data-testid=commit]")
        expect(commits).to_have_count(2)  # v2's commit and the config change, over staging#1 (v1)
        expect(commits.first).to_contain_text("greet with the password")
        expect(commits.first).to_contain_text(sha[:7])
        diff = page.locator("[data-testid=config-diff]")
        expect(diff).to_contain_text("GREETING")
        expect(diff).to_contain_text("staging#1")
        assert secret not in page.content()
        expect(page.locator("[data-testid=tasks]")).to_contain_text("migrate")
        expect(page.locator("[data-testid=timeline]")).to_contain_text("switch")
        shot(page, "release")
        page.set_viewport_size(PHONE)
        shot(page, "release-phone")
    finally:
        restarted.stop()


# ---------------------------------------------------------------------------------------- freezes


def test_a_freeze_shows_its_banner_and_blocks_the_buttons(dash: ServerProcess, browser_page: Any) -> None:
    server, page = dash, browser_page
    server.cli_ok("deploy", "staging", "v1")
    server.cli_ok("lock", "--org", "--reason", "year-end freeze")
    sign_in(page, server, server.token("alice", "operate:hello", "block"))
    banner = page.locator("[data-testid=freeze-banner]")
    expect(banner).to_contain_text("year-end freeze")
    expect(banner).to_contain_text("ci")
    expect(tile(page, "staging")).to_contain_text("locked")
    shot(page, "overview-freeze")
    page.set_viewport_size(PHONE)
    shot(page, "overview-freeze-phone")

    page.goto(f"{server.url}/apps/hello")
    expect(page.locator("[data-testid=freeze-banner]")).to_contain_text("year-end freeze")
    for button in ("deploy", "promote", "rollback"):
        for found in page.locator(f"button[data-testid={button}]").all():
            expect(found).to_be_disabled()
    shot(page, "app-freeze")
    # A form sent anyway (the button only mirrors the ledger) is refused by the pipeline's own check.
    refused = page.request.post(f"{server.url}/apps/hello/actions/deploy",
                                form={"env": "staging", "ref": "v2", "csrf": csrf_of(page)})
    assert refused.status == 200 and "Refused" in refused.text() and "year-end freeze" in refused.text()
    assert server.api("GET", "/api/operations")[1]["operations"][0]["actor"] == "ci"

    # Lifting the freeze from the CLI lifts it on the open page too.
    page.goto(f"{server.url}/")
    server.cli_ok("unlock", "--org")
    expect(page.locator("[data-testid=freeze-banner]")).to_have_count(0)
    expect(tile(page, "staging")).to_contain_text("live")


# ------------------------------------------------------------------------ announcements link here


def test_announcements_link_to_the_release_page_of_a_server_with_a_public_url(app: App, tmp_path: Any) -> None:
    from tests.fakes.webhook_receiver import WebhookReceiver
    from tests.notify_setup import HOOK_SECRET

    hooks = WebhookReceiver(HOOK_SECRET)
    org = tmp_path / "org-notify.yml"
    org.write_text(f'notify:\n  destinations:\n    - webhook: {{url: "{hooks.url}", secret_env: HOOK_SECRET}}\n')
    bad = app.run("server", "--public-url", "deploys.example.com", "--bind", "127.0.0.1:0")
    assert bad.code == 2 and "--public-url 'deploys.example.com'" in bad.err and "Traceback" not in bad.err
    server = ServerProcess.start(app, CONVEYOR_SERVER_URL="https://deploys.example.com/", CONVEYOR_NOTIFY=str(org),
                                 HOOK_SECRET=HOOK_SECRET)
    try:
        server.add_app()
        server.cli_ok("deploy", "staging", "v1")
        succeeded = [p for p in hooks.payloads() if p["event"] == "succeeded"]
        assert [p["release"]["links"]["release_page"] for p in succeeded] == \
            ["https://deploys.example.com/apps/hello/releases/staging/1"]
    finally:
        server.stop()
        hooks.close()
