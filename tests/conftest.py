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
