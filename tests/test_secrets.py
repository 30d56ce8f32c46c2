"""Configured secret values stay secret: redacted (•••) from the terminal, the ledger and error messages,
task and container output included; and with podman they reach the container as podman secrets, so
`podman inspect` does not show them. Real git, registry, podman, HAProxy and SQLite."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time

from conveyor.pipeline.redact import MASK, Redactor
from conveyor.targets.container_host.engine import Engine
from tests.e2e import App

SECRET = "hunter2-very-secret-value"
TASK_LINE = 'command: ["/bin/busybox", "sh", "-c", "echo migrating schema for $APP_VERSION"]'
LEAKY_TASK_LINE = 'command: ["/bin/busybox", "sh", "-c", "echo the password is $DB_PASSWORD"]'
LEAKY_CRASH_DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
CMD ["/bin/busybox", "sh", "-c", "echo \\"cannot log in with $DB_PASSWORD\\" >&2; exit 3"]
"""


def ship(app: App, message: str) -> None:
    """Commit the test's change in the sample repo and build that commit, as a real user would."""
    app.git("commit", "-qam", message)
    app.ok("build", "HEAD")


def with_secret(app: App, *, leaky_task: bool = False) -> None:
    config = app.repo / "conveyor.yml"
    text = config.read_text().replace("    env:\n      APP_VERSION: staging",
                                      "    secrets: [DB_PASSWORD]\n    env:\n      APP_VERSION: staging")
    if leaky_task:
        assert TASK_LINE in text
        text = text.replace(TASK_LINE, LEAKY_TASK_LINE)
    config.write_text(text)


def assert_nowhere_stored(app: App) -> None:
    """Not in the SQLite file (nor its write-ahead log), not in history or status."""
    ledger_files = list(app.home.glob("ledger.db*"))
    assert ledger_files
    assert all(SECRET.encode() not in f.read_bytes() for f in ledger_files)
    assert SECRET not in app.ok("history", "--json").out + app.ok("status", "--json").out


def event_messages(app: App, step: str) -> list[str]:
    with sqlite3.connect(app.home / "ledger.db") as db:
        return [m for (m,) in db.execute("SELECT message FROM events WHERE step = ? ORDER BY id", (step,))]


def conveyor_podman_secrets() -> list[str]:
    out = subprocess.run(["podman", "secret", "ls", "--format", "{{.Name}}"], capture_output=True, text=True,
                         check=True).stdout
    return [name for name in out.split() if name.startswith("conveyor.")]


def podman_version() -> tuple[int, ...]:
    out = subprocess.run(["podman", "version", "--format", "{{.Client.Version}}"], capture_output=True,
                         text=True, check=True).stdout.strip()
    return tuple(int(part) for part in out.split("-")[0].split(".")[:2])


def serving_container(env: str) -> str:
    ids = subprocess.run(["podman", "ps", "-q", "--filter", "label=conveyor.app=hello", "--filter",
                          f"label=conveyor.env={env}"], capture_output=True, text=True, check=True).stdout.split()
    assert len(ids) == 1, ids
    return ids[0]


def test_short_values_are_not_redacted_and_longer_ones_are_replaced_whole() -> None:
    redactor = Redactor(["abc", "s3cret", "s3cret-and-more"])
    assert redactor.text("abc s3cret-and-more s3cret") == f"abc {MASK} {MASK}"
    assert redactor.value({"k": ["x s3cret", 3], "s3cret": None}) == {"k": [f"x {MASK}", 3], MASK: None}
    assert Redactor([]).text("abc") == "abc"


def test_podman_gets_secrets_by_secret_name_and_docker_by_env_name_never_the_value() -> None:
    common = dict(name="c", labels={}, env={"A": "1"}, secret_names=["DB_PASSWORD"], init=False)
    podman = Engine("podman", "podman").run_args("img", **common, stored_secrets={"DB_PASSWORD": "conveyor.1.ab"})
    assert podman[podman.index("--secret"):][:2] == ["--secret", "conveyor.1.ab,type=env,target=DB_PASSWORD"]
    docker = Engine("docker", "docker").run_args("img", **common)
    assert docker[-3:] == ["-e", "DB_PASSWORD", "img"]


def test_a_task_printing_a_secret_shows_and_stores_only_the_mask(app: App) -> None:
    with_secret(app, leaky_task=True)
    ship(app, "migrate prints the password")
    result = app.ok("deploy", "staging", "HEAD", DB_PASSWORD=SECRET)
    assert SECRET not in result.out + result.err
    assert f"task: the password is {MASK}" in result.err
    assert f"the password is {MASK}" in event_messages(app, "task")
    assert_nowhere_stored(app)

    ran = app.ok("run", "staging", "--", "/bin/busybox", "sh", "-c", "echo $DB_PASSWORD", DB_PASSWORD=SECRET)
    assert ran.out.strip() == MASK


def test_a_failing_container_printing_a_secret_shows_and_stores_only_the_mask(app: App) -> None:
    with_secret(app)
    (app.repo / "Dockerfile").write_text(LEAKY_CRASH_DOCKERFILE)
    ship(app, "a container that prints the password and exits")
    result = app.run("deploy", "staging", "HEAD", DB_PASSWORD=SECRET)
    assert result.code == 1, result
    assert SECRET not in result.out + result.err
    assert f"cannot log in with {MASK}" in result.err  # the container's last lines, in the error message
    assert f"cannot log in with {MASK}" in event_messages(app, "logs")
    assert_nowhere_stored(app)


def test_podman_gets_a_podman_secret_that_lives_as_long_as_its_container(app: App) -> None:
    stale = f"conveyor.{int(time.time()) - 3600}.0123456789ab"  # as a crashed run would leave one
    subprocess.run(["podman", "secret", "create", "--env", stale, "DB_PASSWORD"], check=True, capture_output=True,
                   env={**app.env(), "DB_PASSWORD": "left-behind-value"})
    with_secret(app)
    ship(app, "staging needs the database password")
    app.ok("deploy", "staging", "HEAD", DB_PASSWORD=SECRET)
    container = serving_container("staging")
    inspected, = json.loads(subprocess.run(["podman", "inspect", container], capture_output=True, text=True,
                                           check=True).stdout)
    config = inspected["Config"]
    assert any("type=env,target=DB_PASSWORD" in word for word in config["CreateCommand"])  # a podman secret
    elsewhere = json.dumps({**inspected, "Config": {k: v for k, v in config.items() if k != "Env"}})
    assert SECRET not in elsewhere  # not in the create command, labels, mounts or the secrets list
    if podman_version() >= (5, 3):
        assert SECRET not in json.dumps(config["Env"])  # podman 5.3 masks env secrets in inspect
    else:
        # podman < 5.3 (Debian 12 has 4.3) shows an env secret in Config.Env, as README "Secrets" says.
        assert f"DB_PASSWORD={SECRET}" in config["Env"]
    assert app_sees_secret(container)
    assert stale not in conveyor_podman_secrets()  # a crashed run's leftover, removed
    first_name = serving_name(container)
    assert first_name in secret_owners()  # kept while it serves: `podman exec` needs it

    app.ok("deploy", "staging", "HEAD", DB_PASSWORD=SECRET)  # the next release retires that container
    newer = serving_container("staging")
    assert newer != container and app_sees_secret(newer)
    owners = secret_owners()
    assert serving_name(newer) in owners and first_name not in owners  # the retired one's went with it


def app_sees_secret(container: str) -> bool:
    seen = subprocess.run(["podman", "exec", container, "/bin/busybox", "sh", "-c", "echo $DB_PASSWORD"],
                          capture_output=True, text=True, check=True).stdout
    return seen.strip() == SECRET


def serving_name(container: str) -> str:
    return subprocess.run(["podman", "inspect", "--format", "{{.Name}}", container], capture_output=True,
                          text=True, check=True).stdout.strip()


def secret_owners() -> set[str]:
    names = conveyor_podman_secrets()
    if not names:
        return set()
    out = subprocess.run(["podman", "secret", "inspect", "--format", '{{index .Spec.Labels "conveyor.container"}}',
                          *names], capture_output=True, text=True, check=True).stdout
    assert len(out.split()) == len(names)
    return set(out.split())
