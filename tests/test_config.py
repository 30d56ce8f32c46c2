"""conveyor.yml validation: every problem at once, with file:line and the key path."""

from __future__ import annotations

from pathlib import Path

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
    assert "conveyor.yml:4: tasks[0].command: expected a list" in message
    assert "conveyor.yml:7: environments[0].target.port: expected a whole number" in message
    assert "conveyor.yml:7: environments[0].target.colour: unknown key" in message


def test_broken_yaml_names_line_and_column() -> None:
    message = problems("app: hello\nenvironments:\n  - name: [staging\n")
    assert message.startswith("conveyor.yml:4:1: invalid YAML")


def test_cross_references_name_the_key_path_and_line_at_fault() -> None:
    text = GOOD.replace("require_promotion_from: staging", "require_promotion_from: qa").replace("8002", "8001")
    text = text.replace("    secrets: [DB_PASSWORD]\n", "    secrets: [DB_PASSWORD]\n    tasks: [migrate, seed]\n")
    message = problems(text)
    assert "(top level)" not in message
    assert ("conveyor.yml:13: environments[1].policy.require_promotion_from: unknown environment 'qa' "
            "(this app has: staging, production)") in message
    assert "conveyor.yml:12: environments[1].tasks[1]: unknown task 'seed' (top-level tasks: migrate)" in message
    assert ("conveyor.yml:10: environments[1].target.port: production and staging share port 8001 "
            "(also at line 8, environments[0].target.port)") in message


def test_repeated_environment_and_task_names_name_both_lines() -> None:
    text = GOOD.replace("name: production", "name: staging").replace("{require_promotion_from: staging}", "{}")
    text = text.replace("    command: [migrate]\n", "    command: [migrate]\n  - name: migrate\n    command: [x]\n")
    message = problems(text)
    assert ("conveyor.yml:6: tasks[1].name: task name 'migrate' is used twice (also at line 4, tasks[0].name)"
            in message)
    assert ("conveyor.yml:11: environments[1].name: environment name 'staging' is used twice "
            "(also at line 9, environments[0].name)") in message


def test_image_must_be_a_repository_without_tag() -> None:
    assert "without a tag or digest" in problems(GOOD.replace("5000/hello", "5000/hello:latest"))


def test_unknown_environment_lists_the_known_ones() -> None:
    with pytest.raises(BadInput, match=r"unknown environment 'qa' \(this app has: staging, production\)"):
        parse_config(GOOD).environment("qa")


def test_a_non_mapping_document_is_refused() -> None:
    assert "must be a mapping" in problems("- just\n- a list\n")


# --- untrusted input: bounded, located, never a crash --------------------------------------------------

BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


def test_aliases_that_expand_past_the_bound_are_refused_at_once() -> None:
    assert len(BILLION_LAUGHS) < 1024
    message = problems(BILLION_LAUGHS)
    assert "anchors and aliases expand to 4" in message and "the limit is 20,000" in message


def test_aliases_sharing_settings_between_environments_still_work() -> None:
    text = GOOD.replace("    target: {type: container-host, port: 8001}\n",
                        "    target: {type: container-host, port: 8001}\n    env: &common {LOG: debug}\n")
    text = text.replace("    secrets: [DB_PASSWORD]\n", "    secrets: [DB_PASSWORD]\n    env: *common\n")
    assert parse_config(text).environment("production").env == {"LOG": "debug"}


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    assert "an alias refers to a value that contains it" in problems("a: &a [1, *a]\n")


def test_a_byte_that_is_not_utf8_is_located() -> None:
    message = problems(GOOD.replace("app: hello", "app: h\xe9llo").encode("latin-1"))
    assert message == "conveyor.yml:1:7: not UTF-8 (byte 0xe9); save the file as UTF-8"


def test_bytes_in_utf8_parse_like_text() -> None:
    assert parse_config(GOOD.encode(), "conveyor.yml").app == "hello"


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{a: ", "}")])
def test_values_nested_a_thousand_levels_deep_are_refused(opening: str, closing: str) -> None:
    message = problems("app: " + opening * 1000 + "1" + closing * 1000 + "\n")
    assert message.startswith("conveyor.yml:1:") and "nested deeper than 32 levels" in message


def test_a_config_larger_than_the_bound_is_refused_unread() -> None:
    assert "larger than 1024 KB" in problems(GOOD + "#" * (1024 * 1024) + "\n")


@pytest.mark.parametrize("text, expected", [
    ("app: \x00\n", "conveyor.yml:1: invalid YAML: character 0x0000 is not allowed"),
    ("app: \udcff\n", "conveyor.yml:1: invalid YAML: character 0xdcff is not allowed"),  # text decoded leniently
    ("app: 2026-13-45\n", "conveyor.yml:1:6: invalid YAML: cannot read the value '2026-13-45': month must be"),
    ("a: 1\n---\nb: 2\n", "conveyor.yml:2:1: invalid YAML: expected a single document in the stream"),
    ("app: !!python/object/apply:os.system [true]\n", "conveyor.yml:1:6: invalid YAML: could not determine"),
])
def test_malformed_yaml_is_one_located_line(text: str, expected: str) -> None:
    message = problems(text)
    assert message.startswith(expected) and "\n" not in message


def test_a_key_given_twice_names_both_lines() -> None:
    message = problems(GOOD.replace("image:", "image: registry.example.com/other\nimage:"))
    assert message == "conveyor.yml:3: key 'image' is given twice (lines 2 and 3); keep one"


def test_an_env_var_given_twice_is_refused() -> None:
    block = "    secrets: [DB_PASSWORD]\n    env:\n      A: 1\n      A: 2\n"
    text = GOOD.replace("    secrets: [DB_PASSWORD]\n", block)
    assert problems(text) == "conveyor.yml:14: key 'A' is given twice (lines 13 and 14); keep one"
    inline = GOOD.replace("    secrets: [DB_PASSWORD]\n", "    secrets: [DB_PASSWORD]\n    env: {A: 1, A: 2}\n")
    assert "key 'A' is given twice (twice on line 12)" in problems(inline)


def test_a_secret_listed_twice_or_also_in_env_is_refused() -> None:
    text = GOOD.replace("secrets: [DB_PASSWORD]", "secrets: [DB_PASSWORD, DB_PASSWORD]\n    env: {DB_PASSWORD: x}")
    message = problems(text)
    assert "environments[1].secrets[1]: secret DB_PASSWORD is listed twice" in message
    assert "environments[1].secrets[0]: DB_PASSWORD is both a secret and an env: value" in message


@pytest.mark.parametrize("change, expected", [
    (("app: hello", "app: Hello_World"), "conveyor.yml:1: app: use lowercase letters, digits and '-'"),
    (("port: 8001}", "port: 0}"), "conveyor.yml:8: environments[0].target.port: must be at least 1"),
    (("command: [migrate]", "command: []"), "conveyor.yml:5: tasks[0].command: must not be empty"),
    (("policy: {require_promotion_from: staging}", "policy: 3"),
     "conveyor.yml:12: environments[1].policy: expected a mapping of keys"),
    (("secrets: [DB_PASSWORD]", "secrets: [db-password]"),
     "conveyor.yml:11: environments[1].secrets[0]: not a valid environment variable name"),
    (("app: hello", "app: hello\nbuild: {builder: kaniko}"),
     "conveyor.yml:2: build.builder: must be one of: auto, docker, podman or buildah"),
    (("image: 127.0.0.1:5000/hello", "image: 127.0.0.1:5000/hello:v1"),
     "conveyor.yml:2: image: give the repository only, without a tag or digest"),
])
def test_messages_speak_the_configs_language(change: tuple[str, str], expected: str) -> None:
    message = problems(GOOD.replace(*change))
    assert expected in message
    for pydantic_speak in ("^", "[a-z", "Value error", "Policy", "instance of", "Input should", "pattern"):
        assert pydantic_speak not in message


def test_a_policy_requiring_promotion_from_its_own_environment_is_refused() -> None:
    message = problems(GOOD.replace("require_promotion_from: staging", "require_promotion_from: production"))
    assert ("conveyor.yml:12: environments[1].policy.require_promotion_from: production cannot require promotion "
            "from itself") in message


def test_an_uppercase_image_repository_is_refused() -> None:
    message = problems(GOOD.replace("5000/hello", "5000/Team/hello"))
    assert "conveyor.yml:2: image: 'Team' is not a valid repository name part (OCI repository names are " \
        "lowercase)" in message
    assert parse_config(GOOD.replace("127.0.0.1:5000", "Registry.Example.com")).image.endswith("/hello")


def test_release_refs_false_pushes_nothing_and_true_keeps_the_defaults() -> None:
    assert parse_config(GOOD + "release_refs: false\n").release_refs.enabled is False
    assert parse_config(GOOD + "release_refs: true\n").release_refs == parse_config(GOOD).release_refs


@pytest.mark.parametrize("remote", ["--upload-pack=touch /tmp/pwned", "-q"])
def test_a_release_refs_remote_that_git_would_read_as_an_option_is_refused(remote: str) -> None:
    message = problems(GOOD + f"release_refs: {{remote: '{remote}'}}\n")
    assert "conveyor.yml:13: release_refs.remote: a remote name cannot start with '-'" in message


def test_load_config_refuses_a_directory_and_bounds_what_it_reads(tmp_path: Path) -> None:
    from conveyor.config.loader import load_config

    with pytest.raises(BadInput, match=r"is a directory; --config takes the path of the conveyor.yml file"):
        load_config(tmp_path)
    with pytest.raises(BadInput, match=r"/dev/zero: larger than 1024 KB"):
        load_config(Path("/dev/zero"))


def test_a_target_type_that_is_not_text_is_reported_at_the_type_key() -> None:
    message = problems(GOOD.replace("target: {type: container-host, port: 8001}",
                                    "target:\n      port: 8001\n      type: {a: [1, 2, 3]}"))
    assert ("conveyor.yml:10: environments[0].target.type: expected a text value (choose from container-host, "
            "heroku, kubernetes, ssh-hosts)") in message


def test_a_users_value_in_a_message_is_escaped_onto_one_line() -> None:
    text = GOOD.replace("    secrets: [DB_PASSWORD]\n", '    secrets: [DB_PASSWORD]\n    tasks: ["a\\nb"]\n')
    message = problems(text)
    assert len(message.splitlines()) == 2
    assert message.endswith("environments[1].tasks[0]: unknown task 'a\\nb' (top-level tasks: migrate)")


def test_a_config_broken_wholesale_lists_the_first_twenty_problems() -> None:
    message = problems(GOOD + "".join(f"extra{i}: 1\n" for i in range(30)))
    lines = message.splitlines()
    assert lines[0] == "conveyor.yml: 30 problems in the config:"
    assert len(lines) == 22 and lines[-1] == "  … and 10 more"
