"""Local user accounts and server-side web sessions for the capture app.

Passwords are hashed with Argon2id (OWASP's minimum parameters: 19 MiB, 2 passes, 1 lane; the
parameters travel inside each hash, so raising them later re-hashes at the next login). A web
session is a database row; the browser's cookie holds only a random id, of which the row keeps
the SHA-256. A session ends after ``session_idle_minutes`` without a request, after
``session_lifetime_hours`` in all, or at logout, whichever comes first.

After ``login_max_failures`` failed logins in a row a username is locked for
``login_lockout_minutes``: every login is refused, right password or not, and unknown
usernames lock alike, so a lock tells nothing about whether an account exists. Accounts signed
in through OpenID Connect (:func:`external_login`) have no password; their role comes from the
identity provider at every sign-in.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import ExternalIdentity, LaunchContext, LoginThrottle, User, WebSession, as_utc
from app.db.session import Database, affected_rows
from app.settings import Settings
from app.workflow import audit
from app.workflow.tokens import ROLES, Caller

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")
TOUCH_EVERY = timedelta(seconds=30)
"""A session's last-seen time is written at most this often (idle timeout precision)."""

_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


class AccountError(ValueError):
    """An account cannot be created or changed as asked; the message says why (no secret)."""


class AccountLocked(Exception):
    """Too many failed logins for this username: refused for ``retry_after`` more seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many failed logins")
        self.retry_after = retry_after


@dataclass(frozen=True)
class WebLogin:
    """A live web session: who it is, its CSRF token and when it ends at the latest."""

    caller: Caller
    csrf_token: str
    expires_at: datetime


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


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
    _check_password(password)
    try:
        with db.session() as session:
            session.add(User(username=username, password_hash=_hasher.hash(password),
                             role=role))
    except IntegrityError as exc:
        raise AccountError("this username is taken") from exc


def _check_password(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise AccountError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")


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
    Raises :class:`AccountLocked` while the username is locked (the password is not even
    checked then); a failure counts towards the lock, a success clears the count.
    """
    if settings.login_max_failures and USERNAME.match(username):
        _refuse_if_locked(db, username)
    user = _authenticate(db, username, password)
    if user is None:
        if settings.login_max_failures and USERNAME.match(username):
            _record_failure(db, settings, username)
        return None
    if settings.login_max_failures:
        with db.session() as session:
            session.execute(delete(LoginThrottle).where(LoginThrottle.username == username))
    return _open_session(db, settings, user, None)


def _open_session(db: Database, settings: Settings, user: User,
                  department: str | None) -> tuple[str, WebLogin]:
    """A new web session for ``user``: (cookie value, session); expired sessions are pruned."""
    session_id = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    row = WebSession(id_hash=_digest(session_id), user_id=user.id,
                     csrf_token=secrets.token_urlsafe(32), created_at=now, last_seen_at=now)
    with db.session() as session:
        session.execute(delete(WebSession).where(or_(
            WebSession.created_at < now - timedelta(hours=settings.session_lifetime_hours),
            WebSession.last_seen_at < now - timedelta(minutes=settings.session_idle_minutes))))
        session.add(row)
    return session_id, WebLogin(Caller(user.username, user.role, department), row.csrf_token,
                                now + timedelta(hours=settings.session_lifetime_hours))


def _refuse_if_locked(db: Database, username: str) -> None:
    """Raise :class:`AccountLocked` while ``username`` is locked."""
    with db.session() as session:
        until = session.scalar(select(LoginThrottle.locked_until)
                               .where(LoginThrottle.username == username))
    if until is not None:
        left = (as_utc(until) - datetime.now(UTC)).total_seconds()
        if left > 0:
            raise AccountLocked(max(1, int(left) + 1))


def _record_failure(db: Database, settings: Settings, username: str) -> None:
    """Count a failed login; lock the username when the count reaches the limit.

    Guarantees: concurrent failures in several workers are all counted (each is one atomic
    UPDATE, or the INSERT of the first row); failures older than the lockout period are
    forgotten.
    """
    now = datetime.now(UTC)
    window = timedelta(minutes=settings.login_lockout_minutes)
    row = LoginThrottle.__table__.c
    for _attempt in range(3):
        try:
            with db.session() as session:
                counted = affected_rows(session.execute(
                    update(LoginThrottle).where(row.username == username,
                                                row.last_failure_at >= now - window)
                    .values(failures=row.failures + 1, last_failure_at=now)))
                if not counted:
                    counted = affected_rows(session.execute(
                        update(LoginThrottle).where(row.username == username)
                        .values(failures=1, last_failure_at=now)))
                if not counted:
                    session.execute(insert(LoginThrottle).values(
                        username=username, failures=1, last_failure_at=now))
                session.execute(
                    update(LoginThrottle).where(row.username == username,
                                                row.failures >= settings.login_max_failures)
                    .values(failures=0, locked_until=now + window))
                session.execute(delete(LoginThrottle).where(
                    row.last_failure_at < now - window,
                    or_(row.locked_until.is_(None), row.locked_until < now)))
            return
        except IntegrityError:  # another worker inserted the first row: count again
            continue


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
        expires = as_utc(row.created_at) + timedelta(hours=settings.session_lifetime_hours)
        idle_until = as_utc(row.last_seen_at) + timedelta(minutes=settings.session_idle_minutes)
        if now >= expires or now >= idle_until or row.user.disabled_at is not None:
            session.delete(row)
            return None
        if now - as_utc(row.last_seen_at) >= TOUCH_EVERY:
            row.last_seen_at = now
        department = session.scalar(select(ExternalIdentity.department)
                                    .where(ExternalIdentity.user_id == row.user_id))
        launched = session.execute(select(LaunchContext.issuer, LaunchContext.patient_id)
                                   .where(LaunchContext.session_hash == row.id_hash)).first()
        return WebLogin(Caller(row.user.username, row.user.role, department,
                               (launched.issuer, launched.patient_id) if launched else None),
                        row.csrf_token, expires)


def logout(db: Database, session_id: str) -> None:
    """End the session the cookie names (nothing happens when there is none)."""
    with db.session() as session:
        session.execute(delete(WebSession).where(WebSession.id_hash == _digest(session_id)))


# --- administration (``ebiw user ...``, the admin page Accounts) ------------------------------


@dataclass(frozen=True)
class UserInfo:
    """What ``ebiw user list`` and the Accounts page show about an account (never a hash)."""

    username: str
    role: str
    kind: str  # "local" (password) or "oidc"
    created_at: datetime
    disabled: bool
    locked_until: datetime | None


def _user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise AccountError(f"no such user: {username}")
    return user


def set_password(db: Database, username: str, password: str) -> None:
    """Give a local account a new password.

    Guarantees: the account's open sessions end and its lock is lifted; an OIDC account
    (no password) or a bad password raises :class:`AccountError` and changes nothing.
    """
    _check_password(password)
    hashed = _hasher.hash(password)
    with db.session() as session:
        user = _user(session, username)
        if session.scalar(select(ExternalIdentity.id)
                          .where(ExternalIdentity.user_id == user.id)) is not None:
            raise AccountError("this account signs in through OpenID Connect (no password)")
        user.password_hash = hashed
        session.execute(delete(WebSession).where(WebSession.user_id == user.id))
        session.execute(delete(LoginThrottle).where(LoginThrottle.username == username))


def set_disabled(db: Database, username: str, disabled: bool, *, by: audit.Actor) -> bool:
    """Disable (ending every open session at once) or enable an account; whether its state
    changed.

    Guarantees: audited by ``by`` as ``user.disable`` or ``user.enable`` (detail
    ``was_disabled``, and for a disable ``sessions_ended``) in the same transaction; an
    unknown username, or ``by`` disabling their own account, raises :class:`AccountError` and
    changes nothing. API tokens are not revoked (:func:`app.workflow.tokens.revoke_tokens`).
    """
    if disabled:
        _refuse_own(username, by)
    with db.session() as session:
        user = _user(session, username)
        was_disabled = user.disabled_at is not None
        detail: dict[str, object] = {"was_disabled": was_disabled}
        if disabled:
            user.disabled_at = user.disabled_at or datetime.now(UTC)
            detail["sessions_ended"] = affected_rows(session.execute(
                delete(WebSession).where(WebSession.user_id == user.id))) or 0
        else:
            user.disabled_at = None
        by.record(session, "user.disable" if disabled else "user.enable", f"user:{username}",
                  detail=detail)
        return was_disabled != disabled


def _refuse_own(username: str, by: audit.Actor) -> None:
    """Raise :class:`AccountError` when ``by`` would disable their own account (an admin
    locking themselves out; on a phone at night there may be no other)."""
    if by.name == username:
        raise AccountError("you cannot disable your own account: ask another administrator")


def plan_disable(db: Database, username: str, *, by: audit.Actor) -> UserInfo:
    """The account :func:`set_disabled` would disable for ``by``, checked as it checks it
    (:class:`AccountError` for an unknown name or ``by``'s own account), or already disabled
    (:class:`AccountError` too: nothing to do); changes nothing."""
    _refuse_own(username, by)
    info = find_user(db, username)
    if info.disabled:
        raise AccountError(f"{username} is already disabled: nothing to do")
    return info


def unlock(db: Database, username: str, *, by: audit.Actor) -> bool:
    """Lift a lockout and forget failed logins; whether there was anything to forget.

    Guarantees: audited by ``by`` as ``user.unlock`` (detail ``was_locked``) in the same
    transaction, whether or not the username belongs to an account (unknown names lock too).
    """
    with db.session() as session:
        found = bool(affected_rows(session.execute(
            delete(LoginThrottle).where(LoginThrottle.username == username))))
        by.record(session, "user.unlock", f"user:{username}", detail={"was_locked": found})
        return found


def _infos(session: Session, *where: Any) -> list[UserInfo]:
    """The accounts matching ``where`` by name, with their kind, state and live lockout."""
    now = datetime.now(UTC)
    external = set(session.scalars(select(ExternalIdentity.user_id)))
    locks = {t.username: until for t in session.scalars(
        select(LoginThrottle).where(LoginThrottle.locked_until.is_not(None)))
        if (until := as_utc(t.locked_until)) is not None and until > now}
    return [UserInfo(u.username, u.role, "oidc" if u.id in external else "local",
                     u.created_at, u.disabled_at is not None, locks.get(u.username))
            for u in session.scalars(select(User).where(*where).order_by(User.username))]


def list_users(db: Database) -> list[UserInfo]:
    """Every account by name, with its kind, state and lockout."""
    with db.session() as session:
        return _infos(session)


def find_user(db: Database, username: str) -> UserInfo:
    """The account named ``username``; :class:`AccountError` when there is none."""
    with db.session() as session:
        found = _infos(session, User.username == username)
    if not found:
        raise AccountError(f"no such user: {username}")
    return found[0]


# --- OpenID Connect ---------------------------------------------------------------------------


def external_login(db: Database, settings: Settings, *, issuer: str, subject: str,
                   username: str, role: str,
                   department: str | None) -> tuple[str, WebLogin]:
    """Open a web session for an identity provider's user (already authenticated there).

    The account is created at the first sign-in and its role and department follow the
    provider's claims at every sign-in. Raises :class:`AccountError` when the username is
    taken by a local account or another subject, or the account is disabled here.
    """
    if not USERNAME.match(username) or role not in ROLES or not subject:
        raise AccountError("the identity provider sent no usable username, subject or role")
    now = datetime.now(UTC)
    try:
        with db.session() as session:
            identity = session.scalar(select(ExternalIdentity).where(
                ExternalIdentity.issuer == issuer, ExternalIdentity.subject == subject))
            user: User | None
            if identity is None:
                if session.scalar(select(User.id).where(User.username == username)):
                    raise AccountError("this username belongs to another account")
                user = User(username=username, password_hash="", role=role)
                session.add(user)
                session.flush()
                identity = ExternalIdentity(user_id=user.id, issuer=issuer, subject=subject)
                session.add(identity)
            else:
                user = session.get(User, identity.user_id)
                if user is None:  # pragma: no cover - the foreign key cascades
                    raise AccountError("the account of this identity is gone")
                if user.username != username and session.scalar(
                        select(User.id).where(User.username == username)):
                    raise AccountError("this username belongs to another account")
                user.username = username
            if user.disabled_at is not None:
                raise AccountError("this account is disabled")
            user.role = role
            identity.department = department
            identity.last_login_at = now
    except IntegrityError as exc:  # a concurrent first sign-in of the same subject
        raise AccountError("sign-in raced another; try again") from exc
    return _open_session(db, settings, user, department)


_ROLE_PRECEDENCE = ("admin", "capture", "view")


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` in the claims (``realm_access.roles``), or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def identity_from_claims(settings: Settings,
                         claims: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """(username, role, department) from validated ID-token claims, by the configured mapping.

    The role is the most privileged one any value of ``EBIW_OIDC_ROLE_CLAIM`` maps to (admin,
    then capture, then view); a mapped ``role@department`` limits the account to that
    department, else ``EBIW_OIDC_DEPARTMENT_CLAIM`` may name it. Raises :class:`AccountError`
    when no value maps to a role or the username claim is missing.
    """
    username = _claim(claims, settings.oidc_username_claim)
    if not isinstance(username, str) or not USERNAME.match(username):
        raise AccountError("the identity provider sent no usable username")
    values = _claim(claims, settings.oidc_role_claim)
    if isinstance(values, str):
        values = [values]
    mapping = settings.oidc_roles
    granted = [mapping[v] for v in values or () if isinstance(v, str) and v in mapping]
    if not granted:
        raise AccountError("your account has no role in this app")
    best = min(granted, key=lambda r: _ROLE_PRECEDENCE.index(r.split("@", 1)[0]))
    role, _, department = best.partition("@")
    if not department and settings.oidc_department_claim:
        claimed = _claim(claims, settings.oidc_department_claim)
        department = claimed if isinstance(claimed, str) else ""
    return username, role, department[:64] or None


# --- SMART on FHIR EHR launch (app/workflow/launch.py) -----------------------------------------


def launch_login(db: Database, settings: Settings, context: LaunchContext, *, issuer: str,
                 subject: str, username: str, role: str) -> tuple[str, WebLogin]:
    """Open a web session for a user the EMR launched the app for, limited to one patient.

    The account is an identity provider's, as in :func:`external_login` (no password; created
    at the first launch; role from the launch). ``context`` is stored with the new session (its
    ``session_hash`` is set here), so the session sees only that patient from its first
    request on. Raises :class:`AccountError` as :func:`external_login` does; if the context
    cannot be stored, the session is ended before the error propagates, so no session ever
    exists without its restriction once the cookie is handed out.
    """
    session_id, login = external_login(db, settings, issuer=issuer, subject=subject,
                                       username=username, role=role, department=None)
    context.session_hash = _digest(session_id)
    try:
        with db.session() as session:
            session.add(context)
    except Exception:
        logout(db, session_id)
        raise
    caller = replace(login.caller, patient=(context.issuer, context.patient_id))
    return session_id, replace(login, caller=caller)


def launch_context(db: Database, session_id: str) -> LaunchContext | None:
    """The launch context stored with the session a cookie names, or None when it has none
    (that the session is live is the caller's check: :func:`resume`)."""
    with db.session() as session:
        return session.get(LaunchContext, _digest(session_id))
