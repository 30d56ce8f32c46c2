"""The settings an environment's `target: {type: container-host, …}` takes, registered under that type."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from conveyor.config.models import ENV_VAR, TargetSettings, register_target

TARGET_TYPE = "container-host"


class ContainerHostTarget(TargetSettings):
    type: Literal["container-host"] = "container-host"
    engine: Literal["auto", "podman", "docker"] = "auto"
    port: int = Field(ge=1, le=65535, description="The stable port this environment serves on.")
    bind: str = "127.0.0.1"
    port_env: str = Field("PORT", pattern=ENV_VAR, description="Env var telling the app its port.")
    drain_seconds: float = Field(1.0, ge=0)
    stop_timeout: int = Field(10, ge=0)
    init: bool = Field(True, description="Run an init process as PID 1 so the app stops promptly.")

    def stable_port(self) -> int | None:
        return self.port


register_target(TARGET_TYPE, ContainerHostTarget)
