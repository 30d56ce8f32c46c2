"""Everything one command works with: the app's config and repo, the ledger, the registry, the targets.

Each piece is opened on first use, so a command pays only for what it touches.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from conveyor.config import CONFIG_NAME
from conveyor.errors import BadInput
from conveyor.pipeline.config_source import CommitConfig, ConfigSource, OverrideConfig, working_tree_note
from conveyor.pipeline.events import EventSink, Progress, text_sink
from conveyor.pipeline.identity import Identity, identify
from conveyor.settings import conveyor_home
from conveyor.vcs.git import Repo

if TYPE_CHECKING:
    from conveyor.config.models import AppConfig
    from conveyor.config.notify import Destination
    from conveyor.ledger.store import Ledger
    from conveyor.pipeline.redact import Redactor
    from conveyor.registry.client import Registry
    from conveyor.targets.base import Target

Say = Callable[[str], None]


class Workspace:
    """`checkout` is where the app's repo was found (the CLI passes the directory it was started in; nothing
    below the CLI looks at the current directory). `config_override` is an explicit `--config PATH`."""

    def __init__(self, checkout: Path, *, config_override: Path | None = None, say: Say = print,
                 sink: EventSink | None = None, repo: Repo | None = None, identity: Identity | None = None,
                 ledger: Ledger | None = None, notify_defaults: list[Destination] | None = None,
                 on_config: Callable[[AppConfig], None] | None = None) -> None:
        """Progress goes to `sink` as structured events (pipeline/events.py); without one, as text to `say`.

        The server passes the rest: `repo`, its mirror of the app (a bare repository, so no checkout to
        discover), `identity`, the token's name and the request's origin, and `ledger`, its own open ledger
        (this workspace takes a handle on it and leaves it open), and `notify_defaults`, its org-wide
        announcement destinations (pipeline/announce.py adds them to the app's own), and `on_config`, told
        each config this workspace loads (the server remembers the app's stage order from it)."""
        self._checkout = checkout
        self._override = config_override
        self._sink = sink or text_sink(say)
        self._targets: dict[str, Target] = {}
        self._noted: set[str] = set()
        self._shared_ledger = ledger
        self.notify_defaults: list[Destination] = list(notify_defaults or [])
        self._on_config = on_config
        if repo is not None:
            self.__dict__["repo"] = repo
        if identity is not None:
            self.__dict__["identity"] = identity

    def emit(self, event: Progress) -> None:
        """Report progress; configured secret values never reach the user (pipeline/redact.py)."""
        self._sink(replace(event, message=self.redactor.text(event.message), data=self.redactor.value(event.data)))

    def say(self, message: str) -> None:
        """A remark outside any step."""
        self.emit(Progress("note", "info", message))

    @cached_property
    def redactor(self) -> Redactor:
        from conveyor.errors import ConveyorError
        from conveyor.pipeline.redact import Redactor, secret_values

        try:
            config = self.config
        except ConveyorError:
            return Redactor([])  # a config that does not load names no secrets (and its error is the story)
        return Redactor(secret_values(config, os.environ, self.notify_defaults))

    @cached_property
    def repo(self) -> Repo:
        try:
            return Repo.discover(self._checkout)
        except BadInput:
            if self._override is None:
                raise
            return Repo.discover(self._override.parent)  # run from elsewhere, with the app's own config file

    @cached_property
    def config_source(self) -> ConfigSource:
        """Until an operation says which commit it ships (ship()), the checked-out commit's config."""
        if self._override is not None:
            return OverrideConfig(self._override)
        return self._commit_config(self.repo.resolve("HEAD"))

    def ship(self, sha: str) -> None:
        """From now on read the config from `sha`, the commit this operation ships (an explicit --config
        override stays in force, and is recorded)."""
        if self._override is not None:
            return
        current = self.__dict__.get("config_source")
        if isinstance(current, CommitConfig) and current.sha == sha:
            return
        app_before = self.config.app if "config" in self.__dict__ else None
        self.__dict__["config_source"] = self._commit_config(sha)
        for name in ("config", "config_digest", "redactor"):
            self.__dict__.pop(name, None)
        if "registry" in self.__dict__:
            self.__dict__.pop("registry").close()
        if app_before is not None and self.config.app != app_before:
            raise BadInput(f"commit {sha[:12]}'s {CONFIG_NAME} is for app '{self.config.app}', not "
                           f"'{app_before}'")

    def _commit_config(self, sha: str) -> CommitConfig:
        source = CommitConfig(self.repo, sha)
        note = working_tree_note(self.repo, source)
        if note and note not in self._noted:
            self._noted.add(note)
            self._sink(Progress("note", "info", note))  # our own words, no value in them (the redactor needs
            # the config, which is what is being read)
        return source

    @cached_property
    def config(self) -> AppConfig:
        config = self.config_source.load()
        if self._on_config is not None:
            self._on_config(config)
        return config

    @cached_property
    def config_digest(self) -> str:
        from conveyor.config.loader import config_digest

        return config_digest(self.config)

    @cached_property
    def ledger(self) -> Ledger:
        from conveyor.ledger import open_ledger

        ledger = self._shared_ledger.sharing() if self._shared_ledger is not None else open_ledger()
        # Events and release errors never hold a secret's value: of the config in force when they are written.
        ledger.redact = lambda value: self.redactor.value(value)
        return ledger

    @cached_property
    def registry(self) -> Registry:
        from conveyor.registry.client import Registry

        settings = self.config.registry
        return Registry(
            self.config.image, insecure=settings.insecure, username_env=settings.username_env,
            password_env=settings.password_env, say=self.say,
        )

    @cached_property
    def identity(self) -> Identity:
        return identify(os.environ, self.repo.config_value("user.name"), self.repo.config_value("user.email"))

    def target(self, kind: str) -> Target:
        if kind not in self._targets:
            from conveyor.targets import target_for

            self._targets[kind] = target_for(kind, conveyor_home(), self.repo.path)
        return self._targets[kind]

    def close(self) -> None:
        for target in self._targets.values():
            target.close()
        if "ledger" in self.__dict__:
            self.ledger.close()
        if "registry" in self.__dict__:
            self.registry.close()
