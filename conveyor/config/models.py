"""conveyor.yml, modelled. Validation errors carry the key path; config.loader adds file:line."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
ENV_VAR = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegistrySettings(Strict):
    insecure: bool = Field(False, description="Talk plain HTTP to the registry (a local registry).")
    username_env: str | None = Field(None, pattern=ENV_VAR, description="Env var holding the user name.")
    password_env: str | None = Field(None, pattern=ENV_VAR, description="Env var holding the password.")


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
    prefix: str = Field("", pattern=r"^[A-Za-z0-9._/-]*$", description="Prefix for every ref name, e.g. deploy/.")

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


class ContainerHostTarget(Strict):
    type: Literal["container-host"] = "container-host"
    engine: Literal["auto", "podman", "docker"] = "auto"
    port: int = Field(ge=1, le=65535, description="The stable port this environment serves on.")
    bind: str = "127.0.0.1"
    port_env: str = Field("PORT", pattern=ENV_VAR, description="Env var telling the app its port.")
    proxy_admin: str = Field("127.0.0.1:2019", description="Caddy admin address conveyor manages.")
    drain_seconds: float = Field(1.0, ge=0)
    stop_timeout: int = Field(10, ge=0)
    init: bool = Field(True, description="Run an init process as PID 1 so the app stops promptly.")


class Policy(Strict):
    require_promotion_from: str | None = Field(
        None, description="Only promotions from this environment (or a recorded --hotfix) may release here."
    )


class Environment(Strict):
    name: Annotated[str, Field(pattern=NAME)]
    target: ContainerHostTarget
    env: dict[str, str] = Field(default_factory=dict)
    secrets: list[Annotated[str, Field(pattern=ENV_VAR)]] = Field(default_factory=list)
    health: HealthCheck = Field(default_factory=HealthCheck)
    policy: Policy = Field(default_factory=Policy)
    tasks: list[str] | None = Field(None, description="Names of pre-deploy tasks to run (default: all).")

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
    migrations: list[str] = Field(
        default_factory=list, description="Paths whose changes `conveyor diff` flags as migrations."
    )
    environments: list[Environment] = Field(min_length=1)

    @field_validator("image")
    @classmethod
    def _no_tag_or_digest(cls, value: str) -> str:
        last = value.rsplit("/", 1)[-1]
        if "@" in value or ":" in last:
            raise ValueError("give the repository only, without a tag or digest")
        return value

    @model_validator(mode="after")
    def _cross_references(self) -> AppConfig:
        names = [e.name for e in self.environments]
        problems = []
        if len(set(names)) != len(names):
            problems.append(f"environment names repeat: {names}")
        task_names = {t.name for t in self.tasks}
        for env in self.environments:
            source = env.policy.require_promotion_from
            if source is not None and source not in names:
                problems.append(f"{env.name}: policy names unknown environment '{source}'")
            for task in env.tasks or []:
                if task not in task_names:
                    problems.append(f"{env.name}: unknown task '{task}'")
        ports = [e.target.port for e in self.environments]
        if len(set(ports)) != len(ports):
            problems.append(f"environments share a port: {ports}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

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
