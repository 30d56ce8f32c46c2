"""conveyor.yml validation: every problem at once, with file:line and the key path."""

from __future__ import annotations

import pytest

from conveyor.config.loader import config_digest, parse_config
from conveyor.errors import BadInput

GOOD = """\
app: hello
image: 127.0.0.1:5000/hello
tasks:
  - name: migrate
    command: [migrate]
environments:
  - name: staging
    target: {type: container-host, port: 8001}
  - name: production
    target: {type: container-host, port: 8002}
    secrets: [DB_PASSWORD]
    policy: {require_promotion_from: staging}
"""


def problems(text: str) -> str:
    with pytest.raises(BadInput) as caught:
        parse_config(text, "conveyor.yml")
    assert caught.value.exit_code == 2
    return caught.value.message


def test_a_good_config_parses_with_defaults() -> None:
    config = parse_config(GOOD)
    assert [e.name for e in config.environments] == ["staging", "production"]
    production = config.environment("production")
    assert production.policy.require_promotion_from == "staging"
    assert production.health.path == "/" and production.target.init is True
    assert [t.name for t in config.tasks_for(production)] == ["migrate"]
    assert config_digest(config) == config_digest(parse_config(GOOD))
    assert config_digest(config) != config_digest(parse_config(GOOD.replace("8002", "8003")))


def test_unknown_keys_wrong_types_and_missing_fields_all_reported_with_lines() -> None:
    text = GOOD.replace("app: hello\n", "").replace("port: 8001}", "port: high, colour: red}")
    text = text.replace("command: [migrate]", "command: migrate")
    message = problems(text)
    assert "conveyor.yml: 4 problems" in message
    assert "conveyor.yml:1: app: missing required key" in message
    assert "conveyor.yml:4: tasks[0].command: Input should be a valid list" in message
    assert "conveyor.yml:7: environments[0].target.port: Input should be a valid integer" in message
    assert "conveyor.yml:7: environments[0].target.colour: unknown key" in message


def test_broken_yaml_names_line_and_column() -> None:
    message = problems("app: hello\nenvironments:\n  - name: [staging\n")
    assert message.startswith("conveyor.yml:4:1: invalid YAML")


def test_cross_references_are_checked() -> None:
    text = GOOD.replace("require_promotion_from: staging", "require_promotion_from: qa").replace("8002", "8001")
    message = problems(text)
    assert "unknown environment 'qa'" in message
    assert "share a port" in message


def test_image_must_be_a_repository_without_tag() -> None:
    assert "without a tag or digest" in problems(GOOD.replace("5000/hello", "5000/hello:latest"))


def test_unknown_environment_lists_the_known_ones() -> None:
    with pytest.raises(BadInput, match=r"unknown environment 'qa' \(this app has: staging, production\)"):
        parse_config(GOOD).environment("qa")


def test_a_non_mapping_document_is_refused() -> None:
    assert "must be a mapping" in problems("- just\n- a list\n")
