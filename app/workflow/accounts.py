"""Local user accounts and server-side web sessions for the capture app.

Passwords are hashed with Argon2id (OWASP's minimum parameters: 19 MiB, 2 passes, 1 lane; the
parameters travel inside each hash, so raising them later re-hashes at the next login). A web
session is a database row; the browser's cookie holds only a random id, of which the row keeps
the SHA-256. A session ends after ``session_idle_minutes`` without a request, after
``session_lifetime_hours`` in all, or at logout, whichever comes first.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError

from app.db.models import User, WebSession
from app.db.session import Database
from app.settings import Settings
from app.workflow.tokens import ROLES, Caller

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")
TOUCH_EVERY = timedelta(seconds=30)
"""A session's last-seen time is written at most this often (idle timeout precision)."""

_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


class AccountError(ValueError):
    """An account cannot be created as asked; the message says why (no secret in it)."""


@dataclass(frozen=True)
class WebLogin:
    """A live web session: who it is, its CSRF token and when it ends at the latest."""

    caller: Caller
    csrf_token: str
    expires_at: datetime


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes: they were stored as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@cache
def _dummy_hash() -> str:
    """A hash to verify against when the user is unknown, so timing does not tell."""
    return _hasher.hash(secrets.token_urlsafe(16))


def create_user(db: Database, username: str, password: str, role: str) -> None:
    """Create a local account; raise :class:`AccountError` for a bad name, role or password."""
    if not USERNAME.match(username):
        raise AccountError("username must be 1 to 128 letters, digits or . _ @ -")
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise AccountError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    try:
        with db.session() as session:
            session.add(User(username=username, password_hash=_hasher.hash(password),
                             role=role))
    except IntegrityError as exc:
        raise AccountError("this username is taken") from exc


def _authenticate(db: Database, username: str, password: str) -> User | None:
    """The enabled user with this password, or None (same work whether the user exists)."""
    if len(password) > MAX_PASSWORD_LENGTH or not USERNAME.match(username):
        return None
    with db.session() as session:
        user = session.scalar(select(User).where(User.username == username))
        try:
            _hasher.verify(user.password_hash if user else _dummy_hash(), password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None or user.disabled_at is not None:
            return None
        if _hasher.check_needs_rehash(user.password_hash):
            user.password_hash = _hasher.hash(password)
        return user


def login(db: Database, settings: Settings, username: str,
          password: str) -> tuple[str, WebLogin] | None:
    """Check the password and open a new web session: (cookie value, session), or None.

    Every login gets a fresh random id (no session fixation); expired sessions are pruned.
    """
    user = _authenticate(db, username, password)
    if user is None:
        return None
    session_id = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    row = WebSession(id_hash=_digest(session_id), user_id=user.id,
                     csrf_token=secrets.token_urlsafe(32), created_at=now, last_seen_at=now)
    with db.session() as session:
        session.execute(delete(WebSession).where(or_(
            WebSession.created_at < now - timedelta(hours=settings.session_lifetime_hours),
            WebSession.last_seen_at < now - timedelta(minutes=settings.session_idle_minutes))))
        session.add(row)
    return session_id, WebLogin(Caller(user.username, user.role), row.csrf_token,
                                now + timedelta(hours=settings.session_lifetime_hours))


def resume(db: Database, settings: Settings, session_id: str) -> WebLogin | None:
    """The live session a cookie names, or None when unknown, expired or its user disabled.

    Guarantees: an expired session is deleted; a live one has its idle clock restarted.
    """
    if not session_id or len(session_id) > 100:
        return None
    now = datetime.now(UTC)
    with db.session() as session:
        row = session.get(WebSession, _digest(session_id))
        if row is None:
            return None
        expires = _utc(row.created_at) + timedelta(hours=settings.session_lifetime_hours)
        idle_until = _utc(row.last_seen_at) + timedelta(minutes=settings.session_idle_minutes)
        if now >= expires or now >= idle_until or row.user.disabled_at is not None:
            session.delete(row)
            return None
        if now - _utc(row.last_seen_at) >= TOUCH_EVERY:
            row.last_seen_at = now
        return WebLogin(Caller(row.user.username, row.user.role), row.csrf_token, expires)


def logout(db: Database, session_id: str) -> None:
    """End the session the cookie names (nothing happens when there is none)."""
    with db.session() as session:
        session.execute(delete(WebSession).where(WebSession.id_hash == _digest(session_id)))
