"""schemathesis against a running `conveyor server`: requests generated from the published OpenAPI document
(/api/openapi.json), valid and invalid; no answer may be a 5xx, and every answer must match the document's
schema for its status code and content type.

Left out of the generated requests: the events stream (it stays open while its operation runs; the stream
is tested in test_server.py) and registering an app (it clones whatever URL it is given; a generated one
can be a host that never answers); both have their own tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.server import ServerProcess

TOKEN_NAME = "schemathesis-admin-token"


@pytest.fixture(scope="module")
def running_server(tmp_path_factory: pytest.TempPathFactory, sample_origin: Path,
                   sample_ports: dict[str, int]) -> Iterator[ServerProcess]:
    from devstack import stop_proxy
    from tests.conftest import _remove_containers, clone_sample_app

    app: Any = clone_sample_app(tmp_path_factory.mktemp("schema"), sample_origin, sample_ports)
    server = ServerProcess.start(app)
    server.tokens["admin"] = server.token(TOKEN_NAME, "admin")
    server.add_app()
    app.ok("deploy", "staging", "v1")  # something to show in status, history and diff
    yield server
    server.stop()
    stop_proxy(app.home)
    _remove_containers("hello")


def test_every_answer_matches_the_published_schema_and_none_is_a_server_error(
        running_server: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{running_server.url}/api/openapi.json")
    schema.config.base_url = running_server.url
    schema = schema.exclude(path="/api/operations/{operation_id}/events").exclude(path="/api/apps", method="POST")
    headers = {"Authorization": f"Bearer {running_server.tokens['admin']}"}
    checked = []
    for found in schema.get_all_operations():
        operation = found.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def answers_by_the_schema(case: Any) -> None:
            response = case.call(headers=headers, timeout=60)
            case.validate_response(response, checks=(not_a_server_error, response_schema_conformance,
                                                     content_type_conformance))

        answers_by_the_schema()
        checked.append(operation.label)
    assert len(checked) >= 20, checked
