"""`--dry-run` runs every check a real run makes before its first side effect, prints the plan on stdout,
and fails (with the real run's exit code) when the run would certainly fail. `--force` is recorded only
when it overrode something."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from tests.e2e import App


def _containers() -> list[str]:
    out = subprocess.run(["podman", "ps", "-aq", "--filter", "label=conveyor.app=hello"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def _bin_dir(tmp_path: Path, *tools: str) -> str:
    """A PATH holding only these tools, to run conveyor where the others are not installed."""
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in tools:
        os.symlink(str(shutil.which(tool)), bare / tool)
    return str(bare)


def test_dry_run_prints_the_plan_and_its_checks_on_stdout_and_changes_nothing(app: App) -> None:
    result = app.ok("deploy", "staging", "v1", "--dry-run")
    assert result.out.startswith("dry run: nothing will be changed")
    for step in ("acquire the lease", "pre-deploy task 'migrate'", "health check", "record"):
        assert step in result.out
    assert "container engine: podman" in result.out and f"port 127.0.0.1:{app.ports['staging']}" in result.out
    assert "acquire the lease" not in result.err
    data = app.ok("deploy", "staging", "v1", "--dry-run", "--json").json()
    assert data["ok"] is True and data["dry_run"] is True
    assert any("pre-deploy task 'migrate'" in step for step in data["plan"])
    assert any("haproxy" in check for check in data["checks"])
    assert app.history() == [] and _containers() == []


def test_dry_run_fails_when_the_port_is_in_use_by_another_process(app: App) -> None:
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", app.ports["staging"]))
        squatter.listen()
        result = app.run("deploy", "staging", "v1", "--dry-run")
    assert result.code == 2
    assert f"port {app.ports['staging']} is in use" in result.err
    assert result.out == ""


def test_dry_run_fails_on_a_missing_secret(app: App) -> None:
    config = app.repo / "conveyor.yml"
    staging_env = "    env:\n      APP_VERSION: staging"
    config.write_text(config.read_text().replace(staging_env, f"    secrets: [DRY_RUN_DB_PASSWORD]\n{staging_env}"))
    app.git("commit", "-qam", "staging needs a secret")
    app.ok("build", "HEAD")
    result = app.run("deploy", "staging", "HEAD", "--dry-run", "--json")
    assert result.code == 2
    assert "DRY_RUN_DB_PASSWORD" in result.err
    assert result.json()["error"]["kind"] == "bad_input"
    assert app.ok("deploy", "staging", "HEAD", "--dry-run", DRY_RUN_DB_PASSWORD="x").code == 0


def test_dry_run_fails_without_a_container_engine_or_haproxy(app: App, tmp_path: Path) -> None:
    no_engine = app.run("deploy", "staging", "v1", "--dry-run", "--json", PATH=_bin_dir(tmp_path, "git", "haproxy"))
    assert no_engine.code == 2 and "no container engine" in no_engine.err
    assert no_engine.json()["error"]["kind"] == "infrastructure_missing"
    shutil.rmtree(tmp_path / "bin")
    no_proxy = app.run("deploy", "staging", "v1", "--dry-run", PATH=_bin_dir(tmp_path, "git", "podman"))
    assert no_proxy.code == 2 and "haproxy is not installed" in no_proxy.err


def test_a_too_long_conveyor_home_fails_the_dry_run_and_the_real_run_before_any_task(
    app: App, tmp_path: Path
) -> None:
    home = tmp_path / ("h" * 100)
    dry = app.run("deploy", "staging", "v1", "--dry-run", CONVEYOR_HOME=str(home))
    assert dry.code == 2 and "too long a path" in dry.err and "CONVEYOR_HOME" in dry.err
    real = app.run("deploy", "staging", "v1", CONVEYOR_HOME=str(home))
    assert real.code == 2 and "too long a path" in real.err
    assert "migrating schema" not in real.err  # the pre-deploy task never ran
    assert app.run("history", "--json", CONVEYOR_HOME=str(home)).json() == []


def test_force_with_nothing_to_override_is_not_recorded_as_forced(app: App) -> None:
    result = app.ok("deploy", "staging", "v1", "--force", "--reason", "just in case")
    assert "--force: nothing to override" in result.err
    assert app.history("staging")[0]["forced"] is False
    plan = app.ok("deploy", "staging", "v1", "--force", "--reason", "again", "--dry-run").out
    assert "--force: nothing to override" in plan
    # Past the production policy (promotions only), --force overrides something: on record.
    app.ok("deploy", "production", "v1", "--force", "--reason", "the policy stands in the way")
    assert app.history("production")[0]["forced"] is True
    app.ok("lock", "staging", "--reason", "incident 9")
    app.ok("deploy", "staging", "v2", "--force", "--reason", "past the block")
    assert app.history("staging")[0]["forced"] is True
