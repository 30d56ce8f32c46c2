"""conveyor.yml's heroku target and an environment's own registry: validated with key paths."""

from __future__ import annotations

import pytest

from conveyor.config.loader import parse_config
from conveyor.errors import BadInput

HEROKU = """\
app: hello
image: 127.0.0.1:5000/hello
environments:
  - name: staging
    target: {type: heroku, app: APP}
    tasks: []
  - name: production
    target: {type: container-host, port: 8002}
    registry: {image: REPO, username_env: PROD_USER, password_env: PROD_PASSWORD}
"""


def _parse(app: str = "hello-staging", repo: str = "registry.prod.example.com/team/hello") -> object:
    return parse_config(HEROKU.replace("APP", app).replace("REPO", repo), "conveyor.yml")


def test_heroku_defaults_and_an_environments_registry() -> None:
    config = _parse()
    staging = config.environment("staging")  # type: ignore[attr-defined]
    assert staging.target.process_types == ["web"] and staging.target.token_env == "HEROKU_API_KEY"
    assert staging.target.api_url == "https://api.heroku.com" and staging.target.registry == "registry.heroku.com"
    assert config.environment("production").registry.image == "registry.prod.example.com/team/hello"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("app", "repo", "message"), [
    ("Hello_Staging", "r.example.com/hello", "environments[0].target.app"),
    ("hello-staging", "r.example.com/Hello", "environments[1].registry.image"),
    ("hello-staging", "r.example.com/hello:v1", "without a tag or digest"),
])
def test_bad_heroku_or_registry_settings_are_one_located_line(app: str, repo: str, message: str) -> None:
    with pytest.raises(BadInput) as caught:
        _parse(app, repo)
    assert caught.value.exit_code == 2 and message in caught.value.message
    assert "Traceback" not in caught.value.message


def test_tasks_run_as_one_off_dynos_by_default_on_a_type_of_their_own() -> None:
    staging = _parse().environment("staging")  # type: ignore[attr-defined]
    assert staging.target.tasks_as == "one-off-dynos" and staging.target.task_process_type == "conveyor-task"
    text = HEROKU.replace("APP", "hello-staging").replace("REPO", "r.example.com/hello")
    with pytest.raises(BadInput) as caught:
        parse_config(text.replace("app: hello-staging}", "app: hello-staging, task_process_type: web}"),
                     "conveyor.yml")
    assert "task_process_type 'web' must not be a serving process type" in caught.value.message
    with pytest.raises(BadInput) as caught:
        parse_config(text.replace("app: hello-staging}", "app: hello-staging, tasks_as: release}"), "conveyor.yml")
    assert "environments[0].target.tasks_as" in caught.value.message
