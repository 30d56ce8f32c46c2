"""conveyor.yml, modelled. Validation errors carry the key path; config.loader adds file:line."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Field,
    SerializeAsAny,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from conveyor.config.base import ENV_VAR, NAME, Strict
from conveyor.config.forge import CIGate, Forge, ReleasePR, Trigger
from conveyor.config.notify import Notify

REF_PREFIX = r"^[A-Za-z0-9._/-]*$"
# The path of an OCI repository name: lowercase components separated by '/', each joined by '.', '_', '__'
# or dashes (the distribution spec's grammar); the registry host before it may have any case.
OCI_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
Loc = tuple[str | int, ...]


def quoted(value: object) -> str:
    """A user's value inside a one-line message: quoted, control characters escaped, a long one cut short."""
    text = repr(str(value))
    return text if len(text) <= 60 else text[:57] + "…'"


class Problem:
    """One cross-field problem: where it is (a key path under the model that found it), what is wrong, and
    the other place involved when two fields clash (a repeated name, a shared port)."""

    def __init__(self, loc: Loc, message: str, other: Loc | None = None) -> None:
        self.loc, self.message, self.other = loc, message, other


class ConfigProblems(ValueError):
    """Raised by a model validator with located problems; config.loader reports each at its own line."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


def check_repository(value: str) -> str:
    """An image repository without tag or digest, in the distribution spec's grammar."""
    last = value.rsplit("/", 1)[-1]
    if "@" in value or ":" in last:
        raise ValueError("give the repository only, without a tag or digest")
    parts = value.split("/")
    # As in docker's reference grammar: a first part with '.' or ':' (or localhost) is the registry host.
    host = parts[0] if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost") \
        else None
    path = parts[1:] if host else parts
    for part in path:
        if not OCI_PATH_COMPONENT.fullmatch(part):
            hint = " (OCI repository names are lowercase)" if part.lower() != part else ""
            raise ValueError(f"{quoted(part)} is not a valid repository name part{hint}: use lowercase letters, "
                             "digits, and '.', '_' or '-' between them")
    return value


class RegistrySettings(Strict):
    insecure: bool = Field(False, description="Talk plain HTTP to the registry (a local registry).")
    username_env: str | None = Field(None, pattern=ENV_VAR, description="Env var holding the user name.")
    password_env: str | None = Field(None, pattern=ENV_VAR, description="Env var holding the password.")


class EnvironmentRegistry(RegistrySettings):
    """Where an environment pulls its image from, when that is not the registry the artifact is built into:
    conveyor copies the artifact there by digest before the release applies it."""

    image: str = Field(min_length=1, description="The image repository in that registry, e.g. "
                       "registry.prod.example.com/team/app.")

    @field_validator("image")
    @classmethod
    def _image_repository(cls, value: str) -> str:
        return check_repository(value)


class BuildSettings(Strict):
    context: str = "."
    dockerfile: str = "Dockerfile"
    builder: Literal["auto", "docker", "podman", "buildah"] = "auto"
    args: dict[str, str] = Field(default_factory=dict)


class ReleaseRefs(Strict):
    """The git refs conveyor pushes after every succeeded release, through the outbox."""

    remote: str = Field("origin", min_length=1, description="The app's git remote to push to.")
    env_tag: bool = Field(True, description="Move tag ENV to the release's commit.")
    timestamp_tag: bool = Field(True, description="Add tag ENV--YYYY-MM-DD--HH-MM-SS (UTC finish time).")
    env_branch: bool = Field(True, description="Move branch ENV to the release's commit.")
    prefix: str = Field("", pattern=REF_PREFIX, description="Prefix for every ref name, e.g. deploy/.")

    @field_validator("remote")
    @classmethod
    def _remote_is_not_an_option(cls, value: str) -> str:
        # git would read "-x" as an option of `git push`, whatever quoting or argument list is used.
        if value.startswith("-"):
            raise ValueError("a remote name cannot start with '-'")
        if any(ch.isspace() or not ch.isprintable() for ch in value):
            raise ValueError("a remote name cannot contain spaces or control characters")
        return value

    @property
    def enabled(self) -> bool:
        return self.env_tag or self.timestamp_tag or self.env_branch


class Task(Strict):
    name: Annotated[str, Field(pattern=NAME)]
    command: list[str] = Field(min_length=1)
    timeout: float = Field(300, gt=0)


class HealthCheck(Strict):
    path: str = "/"
    timeout: float = Field(30, gt=0, description="Seconds the new container has to become healthy.")
    interval: float = Field(0.2, gt=0)
    expect_status: int = Field(200, ge=100, le=599)


class TargetSettings(Strict):
    """What an environment's `target:` section holds. Each target package defines its own subclass and
    registers it under its type (conveyor.targets.settings); the config knows no target by name."""

    type: str
    health_applies: ClassVar[bool] = True  # whether the environment's `health:` settings mean anything here

    def stable_port(self) -> int | None:
        """A port on this machine the environment serves on, which no other environment may share."""
        return None


DEFAULT_TARGET_TYPE = "container-host"  # a `target:` without `type:`
_TARGET_TYPES: dict[str, type[TargetSettings]] = {}


def register_target(kind: str, model: type[TargetSettings]) -> None:
    _TARGET_TYPES[kind] = model


def target_settings(kind: str) -> type[TargetSettings] | None:
    if not _TARGET_TYPES:
        raise RuntimeError("no target types registered: import conveyor.targets.settings before loading a config")
    return _TARGET_TYPES.get(kind)


def target_types() -> list[str]:
    return list(_TARGET_TYPES)


class Policy(Strict):
    require_promotion_from: str | None = Field(
        None, description="Only promotions from this environment (or a recorded --hotfix) may release here."
    )


class Environment(Strict):
    name: Annotated[str, Field(pattern=NAME)]
    target: SerializeAsAny[TargetSettings]  # the registered model of its type (its own fields serialised too)
    env: dict[str, str] = Field(
        default_factory=dict, description="Env vars for the app's containers (on Kubernetes: set in every "
        "container running the app image).",
    )
    secrets: list[Annotated[str, Field(pattern=ENV_VAR)]] = Field(
        default_factory=list, description="Names of env vars of the conveyor process holding secrets; values "
        "are never stored (on Kubernetes: usable as ${CONVEYOR_SECRET_NAME} in the manifests).",
    )
    health: HealthCheck = Field(
        default_factory=HealthCheck, description="Container-host only; Kubernetes judges readiness by the "
        "pods' own probes.",
    )
    policy: Policy = Field(default_factory=Policy)
    tasks: list[str] | None = Field(None, description="Names of pre-deploy tasks to run (default: all).")
    queue: Literal["fifo", "supersede"] = Field(
        "fifo", description="On `conveyor server`: how waiting deploys to this environment run. fifo: each in "
        "turn; supersede: only the newest of several waiting deploys runs, the others are recorded as superseded.",
    )
    registry: EnvironmentRegistry | None = Field(
        None, description="This environment's own registry: the artifact is copied there by digest first.")

    @field_validator("target", mode="wrap")
    @classmethod
    def _target_by_type(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # Dispatch on `type` ourselves (a missing type still means container-host) so errors name the
        # user's key path (environments[0].target.port), not pydantic's union tag.
        if isinstance(value, dict):
            kind = value.get("type", DEFAULT_TARGET_TYPE)
            model = target_settings(kind) if isinstance(kind, str) else None
            if model is None:
                what = f"unknown target type {quoted(kind)}" if isinstance(kind, str) else "expected a text value"
                raise ConfigProblems([Problem(("type",), f"{what} (choose from {', '.join(target_types())})")])
            return model.model_validate({"type": DEFAULT_TARGET_TYPE, **value})
        return handler(value)

    @model_validator(mode="after")
    def _health_is_container_host_only(self) -> Environment:
        if not self.target.health_applies and "health" in self.model_fields_set:
            raise ValueError(f"health: does not apply to a {self.target.type} target; give the containers a "
                             "readinessProbe")
        return self

    @model_validator(mode="after")
    def _each_variable_once(self) -> Environment:
        # A name in both lists, or a secret listed twice, would be set twice in the container: one silently wins.
        problems = []
        first: dict[str, Loc] = {}
        for index, name in enumerate(self.secrets):
            if name in first:
                problems.append(Problem(("secrets", index), f"secret {name} is listed twice", first[name]))
            elif name in self.env:
                problems.append(Problem(("secrets", index), f"{name} is both a secret and an env: value; "
                                        "keep one", ("env", name)))
            first.setdefault(name, ("secrets", index))
        if problems:
            raise ConfigProblems(problems)
        return self

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not re.match(ENV_VAR, k)]
        if bad:
            raise ValueError(f"not a valid environment variable name: {', '.join(bad)}")
        return value


class AppConfig(Strict):
    app: Annotated[str, Field(pattern=NAME)]
    image: str = Field(min_length=1, description="Image repository, e.g. registry.example.com/team/app.")
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    build: BuildSettings = Field(default_factory=BuildSettings)
    tasks: list[Task] = Field(default_factory=list)
    release_refs: ReleaseRefs = Field(default_factory=ReleaseRefs)
    notify: Notify = Field(default_factory=Notify, description="Where deploys are announced (config/notify.py).")
    migrations: list[str] = Field(
        default_factory=list, description="Paths whose changes `conveyor diff` flags as migrations."
    )
    environments: list[Environment] = Field(min_length=1)
    forge: Forge = Field(default_factory=Forge, description="Where the code is hosted (config/forge.py).")
    ci: CIGate | None = Field(None, description="Only CI-green commits ship (needs forge:).")
    triggers: list[Trigger] = Field(default_factory=list, description="What forge webhooks start (needs forge:).")
    release_pr: ReleasePR | None = Field(None, description="The release pull request (needs forge:).")

    @field_validator("release_refs", mode="before")
    @classmethod
    def _release_refs_switch(cls, value: Any) -> Any:
        # `release_refs: false` reads as "push nothing", `true` as the defaults.
        if value is False:
            return {"env_tag": False, "timestamp_tag": False, "env_branch": False}
        return {} if value is True else value

    @field_validator("image")
    @classmethod
    def _image_repository(cls, value: str) -> str:
        return check_repository(value)

    @model_validator(mode="after")
    def _cross_references(self) -> AppConfig:
        problems = [*self._repeated_names(), *self._unknown_references(), *self._shared_ports(),
                    *self._forge_references()]
        if problems:
            raise ConfigProblems(problems)
        return self

    def _repeated_names(self) -> list[Problem]:
        problems = []
        for field, items, what in (("environments", self.environments, "environment"),
                                   ("tasks", self.tasks, "task")):
            first: dict[str, int] = {}
            for index, item in enumerate(items):
                if item.name in first:
                    problems.append(Problem((field, index, "name"), f"{what} name '{item.name}' is used twice",
                                            (field, first[item.name], "name")))
                first.setdefault(item.name, index)
        return problems

    def _unknown_references(self) -> list[Problem]:
        names = [e.name for e in self.environments]
        task_names = {t.name for t in self.tasks}
        problems = []
        for index, env in enumerate(self.environments):
            source = env.policy.require_promotion_from
            at = ("environments", index, "policy", "require_promotion_from")
            if source == env.name:
                problems.append(Problem(at, f"{env.name} cannot require promotion from itself"))
            elif source is not None and source not in names:
                problems.append(Problem(at, f"unknown environment {quoted(source)} (this app has: {', '.join(names)})"))
            for position, task in enumerate(env.tasks or []):
                if task not in task_names:
                    known = ", ".join(sorted(task_names)) or "no tasks"
                    problems.append(Problem(("environments", index, "tasks", position),
                                            f"unknown task {quoted(task)} (top-level tasks: {known})"))
        return problems

    def _forge_references(self) -> list[Problem]:
        names = [e.name for e in self.environments]
        problems = []
        if self.forge.github is None:
            for field in ("ci", "triggers", "release_pr"):
                if field in self.model_fields_set and getattr(self, field):
                    problems.append(Problem((field,), f"{field}: needs a forge: section (forge: {{github: ...}})"))
        for index, trigger in enumerate(self.triggers):
            if trigger.env not in names:
                key = "deploy" if trigger.deploy else "promote"
                problems.append(Problem(("triggers", index, key), f"unknown environment {quoted(trigger.env)} "
                                        f"(this app has: {', '.join(names)})"))
        if self.release_pr and self.release_pr.stage not in names:
            problems.append(Problem(("release_pr", "stage"), f"unknown environment {quoted(self.release_pr.stage)} "
                                    f"(this app has: {', '.join(names)})"))
        return problems

    def _shared_ports(self) -> list[Problem]:
        problems = []
        first: dict[int, int] = {}
        for index, env in enumerate(self.environments):
            key = env.target.stable_port()
            if key is None:
                continue
            if key in first:
                other = self.environments[first[key]].name
                problems.append(Problem(("environments", index, "target", "port"),
                                        f"{env.name} and {other} share port {key}",
                                        ("environments", first[key], "target", "port")))
            first.setdefault(key, index)
        return problems

    def environment(self, name: str) -> Environment:
        for env in self.environments:
            if env.name == name:
                return env
        from conveyor.errors import BadInput

        known = ", ".join(e.name for e in self.environments)
        raise BadInput(f"unknown environment '{name}' (this app has: {known})")

    def tasks_for(self, env: Environment) -> list[Task]:
        if env.tasks is None:
            return list(self.tasks)
        return [t for t in self.tasks if t.name in env.tasks]
