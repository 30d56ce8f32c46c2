"""Where the code is hosted: the forge interface (base.py) and its GitHub adapter (github.py).

`forge_for(config, environ)` is the one way the pipeline gets a forge: None when conveyor.yml has no
`forge:`; the credentials are read from the env vars the config names, never from the config itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from conveyor.errors import ForgeRefused

if TYPE_CHECKING:
    from conveyor.config.forge import GitHub as GitHubSettings
    from conveyor.config.models import AppConfig
    from conveyor.forge.base import Forge

Say = Callable[[str], None]


def forge_for(config: AppConfig, environ: Mapping[str, str], say: Say | None = None) -> Forge | None:
    """The app's forge, or None when none is configured. One client per repository and credentials a
    process, so an App's installation token and the connection are reused. `say` hears rate-limit waits."""
    settings = config.forge.github
    return github_for(settings, environ, say) if settings is not None else None


def github_for(settings: GitHubSettings, environ: Mapping[str, str], say: Say | None = None) -> Forge:
    """The GitHub repository `settings` name (also from settings frozen in an outbox item)."""
    from conveyor.forge.github import AppAuth, GitHub, TokenAuth, cached_client, credentials_key

    auth: TokenAuth | AppAuth
    if settings.app is not None:
        pem = _secret(environ, settings.app.private_key_env, "forge.github.app.private_key_env")
        key = credentials_key(settings.api_url, settings.repo, settings.app.id, settings.app.installation_id, pem)
        auth = AppAuth(settings.app.id, settings.app.installation_id, pem, settings.app.private_key_env)
    else:
        assert settings.token_env is not None  # the config model demands one of the two
        token = _secret(environ, settings.token_env, "forge.github.token_env")
        key = credentials_key(settings.api_url, settings.repo, token)
        auth = TokenAuth(token)
    client = cached_client(key, lambda: GitHub(settings.repo, auth, api_url=settings.api_url))
    if say is not None:
        client.say = say
    return client


def _secret(environ: Mapping[str, str], name: str, setting: str) -> str:
    value = environ.get(name, "")
    if not value.strip():
        raise ForgeRefused(f"env var {name} is not set in conveyor's environment ({setting} names it)")
    return value
