"""API bearer tokens for devices and integrations: random, shown once, stored as SHA-256."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from app.db.models import ApiToken
from app.db.session import Database

ROLES = ("capture", "view", "admin")
TOKEN_PREFIX = "ebiw_"


@dataclass(frozen=True)
class Caller:
    """Who is calling, as far as authorization is concerned."""

    user: str
    role: str

    def may(self, *roles: str) -> bool:
        """Admins may do everything; others only what their role names."""
        return self.role == "admin" or self.role in roles


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(db: Database, user: str, role: str) -> str:
    """Create a token for ``user`` with ``role`` and return it (the only time it is visible)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not user or len(user) > 128:
        raise ValueError("user must be 1 to 128 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.session() as session:
        session.add(ApiToken(token_hash=_digest(token), user=user, role=role))
    return token


def verify_token(db: Database, token: str) -> Caller | None:
    """The caller a token belongs to, or None when it is unknown or revoked."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    with db.session() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _digest(token)))
        if row is None or row.revoked_at is not None:
            return None
        return Caller(row.user, row.role)
