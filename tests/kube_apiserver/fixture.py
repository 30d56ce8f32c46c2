"""The `kube_api` pytest fixture: a fresh test API server per test, its kubeconfig, and test controls.

Use it from a test module with `pytest_plugins = ["tests.kube_apiserver.fixture"]` (or list it in the root
conftest). Each test gets a fresh, empty cluster:

    def test_rollout(kube_api):
        kube_api.behave("registry.local/web", "crashloop")
        config.load_kube_config(config_file=str(kube_api.kubeconfig_path))
        ...
        kube_api.wait_for(lambda: kube_api.get("Deployment", "web")["status"].get("observedGeneration"))

The KubeApi class lives in cluster.py so tests can import it without importing this plugin module early.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import KubeApi

__all__ = ["KubeApi", "kube_api"]


@pytest.fixture
def kube_api(tmp_path: Path) -> Iterator[KubeApi]:
    api = KubeApi(tmp_path)
    try:
        yield api
    finally:
        api.close()
    if api.controllers.errors:  # a bug in the test server must not pass silently
        raise AssertionError("kube_api controllers failed:\n" + "\n".join(api.controllers.errors[:3]))
