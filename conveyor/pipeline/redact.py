"""Keep configured secret values out of everything conveyor prints or stores.

The values are those of the env vars the config's `secrets:` lists name (every environment's: a value
hidden one environment too many costs nothing), and those `notify:` destinations name (tokens, secrets).
The Workspace applies one Redactor where text leaves conveyor: `Workspace.say` (the terminal), the ledger's
events, release errors and outbox payloads, and the CLI's error line.

A value shorter than MIN_LENGTH characters is not redacted: hiding every "a" or "42" would garble all
output while protecting nothing (such a value can be guessed). Only the exact value is found: a secret
split across lines or encoded (base64, URL-quoted) by the app passes through.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.config.models import AppConfig

MASK = "•••"
MIN_LENGTH = 4


class Redactor:
    def __init__(self, values: Iterable[str]) -> None:
        # Longest first, so a value containing another is replaced whole.
        kept = sorted({value for value in values if len(value) >= MIN_LENGTH}, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(value) for value in kept)) if kept else None

    def text(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern else text

    def value(self, value: Any) -> Any:
        """Strings anywhere inside JSON-shaped data (dicts, lists), keys included."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(key): self.value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return value


def secret_values(config: AppConfig, environ: Mapping[str, str], more_destinations: Iterable[Any] = ()) -> list[str]:
    """The values, set in conveyor's environment, of every secret any environment of the config names, and
    of the forge's token, App key and webhook secret, and of the announcement destinations' tokens, webhook
    URLs and signing secrets (the app's own and `more_destinations`: a server's org-wide defaults)."""
    names = {name for env in config.environments for name in env.secrets}
    destinations = [*config.notify.destinations, *more_destinations]
    names |= {name for destination in destinations for name in destination.secret_envs()}
    if config.forge.github is not None:
        names |= set(config.forge.github.secret_envs())
    return [environ[name] for name in sorted(names) if environ.get(name)]
