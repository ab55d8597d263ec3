"""Accounts, an admin page: ``GET /admin/accounts`` lists the accounts (name, role, how they
sign in, disabled, locked out after failed logins) and the API tokens of devices and
integrations (number, user, role, created, expires, last used, revoked), never a password hash
or a token's value. So that an admin with only a phone can let a locked-out nurse back in or
cut off a lost phone, its forms post:

- ``/admin/accounts/unlock`` (``username``): lifts the lockout, at once (it only undoes one);
- ``/admin/accounts/enable`` (``username``): enables a disabled account, at once;
- ``/admin/accounts/disable`` (``username``) and ``/admin/accounts/revoke`` (``token``, its
  number): two posts each, as in Corrections: the first changes nothing and answers with
  exactly what would happen (the account or token, and what it ends) in a form posting the
  same value back with ``confirmed=yes``, and a Cancel link; only that second post acts,
  checked again. An admin cannot disable their own account.

Forms carry the session's CSRF token. The workflow (``app.workflow.accounts``,
``app.workflow.tokens``) checks and audits each action (``user.unlock``, ``user.enable``,
``user.disable``, ``token.revoke``: what ``ebiw user`` and ``ebiw token`` record) with the
logged-in admin, their role and address as the actor. A refused step, such as a stale page's
(the account gone, the token already revoked), answers 422 with the page as it is now and the
reason; nothing changes. The page shows no PHI, so reading it is not audited.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, g, render_template, request

from app.web import services
from app.web.auth import current_login, require
from app.web.shell import confirmed
from app.workflow import accounts, audit, tokens

bp = Blueprint("accounts", __name__, url_prefix="/admin")


def _page(status: int = 200, **context: Any) -> tuple[Response, int]:
    """The page: the confirmation of ``preview`` alone (nothing else to tap), or else the
    accounts and tokens as they are now, with ``done`` (what was done) or ``error`` (why not)
    above them."""
    login = current_login()
    context = {"done": None, "error": None, "preview": None, **context}
    if context["preview"] is None:
        db = services().db
        context |= {"users": accounts.list_users(db), "tokens": tokens.list_tokens(db)}
    response = Response(render_template(
        "admin/accounts.html", csrf_token=login.csrf_token if login else "",
        me=g.caller.user, now=datetime.now(UTC), **context))
    response.headers["Cache-Control"] = "no-store"
    return response, status


def _by() -> audit.Actor:
    """The logged-in admin as the actor of the workflow's audit record."""
    return audit.Actor(g.caller.user, g.caller.role, request.remote_addr,
                       services().settings.node)


def _username() -> str:
    return request.form.get("username", "").strip()


@bp.get("/accounts")
@require("admin")
def accounts_page() -> tuple[Response, int]:
    return _page()


@bp.post("/accounts/unlock")
@require("admin")
def unlock_submit() -> tuple[Response, int]:
    username = _username()
    if accounts.unlock(services().db, username, by=_by()):
        return _page(done=f"{username} is unlocked: they can log in again now.")
    return _page(done=f"{username} was not locked: nothing changed.")


@bp.post("/accounts/enable")
@require("admin")
def enable_submit() -> tuple[Response, int]:
    username = _username()
    try:
        changed = accounts.set_disabled(services().db, username, False, by=_by())
    except accounts.AccountError as exc:
        return _page(422, error=str(exc))
    return _page(done=f"{username} is enabled: they can log in again." if changed
                 else f"{username} was not disabled: nothing changed.")


@bp.post("/accounts/disable")
@require("admin")
def disable_submit() -> tuple[Response, int]:
    username, db = _username(), services().db
    try:
        if not confirmed():
            return _page(preview={"user": accounts.plan_disable(db, username, by=_by())})
        changed = accounts.set_disabled(db, username, True, by=_by())
    except accounts.AccountError as exc:
        return _page(422, error=str(exc))
    return _page(done=f"{username} is disabled and logged out everywhere." if changed
                 else f"{username} was already disabled: nothing changed.")


@bp.post("/accounts/revoke")
@require("admin")
def revoke_submit() -> tuple[Response, int]:
    token_id, db = request.form.get("token", type=int), services().db
    if token_id is None:
        return _page(422, error="choose the token to revoke")
    try:
        if not confirmed():
            return _page(preview={"token": tokens.live_token(db, token_id)})
        tokens.revoke_token(db, token_id, by=_by())
    except tokens.TokenError as exc:
        return _page(422, error=str(exc))
    return _page(done=f"Token {token_id} is revoked: it is refused from its next request on.")
