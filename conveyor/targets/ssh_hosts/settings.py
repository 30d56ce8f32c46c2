"""The settings an environment's `target: {type: ssh-hosts, …}` takes, registered under that type."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from conveyor.config.models import ENV_VAR, TargetSettings, register_target

TARGET_TYPE = "ssh-hosts"
# user@host:port, user and port optional; a host is a name or an IPv4 address (or [IPv6]).
HOST = re.compile(r"(?:(?P<user>[A-Za-z_][A-Za-z0-9_.-]*)@)?(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])"
                  r"(?::(?P<port>[0-9]{1,5}))?")
PARALLEL = re.compile(r"[1-9][0-9]*%?")


class SSHHostsTarget(TargetSettings):
    type: Literal["ssh-hosts"] = "ssh-hosts"
    hosts: list[str] = Field(min_length=1, description="user@host:port of every host of the environment.")
    known_hosts: str = Field(description="The known_hosts file every host's key is verified against "
                                         "(relative to the repo root, or absolute).")
    identity_env: str | None = Field(None, pattern=ENV_VAR,
                                     description="Env var holding the private key; else the ssh agent.")
    parallel: str = Field("1", description="Hosts deployed at once: a number, or a percentage of the hosts.")
    connect_timeout: float = Field(10, gt=0, description="Seconds a host has to answer before it is down.")
    state_dir: str = Field(".conveyor", min_length=1, pattern=r"^[^\s,'\\]+$",
                           description="Where each host keeps its HAProxy and deploy records (relative to the "
                                       "login's home, or absolute).")
    engine: Literal["auto", "podman", "docker"] = "auto"
    port: int = Field(ge=1, le=65535, description="The port every host's proxy serves on.")
    bind: str = "0.0.0.0"
    port_env: str = Field("PORT", pattern=ENV_VAR, description="Env var telling the app its port.")
    drain_seconds: float = Field(1.0, ge=0)
    stop_timeout: int = Field(10, ge=0)
    init: bool = Field(True, description="Run an init process as PID 1 so the app stops promptly.")
    min_free_mb: int = Field(500, ge=0, description="Free disk space every host's engine storage needs.")

    @field_validator("hosts")
    @classmethod
    def _hosts_are_addresses(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            match = HOST.fullmatch(host)
            if match is None or (match["port"] and not 1 <= int(match["port"]) <= 65535):
                raise ValueError(f"'{host}' is not user@host:port")
        if len(set(hosts)) != len(hosts):
            raise ValueError("a host is listed twice")
        return hosts

    @field_validator("parallel", mode="before")
    @classmethod
    def _parallel_is_count_or_percentage(cls, value: object) -> str:
        text = str(value).strip()
        if not PARALLEL.fullmatch(text) or (text.endswith("%") and int(text[:-1]) > 100):
            raise ValueError("expected a number of hosts (1, 2, …) or a percentage (1% to 100%)")
        return text


register_target(TARGET_TYPE, SSHHostsTarget)
