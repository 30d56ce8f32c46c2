"""Session-wide real components: an OCI registry, the podman settings this sandbox needs, PostgreSQL.

Everything is started here by the test set-up; nothing is mocked.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


import conveyor.targets.settings  # noqa: E402, F401  (tests parse configs directly: register the target types)
from devstack import Postgres, Registry, engine_environment  # noqa: E402


@pytest.fixture(scope="session")
def stack_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="conveyor-tests-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def registry(stack_root: Path) -> Iterator[Registry]:
    reg = Registry(stack_root / "registry").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def engine_env(stack_root: Path, registry: Registry) -> Iterator[dict[str, str]]:
    """Point podman and buildah at sandbox config files for the whole session (see devstack)."""
    values = engine_environment(stack_root / "engine", [registry.host])
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield values
    for key, old in saved.items():
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


@pytest.fixture(scope="session")
def postgres_server(stack_root: Path) -> Iterator[Postgres]:
    pg = Postgres(Path(tempfile.mkdtemp(prefix="conveyor-pg-"))).start()
    yield pg
    pg.stop()
    shutil.rmtree(pg.root, ignore_errors=True)


_db_counter = iter(range(1, 1_000_000))


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty ledger database URL on each backend; ledger tests take this to run on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    pg: Postgres = request.getfixturevalue("postgres_server")
    import psycopg

    name = f"t{next(_db_counter)}_{os.getpid()}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/{name}"


# --- the sample app, built once per session, cloned per test -------------------------------------

BROKEN_HEALTH_DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
COPY www /www
CMD ["/bin/busybox", "sh", "-c", "rm /www/index.html; exec /bin/busybox httpd -f -p ${PORT:-8080} -h /www"]
"""
CRASHING_DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
CMD ["/bin/busybox", "sh", "-c", "echo 'fatal: cannot connect to the database' >&2; exit 3"]
"""


@pytest.fixture(scope="session")
def sample_ports() -> dict[str, int]:
    """The stable ports of the sample app's environments, committed in its conveyor.yml (conveyor reads the
    config from the commit it ships). Tests run one at a time and each stops its proxy when it ends, so every
    test serves on these same two ports."""
    from devstack import free_port

    staging = free_port()
    production = free_port()
    while production == staging:
        production = free_port()
    return {"staging": staging, "production": production}


@pytest.fixture(scope="session")
def sample_origin(stack_root: Path, registry: Registry, engine_env: dict[str, str],
                  sample_ports: dict[str, int]) -> Path:
    """The sample app's repo with tags v1, v2, broken (health check fails), crash (exits at start),
    each already built and pushed by `conveyor build`."""
    from devstack import commit_sample_version, git, make_sample_repo

    values = {"REGISTRY": registry.host, "STAGING_PORT": str(sample_ports["staging"]),
              "PRODUCTION_PORT": str(sample_ports["production"])}
    repo = make_sample_repo(stack_root / "origin", values, version="v1")
    git(repo, "tag", "v1")
    commit_sample_version(repo, "v2")
    git(repo, "tag", "v2")
    for tag, dockerfile in (("broken", BROKEN_HEALTH_DOCKERFILE), ("crash", CRASHING_DOCKERFILE)):
        git(repo, "checkout", "-q", "-b", tag, "v2")
        (repo / "Dockerfile").write_text(dockerfile)
        git(repo, "commit", "-q", "-am", f"{tag} variant")
        git(repo, "tag", tag)
    git(repo, "checkout", "-q", "main")
    home = stack_root / "build-home"
    from tests.e2e import App

    builder = App(repo, home, {})
    for tag in ("v1", "v2", "broken", "crash"):
        builder.ok("build", tag)
    return repo


def _remove_containers(app_name: str) -> None:
    import subprocess

    ids = subprocess.run(
        ["podman", "ps", "-aq", "--filter", f"label=conveyor.app={app_name}"], capture_output=True, text=True
    ).stdout.split()
    if ids:
        subprocess.run(["podman", "rm", "-f", "-t", "0", *ids], capture_output=True)


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_app(request: pytest.FixtureRequest, app: object) -> object:
    """The `app` fixture on each ledger backend: for the end-to-end tests where the ledger's behaviour (leases,
    takeover, recovery) is what is tested."""
    if request.param == "postgres":
        pg: Postgres = request.getfixturevalue("postgres_server")
        import psycopg

        name = f"e2e{next(_db_counter)}_{os.getpid()}"
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        app.extra_env["CONVEYOR_DATABASE_URL"] = pg.url.rsplit("/", 1)[0] + "/" + name  # type: ignore[attr-defined]
    return app


@pytest.fixture
def app(tmp_path: Path, sample_origin: Path, sample_ports: dict[str, int]) -> Iterator[object]:
    """A fresh clone of the sample app with its own ledger, proxy and ports; cleaned up afterwards."""
    from devstack import stop_proxy

    the_app = clone_sample_app(tmp_path, sample_origin, sample_ports)
    yield the_app
    stop_proxy(the_app.home)
    _remove_containers("hello")


def clone_sample_app(tmp_path: Path, sample_origin: Path, sample_ports: dict[str, int]) -> object:
    """The sample app cloned into tmp_path, with its own real remote (tmp_path/remote.git) and state dir."""
    import subprocess

    from tests.e2e import App

    repo = tmp_path / "hello"
    subprocess.run(["git", "clone", "-q", str(sample_origin), str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "fetch", "-q", "--tags"], check=True)
    subprocess.run(["git", "-C", str(repo), "config", "user.name", "Sample Dev"], check=True)
    subprocess.run(["git", "-C", str(repo), "config", "user.email", "dev@example.com"], check=True)
    # Each test's own real remote, so the refs conveyor pushes never leak between tests.
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    subprocess.run(["git", "-C", str(repo), "remote", "set-url", "origin", str(remote)], check=True)
    subprocess.run(["git", "-C", str(repo), "push", "-q", "origin", "main", "--tags"], check=True)
    _remove_containers("hello")
    return App(repo, tmp_path / "home", dict(sample_ports))
