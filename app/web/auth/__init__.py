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

``POST /login`` has no session to take a CSRF token from, so it is refused when it comes from
another site (:func:`same_origin`): ``Sec-Fetch-Site`` other than ``same-origin``/``none``, or
an ``Origin`` naming another host. ``Origin: null`` (a form posted under a ``no-referrer``
policy, a sandboxed frame, a redirect) passes only with ``Sec-Fetch-Site: same-origin`` or the
login form's token: ``GET /login`` puts a random token in the form and in the ``ebiw_login``
cookie (``__Host-`` over HTTPS, HttpOnly, ``SameSite=Strict``), and the post must carry both,
equal (a double submit: another site can neither read the cookie nor get it sent).

``GET /login?next=/a/page`` (the error page's and the viewer's Log in links) puts ``next`` in
the form and in the hospital sign-in's link (:mod:`app.web.auth.oidc`), and either login ends on
that page: only a path of this site, never another site's address (:func:`local_path`).
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, g, jsonify, redirect, render_template, request
from werkzeug.wrappers import Response as BaseResponse

from app.web import services
from app.web.errors import error_response
from app.web.limits import rate_limited
from app.workflow import accounts
from app.workflow.accounts import AccountLocked, WebLogin
from app.workflow.tokens import Caller, TokenExpired, verify_token

F = TypeVar("F", bound=Callable[..., object])
R = TypeVar("R", bound=BaseResponse)  # Flask's Response, or redirect()'s Werkzeug one

SESSION_COOKIE = "ebiw_session"
SECURE_SESSION_COOKIE = "__Host-ebiw_session"
LOGIN_FORM_COOKIE = "ebiw_login"
SECURE_LOGIN_FORM_COOKIE = "__Host-ebiw_login"
LOGIN_FORM_FIELD = "login_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOGIN_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
"""A login form token as :func:`secrets.token_urlsafe` (32 bytes) writes it."""

bp = Blueprint("auth", __name__)


def session_cookie() -> str:
    """The session cookie's name: ``__Host-`` prefixed when served over HTTPS."""
    return SECURE_SESSION_COOKIE if services().settings.secure_cookies else SESSION_COOKIE


def login_form_cookie() -> str:
    """The login form token's cookie name: ``__Host-`` prefixed when served over HTTPS."""
    return SECURE_LOGIN_FORM_COOKIE if services().settings.secure_cookies else LOGIN_FORM_COOKIE


def set_session_cookie(response: BaseResponse, session_id: str) -> None:
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
    try:
        return verify_token(services().db, token.strip())
    except TokenExpired:
        g.token_expired = True  # require() says so in its 401
        return None


def csrf_ok() -> bool:
    """Whether a cookie-authenticated request that changes state carries the CSRF token."""
    if request.method in SAFE_METHODS or "Authorization" in request.headers:
        return True
    login = current_login()
    sent = request.headers.get(CSRF_HEADER) or request.form.get("csrf_token", "")
    return login is not None and hmac.compare_digest(sent.encode(), login.csrf_token.encode())


def login_form_token_ok() -> bool:
    """Whether this is a post to ``/login`` whose ``login_token`` field equals the token in
    its login form cookie (both present; compared in constant time)."""
    if request.endpoint != "auth.login" or request.is_json:
        return False
    cookie = request.cookies.get(login_form_cookie(), "")
    sent = request.form.get(LOGIN_FORM_FIELD, "")
    return bool(cookie) and hmac.compare_digest(sent.encode(), cookie.encode())


TOKEN_EXPIRED = ("this API token has expired: ask an administrator for a new one "
                 "(ebiw token create)")


def require(*roles: str) -> Callable[[F], F]:
    """Refuse the request (401 without credentials or with an expired token, 403 without a
    role or CSRF token)."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: object, **kwargs: object) -> object:
            caller = current_caller()
            if caller is None and g.get("token_expired"):
                return error_response(401, "token_expired", TOKEN_EXPIRED)
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
    """Whether nothing says another site sent this request.

    True only when ``Sec-Fetch-Site``, if sent, is ``same-origin`` or ``none``, and the
    ``Origin`` is absent (curl, older clients), names this host, or is ``null`` with either
    ``Sec-Fetch-Site: same-origin`` or a valid login form token (:func:`login_form_token_ok`).
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site not in (None, "same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin == "null":
        return site == "same-origin" or login_form_token_ok()
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


def _no_store(response: R) -> R:
    response.headers["Cache-Control"] = "no-store"
    return response


def _minutes(seconds: int) -> str:
    """``seconds`` rounded up to whole minutes, in words: "1 minute", "15 minutes"."""
    minutes = -(-seconds // 60)
    return f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"


def local_path(value: str | None) -> str | None:
    """``value`` as a page of this site to go to after logging in, or None when it is not one.

    Guarantees: a result starts with a single "/" and holds no scheme, host, backslash, space
    or control character, so no browser reads it as another site; its query and fragment are
    dropped (a query may hold PHI).
    """
    if not value or not value.startswith("/") or value.startswith("//"):
        return None
    if "\\" in value or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        return None
    parts = urlsplit(value)
    return parts.path if not (parts.scheme or parts.netloc) else None


def _next_path() -> str | None:
    """The checked ``next`` of this request (the login form's field or the URL's query)."""
    return local_path(request.values.get("next"))


def _login_page(message: str = "", status: int = 200) -> Response:
    """The plain login form, with ``message`` as its alert; never cached.

    Guarantees: the form's ``login_token`` equals the login form cookie set on the answer
    (the browser's own token when it sent a well-formed one, so the page is the same for the
    same browser and message; else a new random one); the form carries the request's ``next``
    only when it is a local path (:func:`local_path`).
    """
    token = request.cookies.get(login_form_cookie(), "")
    if not _LOGIN_TOKEN.fullmatch(token):
        token = secrets.token_urlsafe(32)
    settings = services().settings
    response = Response(render_template("auth/login.html", message=message, login_token=token,
                                        next=_next_path(), oidc=settings.oidc_enabled),
                        status=status)
    response.set_cookie(login_form_cookie(), token, path="/", httponly=True, samesite="Strict",
                        secure=request.is_secure or settings.secure_cookies)
    return _no_store(response)


@bp.get("/login")
def login_form() -> Response:
    """The plain login form (the capture app has its own login screen at ``/``)."""
    return _login_page()


@bp.post("/login")
@rate_limited("login")
def login() -> BaseResponse | tuple[Response, int]:
    """Log in with JSON ``{"username", "password"}`` or a form; set a fresh session cookie.
    A form is then sent to its ``next`` field when that is a local path (:func:`local_path`),
    else to ``/``.

    Refused: from another site (403), over the rate limit (429), for a locked username (401
    ``account_locked`` with ``Retry-After``, alike for unknown names), wrong credentials (401,
    the same answer for an unknown username and a wrong password). A form gets the login page
    again, saying why; JSON clients get the error body.
    """
    if not same_origin():
        return error_response(403, "cross_origin", "log in from this site's own page")
    if request.is_json:
        body = request.get_json(silent=True)
        username, password = (body.get("username"), body.get("password")) \
            if isinstance(body, dict) else (None, None)
    else:
        username, password = request.form.get("username"), request.form.get("password")
    try:
        result = accounts.login(services().db, services().settings, username, password) \
            if isinstance(username, str) and isinstance(password, str) else None
    except AccountLocked as exc:
        wait = _minutes(exc.retry_after)
        if _wants_json():
            response, status = error_response(
                401, "account_locked", f"too many failed logins: try again in {wait} or ask "
                                       "an administrator to unlock the account")
        else:
            response, status = _login_page(
                f"Too many failed logins: this account is locked for {wait}. Try again then, "
                "or ask an administrator to unlock it.", 401), 401
        response.headers["Retry-After"] = str(exc.retry_after)
        return response, status
    if result is None:
        if _wants_json():
            return error_response(401, "login_failed", "wrong username or password")
        return _login_page("Wrong username or password.", 401)
    session_id, web_login = result
    done = jsonify(login_json(web_login)) if _wants_json() \
        else redirect(_next_path() or "/", 303)
    set_session_cookie(done, session_id)
    return _no_store(done)


@bp.post("/logout")
def logout() -> BaseResponse | tuple[Response, int]:
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

