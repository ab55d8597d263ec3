"""Authentication: API bearer tokens or the web session cookie, role checks, login and logout.

A request is authenticated by ``Authorization: Bearer <token>`` (devices, integrations) or, when
it has no Authorization header, by the session cookie of the capture app. A cookie-authenticated
request that changes something must also carry the session's CSRF token in ``X-CSRF-Token``
(the app gets it from the login answer or ``GET /api/v1/me``), so another site's form or script
cannot upload in the user's name even where SameSite is not honoured.

The cookie is ``__Host-ebiw_session`` (``Secure``, ``HttpOnly``, ``SameSite=Strict``, ``Path=/``,
no ``Domain``) when the app is served over HTTPS or in production, and plain ``ebiw_session``
over http (local development on 127.0.0.1, where browsers would drop a ``Secure`` cookie).
Logins are rate-limited per client address and locked per username after repeated failures.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, g, jsonify, redirect, render_template, request

from app.web import services
from app.web.errors import error_response
from app.web.limits import rate_limited
from app.workflow import accounts
from app.workflow.accounts import AccountLocked, WebLogin
from app.workflow.tokens import Caller, verify_token

F = TypeVar("F", bound=Callable[..., object])

SESSION_COOKIE = "ebiw_session"
SECURE_SESSION_COOKIE = "__Host-ebiw_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

bp = Blueprint("auth", __name__)


def session_cookie() -> str:
    """The session cookie's name: ``__Host-`` prefixed when served over HTTPS."""
    return SECURE_SESSION_COOKIE if services().settings.secure_cookies else SESSION_COOKIE


def set_session_cookie(response: Response, session_id: str) -> None:
    """Put a new session id in the cookie: HttpOnly, SameSite=Strict, Secure over HTTPS."""
    settings = services().settings
    response.set_cookie(session_cookie(), session_id,
                        max_age=settings.session_lifetime_hours * 3600, path="/",
                        httponly=True, samesite="Strict",
                        secure=request.is_secure or settings.secure_cookies)


def current_login() -> WebLogin | None:
    """The live web session named by this request's cookie, or None (looked up once)."""
    if "web_login" not in g:
        cookie = request.cookies.get(session_cookie(), "")
        g.web_login = accounts.resume(services().db, services().settings, cookie) \
            if cookie else None
    return g.web_login


def current_caller() -> Caller | None:
    """The authenticated caller of this request, or None.

    An Authorization header, when present, decides alone: a wrong token is not rescued by a
    cookie.
    """
    header = request.headers.get("Authorization")
    if header is None:
        login = current_login()
        return login.caller if login else None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return verify_token(services().db, token.strip())


def csrf_ok() -> bool:
    """Whether a cookie-authenticated request that changes state carries the CSRF token."""
    if request.method in SAFE_METHODS or "Authorization" in request.headers:
        return True
    login = current_login()
    sent = request.headers.get(CSRF_HEADER) or request.form.get("csrf_token", "")
    return login is not None and hmac.compare_digest(sent, login.csrf_token)


def require(*roles: str) -> Callable[[F], F]:
    """Refuse the request (401 without credentials, 403 without a role or CSRF token)."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: object, **kwargs: object) -> object:
            caller = current_caller()
            if caller is None:
                abort(401)
            if not csrf_ok():
                return error_response(403, "csrf", f"the {CSRF_HEADER} header is missing "
                                                   "or wrong")
            if not caller.may(*roles):
                abort(403)
            g.caller = caller
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def same_origin() -> bool:
    """No Origin header (same-origin navigation, curl) or one naming this host, and no
    ``Sec-Fetch-Site`` saying another site sent the request. ``Origin: null`` passes only with
    ``Sec-Fetch-Site: same-origin``: a browser sends it for a form posted from one of our pages,
    whose ``Referrer-Policy: no-referrer`` hides the origin of form posts."""
    site = request.headers.get("Sec-Fetch-Site", "same-origin")
    if site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None or (origin == "null" and site == "same-origin"
                          and "Sec-Fetch-Site" in request.headers):
        return True
    own = {request.host, urlsplit(services().settings.public_url).netloc}
    return urlsplit(origin).netloc in own


def _wants_json() -> bool:
    return request.is_json or request.accept_mimetypes.best == "application/json"


def login_json(login: WebLogin) -> dict[str, Any]:
    """What the app learns about its own session (no password, no cookie value)."""
    return {"user": login.caller.user, "role": login.caller.role,
            "csrf_token": login.csrf_token, "expires_at": login.expires_at.isoformat(),
            "idle_timeout_seconds": services().settings.session_idle_minutes * 60,
            "launched": login.caller.patient is not None}


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/login")
def login_form() -> Response:
    """The plain login form (the capture app has its own login screen at ``/``)."""
    return _no_store(Response(render_template("auth/login.html", failed=False,
                                              oidc=services().settings.oidc_enabled)))


@bp.post("/login")
@rate_limited("login")
def login() -> Response | tuple[Response, int]:
    """Log in with JSON ``{"username", "password"}`` or a form; set a fresh session cookie.

    Refused: from another site (403), over the rate limit (429), for a locked username (401
    ``account_locked`` with ``Retry-After``, alike for unknown names), wrong credentials (401).
    """
    if not same_origin():
        return error_response(403, "cross_origin", "log in from this site's own page")
    if request.is_json:
        body = request.get_json(silent=True)
        username, password = (body.get("username"), body.get("password")) \
            if isinstance(body, dict) else (None, None)
    else:
        username, password = request.form.get("username"), request.form.get("password")
    settings = services().settings
    try:
        result = accounts.login(services().db, settings, username, password) \
            if isinstance(username, str) and isinstance(password, str) else None
    except AccountLocked as exc:
        minutes = -(-exc.retry_after // 60)
        response, status = error_response(
            401, "account_locked", f"too many failed logins: try again in {minutes} minutes "
                                   "or ask an administrator to unlock the account")
        response.headers["Retry-After"] = str(exc.retry_after)
        return response, status
    if result is None:
        if _wants_json():
            return error_response(401, "login_failed", "wrong username or password")
        return _no_store(Response(render_template("auth/login.html", failed=True,
                                                  oidc=settings.oidc_enabled), status=401))
    session_id, web_login = result
    response = jsonify(login_json(web_login)) if _wants_json() else redirect("/", 303)
    set_session_cookie(response, session_id)
    return _no_store(response)


@bp.post("/logout")
def logout() -> Response | tuple[Response, int]:
    """End the session server-side and clear the cookie (needs the CSRF token)."""
    cookie = request.cookies.get(session_cookie(), "")
    if current_login() is not None:
        if not csrf_ok():
            return error_response(403, "csrf", f"the {CSRF_HEADER} header is missing or wrong")
        accounts.logout(services().db, cookie)
    response = Response(status=204) if _wants_json() or CSRF_HEADER in request.headers \
        else redirect("/login", 303)
    response.delete_cookie(session_cookie(), path="/", httponly=True, samesite="Strict",
                           secure=request.is_secure or services().settings.secure_cookies)
    return _no_store(response)

