"""OpenID Connect sign-in to the hospital's identity provider (Authlib, code flow + PKCE).

``GET /login/oidc`` sends the browser to the provider (authorization code flow, PKCE S256,
``state`` and ``nonce``); ``GET /login/oidc/callback`` exchanges the code, validates the ID
token (signature against the provider's JWKS, issuer, audience, expiry, nonce), maps its claims
to a role (``EBIW_OIDC_ROLE_MAP``) and opens the same server-side web session as a password
login. Between the two requests ``state``, ``nonce`` and the PKCE verifier wait in Flask's
signed session cookie (``SameSite=Lax`` so it comes back on the provider's redirect; HttpOnly;
``__Host-`` and Secure over HTTPS), which is cleared once the sign-in ends.

``GET /login/oidc?next=/a/page`` (the login page's link carries its own ``next``) ends the
sign-in on that page, as a password login does: only a path of this site
(:func:`app.web.auth.local_path`), else ``/``. The path waits in the same session cookie, never
in what is sent to the provider.

Only registered when ``EBIW_OIDC_ISSUER`` is set. Failures are answered with a fixed message and
logged by exception type only.
"""

from __future__ import annotations

import logging

from authlib.integrations.flask_client import FlaskOAuth2App, OAuth
from flask import Blueprint, Flask, Response, current_app, g, redirect, request, session
from werkzeug.wrappers import Response as BaseResponse

from app.web import services
from app.web.auth import local_path, set_session_cookie
from app.web.errors import error_response
from app.web.limits import rate_limited
from app.workflow import accounts
from app.workflow.accounts import AccountError

log = logging.getLogger(__name__)
bp = Blueprint("oidc", __name__)
EXTENSION = "ebiw.oidc"
CALLBACK = "/login/oidc/callback"
STATE_COOKIE, SECURE_STATE_COOKIE = "ebiw_oidc", "__Host-ebiw_oidc"
NEXT_KEY = "ebiw_next"
"""The session key of the page to end the sign-in on (a checked local path)."""


def init_app(app: Flask) -> None:
    """Register the identity provider and the two routes, when OIDC is configured."""
    settings = app.extensions["ebiw"].settings
    if not settings.oidc_enabled:
        return
    app.config.update(SESSION_COOKIE_NAME=SECURE_STATE_COOKIE if settings.secure_cookies
                      else STATE_COOKIE,
                      SESSION_COOKIE_SECURE=settings.secure_cookies,
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_PATH="/", PERMANENT_SESSION_LIFETIME=600)
    oauth = OAuth(app)
    oauth.register(
        "idp", client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret or None,
        server_metadata_url=settings.oidc_issuer.rstrip("/")
        + "/.well-known/openid-configuration",
        client_kwargs={"scope": settings.oidc_scope, "code_challenge_method": "S256",
                       "timeout": 10,
                       **({} if settings.oidc_client_secret
                          else {"token_endpoint_auth_method": "none"})})
    app.extensions[EXTENSION] = oauth
    app.register_blueprint(bp)


def _client() -> FlaskOAuth2App:
    return current_app.extensions[EXTENSION].idp


@bp.get("/login/oidc")
@rate_limited("login")
def start() -> BaseResponse:
    """Redirect to the provider's authorization endpoint (state, nonce, PKCE challenge).

    Guarantees: the request's ``next``, when it is a local path (:func:`local_path`, its query
    dropped), is kept in the session for the callback and not sent to the provider.
    """
    session.clear()
    next_path = local_path(request.args.get("next"))
    if next_path:
        session[NEXT_KEY] = next_path
    redirect_uri = services().settings.public_url.rstrip("/") + CALLBACK
    response = _client().authorize_redirect(redirect_uri)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get(CALLBACK)
@rate_limited("login")
def callback() -> BaseResponse | tuple[Response, int]:
    """Finish the sign-in: exchange the code, validate the ID token, open a web session, and
    send the browser to the ``next`` page kept by :func:`start` (checked again), else ``/``."""
    next_path = local_path(session.get(NEXT_KEY))
    try:
        token = _client().authorize_access_token()
        claims = token.get("userinfo")
        if not claims:
            raise ValueError("no ID token")
        username, role, department = accounts.identity_from_claims(services().settings,
                                                                   claims)
        session_id, _login = accounts.external_login(
            services().db, services().settings, issuer=str(claims["iss"]),
            subject=str(claims["sub"]), username=username, role=role, department=department)
        g.audit_actor = (username, role)  # who signed in, for the audit record (user.login)
    except AccountError as exc:
        session.clear()
        return error_response(403, "oidc_refused", str(exc))
    except Exception as exc:  # any failure of the exchange or the token: a fixed answer
        session.clear()
        log.warning("OpenID Connect sign-in failed: %s", type(exc).__name__)
        return error_response(401, "oidc_failed", "the sign-in with the hospital account "
                                                  "failed: start again")
    session.clear()
    response = redirect(next_path or "/", 303)
    set_session_cookie(response, session_id)
    response.headers["Cache-Control"] = "no-store"
    return response
