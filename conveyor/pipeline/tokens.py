"""API tokens for `conveyor server`: named, scoped, shown once, stored only as a hash.

Scopes: `read`; `operate:APP` (build, deploy, promote, rollback for APP; `operate:*` for every app);
`block` (lock, unlock, freeze, and recovery); `admin` (apps and tokens, and everything else).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import TYPE_CHECKING, Any

from conveyor.errors import BadInput

if TYPE_CHECKING:
    from conveyor.ledger.server_store import Token
    from conveyor.ledger.store import Ledger

TOKEN_PREFIX = "cvy_"
TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_SCOPE = re.compile(r"^(read|block|admin|operate:(\*|[a-z0-9]([a-z0-9-]*[a-z0-9])?))$")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_scopes(scopes: list[str]) -> list[str]:
    if not scopes:
        raise BadInput("a token needs at least one --scope (read, operate:APP, operate:*, block, admin)")
    for scope in scopes:
        if not _SCOPE.fullmatch(scope):
            raise BadInput(f"unknown scope '{scope}': choose from read, operate:APP, operate:*, block, admin")
    return sorted(set(scopes))


def create_token(ledger: Ledger, name: str, scopes: list[str]) -> str:
    """A new token; the caller shows it once: only its hash is kept."""
    if not TOKEN_NAME.fullmatch(name):
        raise BadInput(f"token name '{name}': letters, digits and . _ @ - only, at most 64 (it is the actor)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    ledger.server.add_token(name, token_hash(token), check_scopes(scopes))
    return token


def token_view(token: Token) -> dict[str, Any]:
    """A token as `token list --json` and the API show it: never the token itself."""
    return {"name": token.name, "scopes": token.scopes, "created_at": token.created_at.isoformat(),
            "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None}


def revoke_token(ledger: Ledger, name: str) -> None:
    if not ledger.server.remove_token(name):
        raise BadInput(f"no token named '{name}'")


def authenticate(ledger: Ledger, presented: str) -> Token | None:
    """The token a bearer credential names, or None. Looked up by hash: the database never sees the token."""
    if not presented.startswith(TOKEN_PREFIX) or len(presented) > 200:
        return None
    return ledger.server.token_by_hash(token_hash(presented))


def allows(scopes: list[str], needed: str) -> bool:
    """Whether a token with `scopes` may do what `needed` names: read, block, admin, or operate:APP."""
    if "admin" in scopes:
        return True
    if needed == "read":
        return bool(scopes)  # any valid token may read
    if needed.startswith("operate:"):
        return needed in scopes or "operate:*" in scopes
    return needed in scopes
