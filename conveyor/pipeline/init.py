"""`conveyor init`: set an app repo up from templates — a commented conveyor.yml and, if asked, the CI
pipeline that runs the same commands a person would.

Everything here is decided from the repo and the caller's choices; asking questions is the CLI's part
(it prompts only on a terminal). What is written is checked with conveyor's own loader before it is
written, so `init` never leaves a config that `deploy` would refuse.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from conveyor.config import CONFIG_NAME
from conveyor.errors import BadInput

if TYPE_CHECKING:
    from conveyor.config.models import AppConfig

DOCKERFILES = ("Dockerfile", "Containerfile")
DEFAULT_ENVIRONMENTS = ("staging", "production")
DEFAULT_PORT = 8000
PLACEHOLDER_REGISTRY = "registry.example.com"
MAIN_BRANCH = "main"  # the branch whose every push builds and deploys to the first stage
PIP_INDEX_VARIABLE = "CONVEYOR_PIP_INDEX"
CI_PATHS = {"circleci": ".circleci/config.yml", "github-actions": ".github/workflows/deploy.yml"}
_EXPOSE = re.compile(r"^\s*EXPOSE\s+(\d+)", re.IGNORECASE | re.MULTILINE)
_GITHUB_REMOTE = re.compile(r"github\.com[:/]([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?$")


@dataclass(frozen=True)
class Dockerfile:
    name: str
    found: bool
    exposed_port: int | None = None


@dataclass(frozen=True)
class Installer:
    """How a CI job installs conveyor: a pip requirement (default: this very version, `conveyor==X`) from
    a package index (default: the URL in $CONVEYOR_PIP_INDEX, a CI variable), since conveyor is not on
    PyPI and a plain `pip install conveyor` resolves to nothing — or to whatever someone else published."""

    requirement: str
    index_url: str | None = None  # None: $CONVEYOR_PIP_INDEX at run time, unless from_spec
    from_spec: bool = False  # --install-from: pip resolves the requirement as given (a URL, a VCS spec)

    def command(self) -> str:
        pip = ["python", "-m", "pip", "install", "--quiet"]
        if self.index_url:
            return shlex.join([*pip, "--index-url", self.index_url, self.requirement])
        if self.from_spec:
            return shlex.join([*pip, self.requirement])
        guard = (f': "${{{PIP_INDEX_VARIABLE}:?set {PIP_INDEX_VARIABLE} to the package index that serves '
                 f'conveyor}}"')
        return f'{guard}\n{shlex.join(pip)} --index-url "${PIP_INDEX_VARIABLE}" {shlex.quote(self.requirement)}'

    @property
    def needs_index_variable(self) -> bool:
        return not self.index_url and not self.from_spec


@dataclass(frozen=True)
class Choices:
    """What the written files say; each value from a flag, an answer, or the default."""

    app: str
    image: str
    environments: tuple[str, ...]
    ports: tuple[int, ...]
    dockerfile: Dockerfile
    ci: str | None = None
    installer: Installer = field(default_factory=lambda: Installer(default_requirement()))
    image_is_placeholder: bool = False
    github_repo: str = "OWNER/NAME"


def conveyor_version() -> str:
    from importlib.metadata import version

    return version("conveyor")


def default_requirement() -> str:
    """This conveyor, pinned: a pipeline runs the version that wrote it until someone changes it."""
    from importlib.metadata import metadata

    return f"{metadata('conveyor')['Name']}=={conveyor_version()}"


def installer(install_from: str | None, index_url: str | None) -> Installer:
    if install_from is not None and not install_from.strip():
        raise BadInput("--install-from: give a pip requirement, e.g. 'conveyor==1.2.0' or a wheel's URL")
    if index_url is not None and not re.match(r"^https?://\S+$", index_url):
        raise BadInput(f"--index-url {index_url!r}: give the index's http(s) URL")
    return Installer(install_from or default_requirement(), index_url, from_spec=install_from is not None)


# ------------------------------------------------------------------------------------- what the repo says


def find_dockerfile(root: Path) -> Dockerfile:
    for name in DOCKERFILES:
        path = root / name
        if path.is_file():
            return Dockerfile(name, True, exposed_port(path.read_text(errors="replace")))
    return Dockerfile(DOCKERFILES[0], False)


def exposed_port(dockerfile: str) -> int | None:
    """The first port an EXPOSE line names (8080 of `EXPOSE 8080/tcp`), when it is a number."""
    found = _EXPOSE.search(dockerfile)
    port = int(found.group(1)) if found else None
    return port if port is not None and 1 <= port <= 65535 else None


def default_app_name(root: Path) -> str:
    """The directory's name in conveyor's name form (lowercase, digits, dashes)."""
    name = re.sub(r"[^a-z0-9]+", "-", root.name.lower()).strip("-")
    return name or "app"


def default_ports(count: int, dockerfile: Dockerfile) -> tuple[int, ...]:
    base = dockerfile.exposed_port or DEFAULT_PORT
    if base + count - 1 > 65535:
        base = DEFAULT_PORT
    return tuple(base + index for index in range(count))


def github_repo(remote_url: str) -> str | None:
    found = _GITHUB_REMOTE.search(remote_url.strip())
    return f"{found.group(1)}/{found.group(2)}" if found else None


def project_root(start: Path) -> Path:
    """The root of the git checkout START is in (conveyor reads conveyor.yml there), else START itself."""
    from conveyor.vcs.git import Repo

    try:
        return Repo.discover(start).path
    except BadInput:
        return start


def origin_github_repo(root: Path) -> str | None:
    from conveyor.vcs.git import Repo

    return github_repo(Repo(root).config_value("remote.origin.url")) if (root / ".git").exists() else None


def paths_written(ci: str | None) -> list[str]:
    return [CONFIG_NAME, *([CI_PATHS[ci]] if ci else [])]


def refuse_existing(root: Path, paths: list[str], *, force: bool) -> None:
    """Before any question is asked: init does not overwrite a file without --force."""
    for path in paths:
        if not force and (root / path).exists():
            raise BadInput(f"{path} already exists; pass --force to overwrite it")


def pipeline_for_existing_config(root: Path, ci: str, chosen_installer: Installer, *,
                                 config_flags: bool) -> list[Written]:
    """`init --ci KIND` in a repo that has its conveyor.yml already: only the pipeline, made for that config
    (its stages, and the secrets it names); the config stays as it is, so flags meant for it are refused."""
    import conveyor.targets.settings  # noqa: F401  (registers each target type's `target:` settings)
    from conveyor.config.loader import load_config

    if config_flags:
        raise BadInput(f"{CONFIG_NAME} already exists: --app, --image, --env and --port apply only when init "
                       "writes it (--force rewrites it)")
    refuse_existing(root, [CI_PATHS[ci]], force=False)
    config = load_config(root / CONFIG_NAME)
    return [Written(CI_PATHS[ci], render_pipeline(ci, config, chosen_installer))]


def choose(root: Path, *, app: str, image: str | None, environments: tuple[str, ...], ports: tuple[int, ...],
           ci: str | None, install_from: str | None, index_url: str | None) -> Choices:
    """The choices from answered values (a missing image is a placeholder; missing ports are counted up from
    the Dockerfile's EXPOSE port), each checked."""
    dockerfile = find_dockerfile(root)
    ports = ports or default_ports(len(environments), dockerfile)
    chosen_image = image or f"{PLACEHOLDER_REGISTRY}/{app}"
    check_choices(app, chosen_image, environments, ports)
    return Choices(app=app, image=chosen_image, environments=environments, ports=ports, dockerfile=dockerfile,
                   ci=ci, installer=installer(install_from, index_url), image_is_placeholder=image is None,
                   github_repo=origin_github_repo(root) or "OWNER/NAME")


# ------------------------------------------------------------------------------------------- checks


def check_choices(app: str, image: str, environments: tuple[str, ...], ports: tuple[int, ...]) -> None:
    """Each flag's value judged on its own, so a mistake names the flag rather than a line of the output."""
    from conveyor.config.base import NAME
    from conveyor.config.models import check_repository

    if not re.match(NAME, app):
        raise BadInput(f"--app {app!r}: use lowercase letters, digits and '-' (not at the start or end)")
    try:
        check_repository(image)
    except ValueError as exc:
        raise BadInput(f"--image {image!r}: {exc}") from None
    if not environments:
        raise BadInput("give at least one --env")
    for name in environments:
        if not re.match(NAME, name):
            raise BadInput(f"--env {name!r}: use lowercase letters, digits and '-' (not at the start or end)")
    repeated = sorted({name for name in environments if environments.count(name) > 1})
    if repeated:
        raise BadInput(f"--env {repeated[0]} is given twice")
    if len(ports) != len(environments):
        raise BadInput(f"{len(ports)} --port for {len(environments)} --env: give one port per environment, in order")
    shared = sorted({port for port in ports if ports.count(port) > 1})
    if shared:
        raise BadInput(f"--port {shared[0]} is given to two environments; each needs its own")


# ------------------------------------------------------------------------------------------- rendering


def render_config(choices: Choices) -> str:
    from conveyor.pipeline.templating import render

    environments = [{"name": name, "port": port, "source": choices.environments[index - 1] if index else None}
                    for index, (name, port) in enumerate(zip(choices.environments, choices.ports, strict=True))]
    return render(
        "conveyor.yml.j2", app=choices.app, image=choices.image, image_is_placeholder=choices.image_is_placeholder,
        version=conveyor_version(), dockerfile=choices.dockerfile.name, dockerfile_found=choices.dockerfile.found,
        exposed_port=choices.dockerfile.exposed_port, environments=environments, first=choices.environments[0],
        second=choices.environments[1] if len(choices.environments) > 1 else None, main_branch=MAIN_BRANCH,
        release_branch=release_branch(), github_repo=choices.github_repo,
    )


def release_branch() -> str:
    """The branch whose merges promote: release_pr's default target, so init and the release PR agree."""
    from conveyor.config.forge import ReleasePR

    return str(ReleasePR.model_fields["target"].default)


def render_pipeline(kind: str, config: AppConfig, installer: Installer) -> str:
    """The CI pipeline of KIND for this config: on every push to main, build and deploy to the first stage;
    on every push to the release branch (a merged release PR), promote exactly that commit's artifact."""
    from conveyor.pipeline.templating import render

    stages = [env.name for env in config.environments]
    return render(
        f"{kind}.yml.j2", version=conveyor_version(), install=installer.command(),
        needs_index_variable=installer.needs_index_variable, index_variable=PIP_INDEX_VARIABLE,
        main_branch=MAIN_BRANCH, release_branch=release_branch(), first=stages[0],
        second=stages[1] if len(stages) > 1 else None, secrets=secret_names(config),
        forge=config.forge.github is not None,
    )


def secret_names(config: AppConfig) -> list[str]:
    """Names of the env vars a CI job must be given for this config (registry credentials, the app's secrets,
    announcement tokens, the forge's token), each once, in a stable order. Names only: the values stay in
    the CI's secret store."""
    names = [config.registry.username_env, config.registry.password_env]
    for env in config.environments:
        names += env.secrets
        if env.registry is not None:
            names += [env.registry.username_env, env.registry.password_env]
    for destination in config.notify.destinations:
        names += destination.secret_envs()
    github = config.forge.github
    if github is not None:
        names += [github.token_env, github.app.private_key_env if github.app else None]
    return sorted({name for name in names if name})


# ------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Written:
    path: str
    text: str


def plan_files(choices: Choices) -> list[Written]:
    """The files init writes, rendered and checked: the config loads with conveyor's own loader."""
    import conveyor.targets.settings  # noqa: F401  (registers each target type's `target:` settings)
    from conveyor.config.loader import parse_config

    text = render_config(choices)
    config = parse_config(text, CONFIG_NAME)
    files = [Written(CONFIG_NAME, text)]
    if choices.ci is not None:
        files.append(Written(CI_PATHS[choices.ci], render_pipeline(choices.ci, config, choices.installer)))
    return files


def write_files(root: Path, files: list[Written], *, force: bool) -> None:
    """Write every file, or none: an existing one is refused (exit 2) unless `force`."""
    if not force:
        for item in files:
            if (root / item.path).exists():
                raise BadInput(f"{item.path} already exists; pass --force to overwrite it")
    for item in files:
        path = root / item.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(item.text)
        except OSError as exc:
            raise BadInput(f"{item.path}: cannot write it: {exc.strerror or type(exc).__name__}") from None
