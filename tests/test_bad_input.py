"""Bad input never crashes: through the real `conveyor` executable, each is one or two readable lines,
exit 2, nothing recorded, and no hang (the subprocess timeout turns a hang into a failure)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conveyor.errors import BadInput
from tests.e2e import App, Result
from tests.test_config import BILLION_LAUGHS

CONFIG = """\
app: hello
image: 127.0.0.1:5000/hello
environments:
  - name: staging
    target: {type: container-host, port: 18001}
  - name: production
    target: {type: container-host, port: 18002}
"""

# Generous for a loaded 2-core machine; every case here used to hang forever or answer in well under this.
QUICK = 20.0


@pytest.fixture
def plain(tmp_path: Path) -> App:
    """A git repo with a valid conveyor.yml and its own CONVEYOR_HOME: enough for commands that stop at
    the config, the arguments or the ledger."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "conveyor.yml").write_text(CONFIG)
    # conveyor reads the config from the checked-out commit
    subprocess.run(["git", "-C", str(repo), "add", "conveyor.yml"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit",
                    "-qm", "config"], check=True)
    return App(repo, tmp_path / "home", {})


def refused(result: Result, *expected: str) -> str:
    """Exit 2, at most two lines, no traceback, every expected piece in them."""
    lines = result.err.strip().splitlines()
    assert result.code == 2, f"exit {result.code}:\n{result.err}"
    assert "Traceback" not in result.err and 1 <= len(lines) <= 2, result.err
    for piece in expected:
        assert piece in result.err, result.err
    return result.err


def nothing_recorded(app: App) -> None:
    assert not (app.home / "ledger.db").exists() or app.history() == []


def write_config(app: App, content: str | bytes) -> None:
    path = app.repo / "conveyor.yml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


# --- the config file ------------------------------------------------------------------------------------


def test_a_billion_laughs_config_is_refused_at_once(plain: App) -> None:
    write_config(plain, BILLION_LAUGHS)
    refused(plain.run("--config", "conveyor.yml", "status", timeout=QUICK), "anchors and aliases expand to")
    nothing_recorded(plain)


def test_a_byte_that_is_not_utf8_is_refused_with_its_line(plain: App) -> None:
    write_config(plain, CONFIG.replace("app: hello", "app: hello").encode() + b"# caf\xe9\n")
    refused(plain.run("--config", "conveyor.yml", "status", timeout=QUICK), "conveyor.yml:8:6: not UTF-8")


def test_a_value_nested_a_thousand_levels_deep_is_refused(plain: App) -> None:
    write_config(plain, CONFIG + "migrations: " + "[" * 1000 + "]" * 1000 + "\n")
    refused(plain.run("--config", "conveyor.yml", "status", timeout=QUICK), "nested deeper than 32 levels")


def test_config_naming_a_directory_is_refused(plain: App) -> None:
    refused(plain.run("--config", str(plain.repo), "status", timeout=QUICK), "is a directory")


def test_config_naming_dev_zero_is_refused_without_reading_it_all(plain: App) -> None:
    refused(plain.run("--config", "/dev/zero", "status", timeout=QUICK), "/dev/zero: larger than 1024 KB")


def test_a_key_given_twice_names_both_lines(plain: App) -> None:
    write_config(plain, CONFIG.replace("image:", "image: 127.0.0.1:5000/other\nimage:"))
    refused(plain.run("--config", "conveyor.yml", "status", timeout=QUICK),
            "conveyor.yml:3: key 'image' is given twice (lines 2 and 3)")


# --- arguments -----------------------------------------------------------------------------------------


def test_history_limit_beyond_any_database_integer_is_a_usage_error(plain: App) -> None:
    refused(plain.run("history", "--limit", "99999999999999999999", timeout=QUICK), "--limit")
    nothing_recorded(plain)


def test_rollback_to_beyond_any_release_number_is_a_usage_error(plain: App) -> None:
    refused(plain.run("rollback", "staging", "--to", "999999999999999999999", timeout=QUICK), "--to")
    nothing_recorded(plain)


@pytest.mark.parametrize("until, expected", [
    ("99999999999h", "more than 10 years away"),
    ("99999999999999999999999999w", "more than 10 years away"),
    ("9999-12-31T00:00", "more than 10 years away"),
    ("0m", "ends at once"),
    ("0h0m0s", "ends at once"),
    ("2001-01-01T00:00", "in the past"),
    ("30x", "give an ISO time"),
])
def test_lock_until_that_overflows_or_ends_at_once_is_refused(plain: App, until: str, expected: str) -> None:
    refused(plain.run("lock", "staging", "--reason", "x", "--until", until, timeout=QUICK), expected)
    assert not (plain.home / "ledger.db").exists()  # refused before the ledger is even opened


@pytest.mark.parametrize("text, delta", [
    ("1s", timedelta(seconds=1)), ("90s", timedelta(seconds=90)), ("2h30m", timedelta(hours=2, minutes=30)),
    ("1d12h", timedelta(days=1, hours=12)), ("1w", timedelta(weeks=1)), ("2h 30m", timedelta(hours=2, minutes=30)),
])
def test_lock_until_takes_durations_in_any_unit_and_combination(text: str, delta: timedelta) -> None:
    from conveyor.pipeline.blocks import parse_until

    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert parse_until(text, now) == now + delta


def test_lock_until_takes_an_iso_time_with_an_offset() -> None:
    from conveyor.pipeline.blocks import parse_until

    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert parse_until("2026-12-01T15:00+02:00", now) == datetime(2026, 12, 1, 13, tzinfo=UTC)
    with pytest.raises(BadInput, match="in the past"):
        parse_until("2026-12-01T13:00+02:00", now)


def test_lock_help_documents_the_until_forms(plain: App) -> None:
    out = plain.ok("lock", "--help").out
    assert "2h30m" in out and "1w" in out and "90s" in out and "10 years" in out


# --- where the state lives -------------------------------------------------------------------------------


def test_conveyor_home_under_a_regular_file_is_refused(plain: App, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    refused(plain.run("status", timeout=QUICK, CONVEYOR_HOME=str(tmp_path / "a-file" / "home")),
            "CONVEYOR_HOME", "cannot create it: Not a directory")
    refused(plain.run("status", timeout=QUICK, CONVEYOR_HOME=str(tmp_path / "a-file")),
            "CONVEYOR_HOME", "cannot create it")


@pytest.mark.parametrize("home, expected", [
    ("/proc/conveyor", "CONVEYOR_HOME /proc/conveyor: cannot create it"),
    ("/proc", "cannot reach the ledger database sqlite:////proc/ledger.db: unable to open database file (is "
              "CONVEYOR_HOME a writable directory?)"),
])
def test_conveyor_home_in_proc_is_refused(plain: App, home: str, expected: str) -> None:
    refused(plain.run("status", timeout=QUICK, CONVEYOR_HOME=home), expected)


def test_a_corrupt_ledger_is_refused_and_left_alone(plain: App) -> None:
    plain.home.mkdir()
    garbage = bytes(range(256)) * 64
    (plain.home / "ledger.db").write_bytes(garbage)
    refused(plain.run("status", timeout=QUICK), "ledger.db is unusable: file is not a database")
    assert (plain.home / "ledger.db").read_bytes() == garbage


def test_a_ledger_damaged_after_opening_is_refused_at_the_query_that_meets_it(plain: App) -> None:
    import sqlite3

    plain.ok("lock", "staging", "--reason", "before the damage")
    path = plain.home / "ledger.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'blocks'").fetchone()[0]
    data = bytearray(path.read_bytes())
    data[(root - 1) * page_size:root * page_size] = b"\xab" * page_size  # the blocks table's page, not the schema
    path.write_bytes(bytes(data))
    refused(plain.run("status", timeout=QUICK), "ledger.db is unusable: database disk image is malformed")


# --- unlock -------------------------------------------------------------------------------------------------


def test_unlock_under_a_wider_block_says_what_still_blocks(plain: App) -> None:
    plain.ok("lock", "--app-wide", "--reason", "app freeze")
    err = refused(plain.run("unlock", "staging", timeout=QUICK), "no env block on hello/staging to lift",
                  "hello/staging is still blocked", "app freeze", "conveyor unlock --app-wide")
    assert len(err.strip().splitlines()) == 1
    plain.ok("lock", "staging", "--reason", "incident 9")
    lifted = plain.ok("unlock", "staging")
    assert lifted.out.startswith("lifted 1 block(s); hello/staging is still blocked: app hello is blocked by")
    assert "app freeze" in lifted.out and "incident 9" not in lifted.out
    view = plain.ok("unlock", "--app-wide", "--json").json()
    assert view == {"lifted": 1, "still_blocked_by": []}


def test_unlock_with_nothing_to_lift_is_bad_input(plain: App) -> None:
    refused(plain.run("unlock", "staging", timeout=QUICK), "no env block on hello/staging to lift")


# --- git ------------------------------------------------------------------------------------------------


def test_push_refs_passes_a_remote_named_like_an_option_as_a_repository(tmp_path: Path) -> None:
    from conveyor.vcs.git import Repo, push_refs

    work, bare = tmp_path / "work", tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    subprocess.run(["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    subprocess.run(["git", "-C", str(work), "config", "remote.-f.url", str(bare)], check=True)
    push_refs(Repo.discover(work), "-f", ["HEAD:refs/heads/staging"])
    pushed = subprocess.run(["git", "-C", str(bare), "rev-parse", "refs/heads/staging"], capture_output=True)
    assert pushed.returncode == 0


# --- a real release -----------------------------------------------------------------------------------


def test_promote_with_nothing_to_promote_is_bad_input(app: App) -> None:
    refused(app.run("promote"), "staging has no succeeded release to promote")
    assert app.history() == []


def test_an_empty_secret_is_refused_and_a_multiline_reason_stays_on_its_row(app: App) -> None:
    config = app.repo / "conveyor.yml"
    config.write_text(config.read_text().replace("    env:\n      APP_VERSION: staging",
                                                 "    secrets: [DB_PASSWORD]\n    env:\n      APP_VERSION: staging"))
    app.git("commit", "-qam", "staging needs a database password")
    app.ok("build", "HEAD")
    err = refused(app.run("deploy", "staging", "HEAD", DB_PASSWORD=""), "secret DB_PASSWORD set but empty")
    assert "DB_PASSWORD=" not in err
    assert app.history() == []
    app.ok("deploy", "staging", "HEAD", "--reason", "fix login\nsee #12\x1b[2J", DB_PASSWORD="s3cret")
    table = app.ok("history").out.splitlines()
    assert len(table) == 2 and table[1].endswith("fix login\\nsee #12\\x1b[2J")
    assert app.history()[0]["reason"] == "fix login\nsee #12\x1b[2J"  # stored as given; only the table escapes
