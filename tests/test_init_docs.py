"""`conveyor init`, `conveyor schema` and `conveyor docs`, through the real CLI on real git repos.

The CI pipelines init writes are judged by check-jsonschema's vendored CircleCI and GitHub Actions
schemas (schemas nobody here wrote); conveyor.yml files by conveyor's own loader and by the published
JSON Schema, read with the `jsonschema` library.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from string import Template

import jsonschema
import pytest
import yaml

from conveyor.config.loader import load_config, parse_config
from conveyor.errors import BadInput
from conveyor.pipeline.identity import identify

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONVEYOR = str(BIN / "conveyor")
PUBLISHED_SCHEMA = REPO_ROOT / "docs" / "schemas" / "conveyor.schema.json"
SAMPLE_CONFIG = REPO_ROOT / "examples" / "hello" / "conveyor.yml.in"
VENDOR_SCHEMA = {"circleci": "vendor.circle-ci", "github-actions": "vendor.github-workflows"}
PIPELINE = {"circleci": ".circleci/config.yml", "github-actions": ".github/workflows/deploy.yml"}


def conveyor(cwd: Path, *args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CONVEYOR_SERVER", "CONVEYOR_ACTOR", "CONVEYOR_ORIGIN")}
    env["CONVEYOR_HOME"] = str(cwd.parent / "home")
    return subprocess.run([CONVEYOR, *args], cwd=cwd, env=env, stdin=stdin, capture_output=True, text=True,
                          timeout=60)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def new_repo(path: Path, dockerfile: str | None = "FROM scratch\nEXPOSE 8080/tcp\n") -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Init Test")
    git(path, "config", "user.email", "init@example.com")
    if dockerfile is not None:
        (path / "Dockerfile").write_text(dockerfile)
    return path


def commit_all(repo: Path, message: str = "change") -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def schema() -> dict:
    return json.loads(PUBLISHED_SCHEMA.read_text())


def schema_errors(document: object) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema())
    return [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(document)]


def installed_version() -> str:
    from importlib.metadata import version

    return version("conveyor")


# ------------------------------------------------------------------------------------------------ init


def test_init_with_flags_writes_a_commented_config_that_loads(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop")
    result = conveyor(repo, "init", "--yes", "--app", "shop", "--image", "registry.acme.test/team/shop",
                      "--env", "staging", "--env", "qa", "--env", "production",
                      "--port", "9101", "--port", "9102", "--port", "9103")
    assert result.returncode == 0, result.stderr
    assert "wrote conveyor.yml" in result.stdout
    text = (repo / "conveyor.yml").read_text()
    config = load_config(repo / "conveyor.yml")
    assert (config.app, config.image) == ("shop", "registry.acme.test/team/shop")
    assert [(e.name, e.target.port) for e in config.environments] == [("staging", 9101), ("qa", 9102),
                                                                        ("production", 9103)]
    assert [e.policy.require_promotion_from for e in config.environments] == [None, "staging", "qa"]
    assert config.build.dockerfile == "Dockerfile"
    # Written from the template: its comments are kept, the commented-out sections too.
    assert "# The stages, in order" in text and "# forge:" in text and "the Dockerfile EXPOSEs 8080" in text
    assert text.count("\n#") >= 20
    assert schema_errors(yaml.safe_load(text)) == []
    assert not (repo / ".circleci").exists() and not (repo / ".github").exists()


def test_init_without_a_terminal_asks_nothing_and_takes_the_defaults(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "My_Service", dockerfile=None)
    (repo / "Containerfile").write_text("FROM scratch\nEXPOSE 7000\nEXPOSE 7001\n")
    result = conveyor(repo, "init")  # stdin is /dev/null: not a terminal, and no --yes
    assert result.returncode == 0, result.stderr
    assert "?" not in result.stdout and "[" not in result.stdout  # no prompt was printed
    config = load_config(repo / "conveyor.yml")
    assert config.app == "my-service"
    assert config.image == "registry.example.com/my-service"
    assert "placeholder" in result.stderr
    assert [(e.name, e.target.port) for e in config.environments] == [("staging", 7000), ("production", 7001)]
    assert config.build.dockerfile == "Containerfile"


def test_init_in_a_subdirectory_writes_at_the_repo_root_and_names_the_github_repo(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop", dockerfile=None)
    git(repo, "remote", "add", "origin", "git@github.com:acme/shop.git")
    (repo / "src").mkdir()
    result = conveyor(repo / "src", "init", "--yes")
    assert result.returncode == 0, result.stderr
    text = (repo / "conveyor.yml").read_text()
    assert "#   github: {repo: acme/shop, token_env: GITHUB_TOKEN}" in text
    assert "No Dockerfile or Containerfile was found" in text
    assert [e.target.port for e in load_config(repo / "conveyor.yml").environments] == [8000, 8001]


def test_init_asks_on_a_terminal(tmp_path: Path) -> None:
    import pty

    repo = new_repo(tmp_path / "shop")
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen([CONVEYOR, "init"], cwd=repo, stdin=secondary, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "CONVEYOR_HOME": str(tmp_path)})
        os.write(primary, b"shop\nregistry.acme.test/shop\nstaging prod\n9301\n9302\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(primary)
        os.close(secondary)
    assert proc.returncode == 0, err
    config = load_config(repo / "conveyor.yml")
    assert config.image == "registry.acme.test/shop"
    assert [(e.name, e.target.port) for e in config.environments] == [("staging", 9301), ("prod", 9302)]


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop")
    (repo / "conveyor.yml").write_text("# mine\n")
    refused = conveyor(repo, "init", "--yes")
    assert refused.returncode == 2
    assert refused.stderr.strip() == "error: conveyor.yml already exists; pass --force to overwrite it"
    assert (repo / "conveyor.yml").read_text() == "# mine\n"

    (repo / "conveyor.yml").unlink()
    (repo / ".github" / "workflows").mkdir(parents=True)
    (repo / ".github" / "workflows" / "deploy.yml").write_text("# mine\n")
    refused = conveyor(repo, "init", "--yes", "--ci", "github-actions")
    assert refused.returncode == 2 and "deploy.yml already exists" in refused.stderr
    assert not (repo / "conveyor.yml").exists()  # nothing written when one file is refused

    forced = conveyor(repo, "init", "--yes", "--ci", "github-actions", "--force")
    assert forced.returncode == 0, forced.stderr
    assert load_config(repo / "conveyor.yml").app == "shop"
    assert "conveyor promote" in (repo / ".github" / "workflows" / "deploy.yml").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--env", "Prod"], "--env 'Prod': use lowercase letters"),
    (["--env", "staging", "--env", "staging", "--port", "1", "--port", "2"], "--env staging is given twice"),
    (["--env", "a", "--port", "9000", "--port", "9001"], "2 --port for 1 --env"),
    (["--port", "9000", "--port", "9000"], "--port 9000 is given to two environments"),
    (["--image", "Registry.test/Shop"], "--image 'Registry.test/Shop': 'Shop' is not a valid repository name part"),
    (["--image", "registry.test/shop:v1"], "give the repository only"),
    (["--app", "-x"], "--app '-x'"),
    (["--ci", "jenkins"], "Invalid value for '--ci'"),
    (["--port", "0"], "Invalid value for '--port'"),
    (["--ci", "circleci", "--index-url", "ftp://x"], "--index-url 'ftp://x': give the index's http(s) URL"),
])
def test_init_bad_flags_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    repo = new_repo(tmp_path / "shop")
    result = conveyor(repo, "init", "--yes", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2 and "Traceback" not in result.stderr
    assert not (repo / "conveyor.yml").exists()


# ------------------------------------------------------------------------------------------ pipelines


def check_jsonschema(kind: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", VENDOR_SCHEMA[kind], str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["circleci", "github-actions"])
@pytest.mark.parametrize("install", [[], ["--index-url", "https://pypi.acme.test/simple"],
                                     ["--install-from", "conveyor @ https://files.acme.test/conveyor-1.0-py3-none-any.whl"]])
def test_each_ci_pipeline_is_valid_and_runs_the_release_flow(tmp_path: Path, kind: str, install: list[str]) -> None:
    repo = new_repo(tmp_path / "shop")
    result = conveyor(repo, "init", "--yes", "--image", "registry.acme.test/shop", "--ci", kind, *install)
    assert result.returncode == 0, result.stderr
    path = repo / PIPELINE[kind]
    checked = check_jsonschema(kind, path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = path.read_text()
    pipeline = yaml.safe_load(text)
    commands = "\n".join(_commands(pipeline))
    sha = "$CIRCLE_SHA1" if kind == "circleci" else "$GITHUB_SHA"
    assert f'conveyor build "{sha}"' in commands
    assert f'conveyor deploy staging "{sha}" --wait' in commands
    assert f'conveyor promote staging production --only "{sha}" --wait' in commands
    assert "CONVEYOR_ACTOR" in text and "CONVEYOR_ORIGIN" in text
    # Installed pinned to the version that wrote it, never a bare `pip install conveyor`.
    if not install:
        assert f"conveyor=={installed_version()}" in commands and '--index-url "$CONVEYOR_PIP_INDEX"' in commands
    elif install[0] == "--index-url":
        assert f"--index-url https://pypi.acme.test/simple conveyor=={installed_version()}" in commands
    else:
        assert "'conveyor @ https://files.acme.test/conveyor-1.0-py3-none-any.whl'" in commands
    assert "pip install conveyor\n" not in commands + "\n"
    assert _branches(kind, pipeline) == {"main", "release"}  # release_pr's default target is the release branch


def test_a_one_stage_pipeline_deploys_and_promotes_nothing(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop")
    for kind in ("circleci", "github-actions"):
        result = conveyor(repo, "init", "--yes", "--env", "live", "--ci", kind, "--force")
        assert result.returncode == 0, result.stderr
        assert check_jsonschema(kind, repo / PIPELINE[kind]).returncode == 0
        commands = "\n".join(_commands(yaml.safe_load((repo / PIPELINE[kind]).read_text())))
        assert "conveyor deploy live" in commands and "promote" not in commands


def test_init_ci_on_a_set_up_app_writes_only_the_pipeline_for_its_config(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop")
    config = (HELLO.replace("registry:\n  insecure: true", "registry:\n  username_env: REG_USER\n"
                            "  password_env: REG_PASSWORD")
              .replace("    env:\n      APP_VERSION: production", "    secrets: [STRIPE_KEY]"))
    (repo / "conveyor.yml").write_text(config)
    for kind in ("github-actions", "circleci"):
        result = conveyor(repo, "init", "--ci", kind)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"wrote {PIPELINE[kind]}\n"
        assert check_jsonschema(kind, repo / PIPELINE[kind]).returncode == 0
    assert (repo / "conveyor.yml").read_text() == config
    workflow = yaml.safe_load((repo / PIPELINE["github-actions"]).read_text())
    for name in ("REG_USER", "REG_PASSWORD", "STRIPE_KEY"):
        assert workflow["env"][name] == "${{ secrets." + name + " }}"
    assert "REG_PASSWORD, REG_USER, STRIPE_KEY" in (repo / PIPELINE["circleci"]).read_text().replace("\n# ", " ")
    refused = conveyor(repo, "init", "--ci", "github-actions")
    assert refused.returncode == 2 and "deploy.yml already exists" in refused.stderr
    refused = conveyor(repo, "init", "--ci", "circleci", "--force", "--image", "x.test/y")
    assert refused.returncode == 0  # --force: init writes both again, from the flags
    refused = conveyor(repo, "init", "--ci", "circleci", "--image", "x.test/z")
    assert refused.returncode == 2 and "apply only when init writes it" in refused.stderr


def test_a_pipeline_for_a_forge_config_may_use_github_as_the_config_asks(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop")
    (repo / "conveyor.yml").write_text(EVERY_SPELLING.replace('"on"', "on"))
    assert conveyor(repo, "init", "--ci", "github-actions").returncode == 0
    path = repo / PIPELINE["github-actions"]
    assert check_jsonschema("github-actions", path).returncode == 0
    workflow = yaml.safe_load(path.read_text())
    assert workflow["permissions"] == {"contents": "write", "deployments": "write", "pull-requests": "write",
                                       "checks": "read", "statuses": "read"}
    assert workflow["env"]["GITHUB_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    assert workflow["env"]["SLACK_TOKEN"] == "${{ secrets.SLACK_TOKEN }}"


def test_check_jsonschema_rejects_a_broken_pipeline(tmp_path: Path) -> None:
    """The validator the pipeline tests rely on can fail: a job without runs-on, a CircleCI job without steps."""
    repo = new_repo(tmp_path / "shop")
    for kind, broken in (("github-actions", lambda p: p["jobs"]["deploy-staging"].pop("runs-on")),
                         ("circleci", lambda p: p["jobs"]["deploy-staging"].pop("steps"))):
        assert conveyor(repo, "init", "--yes", "--ci", kind, "--force").returncode == 0
        path = repo / PIPELINE[kind]
        pipeline = yaml.safe_load(path.read_text())
        broken(pipeline)
        path.write_text(yaml.safe_dump(pipeline))
        assert check_jsonschema(kind, path).returncode != 0


def _commands(pipeline: dict) -> list[str]:
    """Every shell command of a pipeline's steps (GitHub's `run: TEXT`, CircleCI's `run: TEXT | {command}`)."""
    steps = [step for job in pipeline.get("jobs", {}).values() for step in job.get("steps", [])]
    steps += [step for command in pipeline.get("commands", {}).values() for step in command["steps"]]
    runs = [step["run"] for step in steps if isinstance(step, dict) and "run" in step]
    return [run if isinstance(run, str) else run["command"] for run in runs]


def _branches(kind: str, pipeline: dict) -> set[str]:
    if kind == "github-actions":
        return set(pipeline[True]["push"]["branches"])  # PyYAML reads the bare key `on` as true
    jobs = pipeline["workflows"]["deploy"]["jobs"]
    return {next(iter(job.values()))["filters"]["branches"]["only"] for job in jobs}


# --------------------------------------------------------------------------------------------- schema


def test_the_published_schema_is_fresh(tmp_path: Path) -> None:
    result = conveyor(tmp_path, "schema")
    assert result.returncode == 0, result.stderr
    assert result.stdout == PUBLISHED_SCHEMA.read_text(), (
        "docs/schemas/conveyor.schema.json is stale: run `conveyor schema > docs/schemas/conveyor.schema.json`")
    jsonschema.Draft202012Validator.check_schema(json.loads(result.stdout))


def test_the_schema_accepts_the_sample_app_and_inits_output(tmp_path: Path) -> None:
    sample = Template(SAMPLE_CONFIG.read_text()).substitute(REGISTRY="127.0.0.1:5000", STAGING_PORT="9001",
                                                            PRODUCTION_PORT="9002")
    parse_config(sample)
    assert schema_errors(yaml.safe_load(sample)) == []
    repo = new_repo(tmp_path / "shop")
    assert conveyor(repo, "init", "--yes", "--env", "a", "--env", "b", "--env", "c").returncode == 0
    assert schema_errors(yaml.safe_load((repo / "conveyor.yml").read_text())) == []


REMOVE = object()
EVERY_SPELLING = """
app: shop
image: registry.acme.test/shop
release_refs: false
notify:
  - {slack: {channel: "#deploys", token_env: SLACK_TOKEN}}
forge:
  github: {repo: acme/shop, token_env: GITHUB_TOKEN}
ci: {require: [test], timeout: 30m}
triggers:
  - {"on": push, branch: main, deploy: staging}
  - {"on": pull_request_merged, base: release, promote: production}
release_pr: {stage: staging, auto_merge_after: 24h}
environments:
  - name: staging
    target: {port: 9001}
  - name: fleet
    target: {type: ssh-hosts, hosts: [deploy@10.0.0.1], known_hosts: ./known_hosts, port: 9002, parallel: 2}
  - name: production
    target: {type: kubernetes, namespace: shop, manifests: deploy/k8s}
    policy: {require_promotion_from: staging}
    secrets: [DB_PASSWORD]
  - name: heroku
    target: {type: heroku, app: acme-shop}
"""


def test_the_schema_accepts_what_the_loader_accepts_and_rejects_what_it_refuses() -> None:
    parse_config(EVERY_SPELLING)
    document = yaml.safe_load(EVERY_SPELLING)
    assert schema_errors(document) == []
    refused = [
        (("environments", 0, "target", "colour"), "red"),  # an unknown key of container-host
        (("environments", 2, "target", "namespace"), REMOVE),  # kubernetes needs a namespace
        (("environments", 3, "target", "type"), "nomad"),  # no such target type
        (("ci", "timeout"), "soon"),  # not a duration
        (("release_refs",), "yes"),  # neither true/false nor the mapping
    ]
    for path, value in refused:
        broken = json.loads(json.dumps(document))
        *parents, key = path
        node = broken
        for part in parents:
            node = node[part]
        if value is REMOVE:
            node.pop(key)
        else:
            node[key] = value
        assert schema_errors(broken), f"the schema accepted {path}"
        with pytest.raises(BadInput, match="problem"):
            parse_config(yaml.safe_dump(broken))


# ----------------------------------------------------------------------------------------------- docs

HELLO = Template(SAMPLE_CONFIG.read_text()).substitute(REGISTRY="127.0.0.1:5000", STAGING_PORT="9001",
                                                       PRODUCTION_PORT="9002")
BEFORE = "# hello\n\nOur service; `conveyor docs` writes between `<!-- conveyor:docs:start -->` and its end.\n\n"
AFTER = "\n## Licence\n\nMIT\n"


def docs_repo(tmp_path: Path, readme: str | None) -> Path:
    repo = new_repo(tmp_path / "hello")
    (repo / "conveyor.yml").write_text(HELLO)
    if readme is not None:
        (repo / "README.md").write_text(readme)
    commit_all(repo, "hello")
    return repo


def test_docs_writes_between_the_markers_and_leaves_the_rest(tmp_path: Path) -> None:
    markers = "<!-- conveyor:docs:start -->\nold text\n<!-- conveyor:docs:end -->"
    repo = docs_repo(tmp_path, BEFORE + markers + AFTER)
    result = conveyor(repo, "docs")
    assert result.returncode == 0, result.stderr
    readme = (repo / "README.md").read_text()
    assert readme.startswith(BEFORE + "<!-- conveyor:docs:start -->\n## Deploying hello\n")
    assert readme.endswith("<!-- conveyor:docs:end -->" + AFTER)
    section = readme[len(BEFORE):-len(AFTER)]
    assert "old text" not in section
    for expected in ("| 1 | `staging` | container-host (port: 9001) | deploys of any commit | fifo | `migrate` |",
                     "| 2 | `production` | container-host (port: 9002) | promotions from `staging` only",
                     "conveyor deploy staging \"$SHA\"", "conveyor promote staging production --only \"$SHA\"",
                     "conveyor deploy production \"$SHA\" --hotfix --reason", "conveyor rollback production",
                     "conveyor lock production", "CONVEYOR_DATABASE_URL", "tag `ENV`",
                     "`migrate`: `/bin/busybox sh -c 'echo migrating schema for $APP_VERSION'` (at most 5m)"):
        assert expected in section, expected
    assert conveyor(repo, "docs").returncode == 0
    assert (repo / "README.md").read_text() == readme  # deterministic: a second run changes nothing


def test_docs_check_is_fresh_then_stale_after_a_committed_config_change(tmp_path: Path) -> None:
    repo = docs_repo(tmp_path, BEFORE)
    assert conveyor(repo, "docs").returncode == 0
    commit_all(repo, "docs")
    fresh = conveyor(repo, "docs", "--check")
    assert fresh.returncode == 0, fresh.stderr

    # An uncommitted change is not what ships: the section follows HEAD's config.
    (repo / "conveyor.yml").write_text(HELLO.replace("    policy:\n      require_promotion_from: staging\n", ""))
    assert conveyor(repo, "docs", "--check").returncode == 0
    commit_all(repo, "production takes any deploy")
    before = (repo / "README.md").read_text()
    stale = conveyor(repo, "docs", "--check")
    assert stale.returncode == 1
    assert stale.stderr.strip() == "README.md: the deploy section is stale; run `conveyor docs` and commit it"
    assert (repo / "README.md").read_text() == before  # --check writes nothing
    assert conveyor(repo, "docs").returncode == 0
    assert "| 2 | `production` | container-host (port: 9002) | deploys of any commit |" in (
        repo / "README.md").read_text()
    assert conveyor(repo, "docs", "--check").returncode == 0


def test_docs_appends_the_section_with_markers_when_absent(tmp_path: Path) -> None:
    repo = docs_repo(tmp_path, BEFORE.rstrip("\n"))
    assert conveyor(repo, "docs", "--check").returncode == 1
    assert conveyor(repo, "docs").returncode == 0
    readme = (repo / "README.md").read_text()
    assert readme.startswith(BEFORE + "<!-- conveyor:docs:start -->\n")
    assert readme.endswith("<!-- conveyor:docs:end -->\n")

    elsewhere = repo / "docs" / "DEPLOY.md"
    elsewhere.parent.mkdir()
    assert conveyor(repo, "docs", "--readme", "docs/DEPLOY.md").returncode == 0
    assert elsewhere.read_text().startswith("<!-- conveyor:docs:start -->\n## Deploying hello")


@pytest.mark.parametrize("readme", [
    "<!-- conveyor:docs:start -->\nno end\n",
    "<!-- conveyor:docs:end -->\n<!-- conveyor:docs:start -->\n",
    "<!-- conveyor:docs:start -->\n<!-- conveyor:docs:end -->\n<!-- conveyor:docs:start -->\n"
    "<!-- conveyor:docs:end -->\n",
])
def test_docs_refuses_broken_markers(tmp_path: Path, readme: str) -> None:
    repo = docs_repo(tmp_path, readme)
    for args in (["docs"], ["docs", "--check"]):
        result = conveyor(repo, *args)
        assert result.returncode == 2, result.stderr
        assert "fix the markers by hand" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (repo / "README.md").read_text() == readme


def test_docs_describes_the_github_flow_when_configured(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "shop")
    (repo / "conveyor.yml").write_text(EVERY_SPELLING.replace('"on"', "on"))
    commit_all(repo)
    assert conveyor(repo, "docs").returncode == 0, "docs failed"
    readme = (repo / "README.md").read_text()
    for expected in ("Repository: `acme/shop`", "`test` must pass", "up to 30m",
                     "A push to `main` deploys its head to `staging`",
                     "merged into `release` promotes its merge commit to `production`",
                     "the pull request `staging` → `release`, merged 1d after",
                     "kubernetes (namespace: shop, manifests: deploy/k8s)", "Announced to: `slack-deploys`",
                     "conveyor promote staging production --only", "conveyor promote staging fleet\n",
                     "`production` needs these env vars set wherever conveyor runs (their values are never stored "
                     "or printed):\n`DB_PASSWORD`."):
        assert expected in readme, expected
    assert "In git, pushed" not in readme  # release_refs: false


def test_docs_outside_a_repo_or_without_a_config_is_one_line(tmp_path: Path) -> None:
    outside = tmp_path / "nowhere"
    outside.mkdir()
    result = conveyor(outside, "docs")
    assert result.returncode == 2 and "not inside a git repository" in result.stderr
    repo = new_repo(tmp_path / "empty")
    commit_all(repo)
    result = conveyor(repo, "docs", "--check")
    assert result.returncode == 2 and "has no conveyor.yml" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------- identity


def test_conveyor_actor_and_origin_name_who_and_where() -> None:
    github = {"GITHUB_ACTIONS": "true", "GITHUB_ACTOR": "octo", "GITHUB_REPOSITORY": "acme/shop",
              "GITHUB_RUN_ID": "7"}
    assert identify(github).actor == "octo"
    chosen = identify({**github, "CONVEYOR_ACTOR": "release-bot", "CONVEYOR_ORIGIN": "https://ci.acme.test/7"})
    assert (chosen.actor, chosen.origin) == ("release-bot", "https://ci.acme.test/7")
    assert identify({**github, "CONVEYOR_ACTOR": " "}).actor == "octo"  # empty (an unset CI variable) is unset


@pytest.mark.parametrize(("kind", "heading"), [("circleci", "CircleCI (`.circleci/config.yml`):"),
                                              ("github-actions", "GitHub Actions (`.github/workflows/deploy.yml`):")])
def test_the_readmes_ci_examples_are_valid_and_install_as_init_does(tmp_path: Path, kind: str, heading: str) -> None:
    from conveyor.pipeline.init import installer

    readme = (REPO_ROOT / "README.md").read_text()
    assert "pip install conveyor " not in readme and "pip install conveyor\n" not in readme
    example = readme[readme.index(heading):].split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "pipeline.yml"
    path.write_text(example)
    checked = check_jsonschema(kind, path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert installer(None, None).command() in "\n".join(_commands(yaml.safe_load(example))).replace("  ", " ")


# ---------------------------------------------------------------------------------- init, then deploy


def test_what_init_writes_builds_deploys_and_promotes(tmp_path: Path, registry: object,
                                                      engine_env: dict[str, str]) -> None:
    """init's config, with the one edit a local registry needs, ships the sample app through both stages."""
    from devstack import SAMPLE_APP, free_port, stop_proxy
    from tests.e2e import App

    repo = new_repo(tmp_path / "inithello", dockerfile=None)
    shutil.copy(SAMPLE_APP / "Dockerfile", repo / "Dockerfile")
    shutil.copytree(SAMPLE_APP / "www", repo / "www")
    shutil.copy(shutil.which("busybox") or "/bin/busybox", repo / "busybox")
    ports = {"staging": free_port(), "production": free_port()}
    result = conveyor(repo, "init", "--yes", "--image", f"{registry.host}/inithello",  # type: ignore[attr-defined]
                      "--port", str(ports["staging"]), "--port", str(ports["production"]))
    assert result.returncode == 0, result.stderr
    config = repo / "conveyor.yml"
    config.write_text(config.read_text().replace("# registry:\n#   insecure: false", "registry:\n  insecure: true"))
    commit_all(repo, "conveyor init")
    app = App(repo, tmp_path / "home", ports)
    try:
        app.ok("build", "HEAD")
        # As the generated pipelines run it: CONVEYOR_ACTOR and CONVEYOR_ORIGIN set from the CI's variables.
        origin = "https://github.com/acme/inithello/actions/runs/9"
        app.ok("deploy", "staging", "HEAD", CONVEYOR_ACTOR="octocat", CONVEYOR_ORIGIN=origin)
        assert app.serves("staging") == "v1"
        assert (app.history("staging")[0]["actor"], app.history("staging")[0]["origin"]) == ("octocat", origin)
        refused = app.run("deploy", "production", "HEAD")
        assert refused.code == 3, refused.err  # production only takes promotions from staging, as written
        app.ok("promote", "staging", "production")
        assert app.serves("production") == "v1"
    finally:
        stop_proxy(app.home)
        ids = subprocess.run(["podman", "ps", "-aq", "--filter", "label=conveyor.app=inithello"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["podman", "rm", "-f", "-t", "0", *ids], capture_output=True)
