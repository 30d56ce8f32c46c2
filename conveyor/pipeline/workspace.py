"""Everything one command works with: the app's config and repo, the ledger, the registry, the targets.

Each piece is opened on first use, so a command pays only for what it touches.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.pipeline.identity import Identity, identify
from conveyor.settings import conveyor_home
from conveyor.vcs.git import Repo

if TYPE_CHECKING:
    from conveyor.config.models import AppConfig
    from conveyor.ledger.store import Ledger
    from conveyor.pipeline.redact import Redactor
    from conveyor.registry.client import Registry

Say = Callable[[str], None]


class Workspace:
    def __init__(self, config_path: Path | None = None, cwd: Path | None = None, say: Say = print) -> None:
        self._config_path = config_path
        self._cwd = cwd or Path.cwd()
        self._say = say
        self._targets: dict[str, Any] = {}

    def say(self, message: str) -> None:
        """Tell the user; configured secret values never reach the terminal (pipeline/redact.py)."""
        self._say(self.redactor.text(message))

    @cached_property
    def redactor(self) -> Redactor:
        from conveyor.errors import ConveyorError
        from conveyor.pipeline.redact import Redactor, secret_values

        try:
            config = self.config
        except ConveyorError:
            return Redactor([])  # a config that does not load names no secrets (and its error is the story)
        return Redactor(secret_values(config, os.environ))

    @cached_property
    def repo(self) -> Repo:
        start = self._config_path.parent if self._config_path else self._cwd
        return Repo.discover(start)

    @cached_property
    def config_path(self) -> Path:
        from conveyor.config.raw import CONFIG_NAME

        return self._config_path or self.repo.path / CONFIG_NAME

    @cached_property
    def config(self) -> AppConfig:
        from conveyor.config.loader import load_config

        return load_config(self.config_path)

    @cached_property
    def config_digest(self) -> str:
        from conveyor.config.loader import config_digest

        return config_digest(self.config)

    @cached_property
    def ledger(self) -> Ledger:
        from conveyor.ledger import open_ledger

        ledger = open_ledger()
        ledger.redact = self.redactor.value  # events and release errors never hold a secret's value
        return ledger

    @cached_property
    def registry(self) -> Registry:
        from conveyor.registry.client import Registry

        settings = self.config.registry
        return Registry(
            self.config.image, insecure=settings.insecure, username_env=settings.username_env,
            password_env=settings.password_env,
        )

    @cached_property
    def identity(self) -> Identity:
        return identify(os.environ, self.repo.config_value("user.name"), self.repo.config_value("user.email"))

    def target(self, kind: str) -> Any:
        if kind not in self._targets:
            from conveyor.targets import target_for

            self._targets[kind] = target_for(kind, conveyor_home(), self.repo.path)
        return self._targets[kind]

    def close(self) -> None:
        if "ledger" in self.__dict__:
            self.ledger.close()
        if "registry" in self.__dict__:
            self.registry.close()
