"""API bearer tokens for devices and integrations: random, shown once, stored as SHA-256.

Tokens are listed by number (never their value) and revoked by number or by user; a revoked
token is refused from the next request on, and the revocation is audited (``token.revoke``)
with the change, whoever revokes (``ebiw token revoke``, the admin page Accounts). A token may
be given a lifetime: once it has expired it is refused (:class:`TokenExpired`, which the web
layer answers 401 naming the cause). Each token records when it was last used, to the minute:
a token used many times a minute costs one write a minute, not one per request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update

from app.db.models import ApiToken
from app.db.session import Database, affected_rows
from app.workflow import audit

ROLES = ("capture", "view", "admin")
TOKEN_PREFIX = "ebiw_"
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""``last_used_at`` is written again only once it is this much older than the use."""


class TokenExpired(Exception):
    """The token is known and not revoked, but past its expiry."""


class TokenError(ValueError):
    """No live token to act on as asked; the message says why (never a token's value)."""


@dataclass(frozen=True)
class Caller:
    """Who is calling, as far as authorization is concerned."""

    user: str
    role: str
    department: str | None = None  # set for accounts limited to one department (OIDC)
    patient: tuple[str, str] | None = None  # (issuer, patient id): launched for one patient

    def may(self, *roles: str) -> bool:
        """Admins may do everything; others only what their role names."""
        return self.role == "admin" or self.role in roles

    def sees(self, patient_id: str, issuer: str) -> bool:
        """Whether this caller may see that patient's data: every patient, unless the session
        was launched from the EMR for one patient (then only that Patient ID and Issuer)."""
        return self.patient is None or self.patient == (issuer, patient_id)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(moment: datetime | None) -> datetime | None:
    """``moment`` with its UTC zone (SQLite gives stored times back naive)."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None \
        else moment


def create_token(db: Database, user: str, role: str,
                 expires_in: timedelta | None = None) -> str:
    """Create a token for ``user`` with ``role``, valid for ``expires_in`` (None: until
    revoked), and return it (the only time it is visible)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not user or len(user) > 128:
        raise ValueError("user must be 1 to 128 characters")
    if expires_in is not None and expires_in <= timedelta(0):
        raise ValueError("the lifetime must be positive")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + expires_in if expires_in is not None else None
    with db.session() as session:
        session.add(ApiToken(token_hash=_digest(token), user=user, role=role,
                             expires_at=expires_at))
    return token


def verify_token(db: Database, token: str) -> Caller | None:
    """The caller a token belongs to, or None when it is unknown or revoked.

    Raises :class:`TokenExpired` for a live token past its expiry. Records the use in
    ``last_used_at`` when the recorded one is older than :data:`LAST_USED_RESOLUTION`.
    """
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    now = datetime.now(UTC)
    with db.session() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _digest(token)))
        if row is None or row.revoked_at is not None:
            return None
        expires_at = _aware(row.expires_at)
        if expires_at is not None and expires_at <= now:
            raise TokenExpired
        last_used = _aware(row.last_used_at)
        if last_used is None or now - last_used >= LAST_USED_RESOLUTION:
            stale = now - LAST_USED_RESOLUTION  # a concurrent request may have written it
            session.execute(update(ApiToken).where(
                ApiToken.id == row.id,
                or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at <= stale))
                .values(last_used_at=now).execution_options(synchronize_session=False))
        return Caller(row.user, row.role)


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token: never its value or hash."""

    id: int
    user: str
    role: str
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None
    last_used_at: datetime | None

    def expired(self, now: datetime) -> bool:
        """Whether the token's lifetime has ended by ``now`` (revoked or not)."""
        return self.expires_at is not None and self.expires_at <= now


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(row.id, row.user, row.role, _aware(row.created_at) or row.created_at,
                     _aware(row.revoked_at), _aware(row.expires_at), _aware(row.last_used_at))


def list_tokens(db: Database) -> list[TokenInfo]:
    """Every token ever created, oldest first (revoked and expired ones included, marked);
    times in UTC."""
    with db.session() as session:
        return [_info(r) for r in session.scalars(select(ApiToken).order_by(ApiToken.id))]


def _find(db: Database, token_id: int) -> TokenInfo | None:
    """The token numbered ``token_id`` (revoked or expired alike), or None when there is none."""
    with db.session() as session:
        row = session.get(ApiToken, token_id)
        return _info(row) if row is not None else None


def _not_live(token_id: int, info: TokenInfo | None) -> TokenError:
    """Why the token numbered ``token_id`` (``info``: as it is now) cannot be revoked."""
    if info is None:
        return TokenError(f"no token is numbered {token_id}")
    return TokenError(f"token {token_id} is already revoked: nothing to do")


def live_token(db: Database, token_id: int) -> TokenInfo:
    """The token :func:`revoke_token` would revoke (live: not revoked; expired or not);
    :class:`TokenError` saying why when there is none. Changes nothing."""
    info = _find(db, token_id)
    if info is None or info.revoked_at is not None:
        raise _not_live(token_id, info)
    return info


def revoke_token(db: Database, token_id: int, *, by: audit.Actor) -> None:
    """Revoke the live token numbered ``token_id`` as :func:`revoke_tokens` does (audited);
    :class:`TokenError` saying why, and nothing changed, when it is unknown or already
    revoked."""
    if not revoke_tokens(db, token_id=token_id, by=by):
        raise _not_live(token_id, _find(db, token_id))


def revoke_tokens(db: Database, *, token_id: int | None = None, user: str | None = None,
                  by: audit.Actor) -> int:
    """Revoke the token numbered ``token_id`` or every token of ``user``; return how many
    were live. Guarantees: from the next request on, a revoked token authenticates nobody;
    when any was live, ``token.revoke`` is audited by ``by`` (entity ``token:<id>`` or
    ``user:<user>``, detail ``revoked``: the count) in the same transaction."""
    if (token_id is None) == (user is None):
        raise ValueError("give a token number or a user")
    where = ApiToken.id == token_id if token_id is not None else ApiToken.user == user
    with db.session() as session:
        result = session.execute(update(ApiToken).where(where, ApiToken.revoked_at.is_(None))
                                 .values(revoked_at=datetime.now(UTC)))
        count = affected_rows(result) or 0
        if count:
            by.record(session, "token.revoke",
                      f"token:{token_id}" if token_id is not None else f"user:{user}",
                      detail={"revoked": count})
        return count
