"""Signing in to the dashboard with an API token.

The browser keeps an itsdangerous-signed, HTTP-only, SameSite=Lax cookie naming the token (its name and a
fingerprint of its stored hash, so a token revoked and issued again under the same name signs nobody in);
never the token. Every request looks the token up again, so revoking it signs its sessions out and a
change of scopes applies at once. The signing key lives in CONVEYOR_HOME (mode 0600): every replica on the
machine and every restart agrees on it.

Each session carries a random id; the CSRF token every form posts is an HMAC of it, checked on every POST.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

if TYPE_CHECKING:
    from conveyor.ledger.store import Ledger

COOKIE = "conveyor_session"
MAX_AGE = 12 * 3600  # a working day: then sign in again


@dataclass(frozen=True)
class Person:
    """Whoever looks at a page: a signed-in token, or nobody (anonymous read)."""

    name: str | None
    scopes: list[str]
    session_id: str

    @property
    def signed_in(self) -> bool:
        return self.name is not None

    def may(self, scope: str) -> bool:
        from conveyor.pipeline.tokens import allows

        return self.signed_in and allows(self.scopes, scope)


def signing_key(home: Path) -> bytes:
    """The key in CONVEYOR_HOME/server/session.key, made on first use (readable by its owner only)."""
    path = home / "server" / "session.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_hex(32).encode())
    return path.read_bytes()


def fingerprint(token_hash: str) -> str:
    return hashlib.sha256(b"session:" + token_hash.encode()).hexdigest()[:16]


class Sessions:
    def __init__(self, ledger: Ledger, key: bytes) -> None:
        self.ledger = ledger
        self._key = key
        self._serializer = URLSafeTimedSerializer(key, salt="conveyor-dashboard")

    def sign_in(self, presented: str) -> tuple[str, str] | None:
        """(cookie value, token name) for a valid token, or None."""
        from conveyor.pipeline.tokens import authenticate, token_hash

        token = authenticate(self.ledger, presented.strip())
        if token is None:
            return None
        value = {"n": token.name, "f": fingerprint(token_hash(presented.strip())), "s": secrets.token_hex(16)}
        return self._serializer.dumps(value), token.name

    def person(self, cookie: str | None) -> Person:
        anonymous = Person(None, [], "")
        if not cookie:
            return anonymous
        try:
            value: dict[str, Any] = self._serializer.loads(cookie, max_age=MAX_AGE)
        except BadSignature:
            return anonymous
        token = self.ledger.server.token_named(value.get("n", "")) if isinstance(value, dict) else None
        if token is None or fingerprint(token[1]) != value.get("f"):
            return anonymous  # revoked (or issued again) since: signed out
        return Person(token[0].name, token[0].scopes, str(value.get("s", "")))

    def signin_nonce(self) -> tuple[str, str]:
        """(the sign-in cookie's nonce, the check its form posts): there is no session yet to bind to."""
        nonce = secrets.token_hex(16)
        return nonce, self._mac(b"signin:" + nonce.encode())

    def signin_ok(self, nonce: str | None, presented: str | None) -> bool:
        return bool(nonce and presented) and hmac.compare_digest(self._mac(b"signin:" + (nonce or "").encode()),
                                                                 presented or "")

    def _mac(self, message: bytes) -> str:
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def csrf_token(self, person: Person) -> str:
        return self._mac(b"csrf:" + person.session_id.encode())

    def csrf_ok(self, person: Person, presented: str | None) -> bool:
        return bool(person.session_id and presented) and hmac.compare_digest(self.csrf_token(person),
                                                                              presented or "")
