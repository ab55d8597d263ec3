"""Launch from the EMR (SMART on FHIR EHR launch), over HTTP.

- ``GET /launch?iss=…&launch=…[&target=capture]`` — the EMR opens this URL; the browser is sent
  to the EMR's authorization endpoint (:func:`app.workflow.launch.begin`). The pending launch
  (``state``, ``nonce``, PKCE verifier, ``iss``, target) waits in a signed cookie
  (``ebiw_launch``, ``__Host-`` prefixed and Secure over HTTPS; HttpOnly; ``SameSite=Lax`` so it
  comes back on the EMR's redirect; ten minutes), which binds ``state`` to this browser.
- ``GET /launch/callback?code=…&state=…`` — the EMR's answer: the launch is completed
  (:func:`app.workflow.launch.complete`), a web session limited to the launch patient replaces
  the browser's session cookie (the session it named, if any, is ended), and the browser goes
  to the study of an ImagingStudy context, else to ``/launch/patient`` (target ``viewer``) or
  to the capture app (target ``capture``).
- ``GET /launch/patient`` — the launch patient's studies: a PHI-free page whose script fetches
  the context and the studies (``/dicomweb``, which serves a launched session only its patient).
- ``GET /launch/context`` — the session's launch context as JSON (patient, encounter, target),
  for that page and the capture app; 404 for a session not launched from the EMR.

URLs carry only ``iss``, ``launch``, ``target``, ``code`` and ``state``: never PHI. Launches are
audited (``user.launch``: every callback, and refused starts), as are context reads
(``launch.context``). Registered only when ``EBIW_SMART_ISSUERS`` is set.
"""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
)
from itsdangerous import BadData, URLSafeTimedSerializer
from werkzeug.wrappers import Response as BaseResponse

from app.db.models import LaunchContext
from app.gateways.smart import SmartGateway
from app.web import services
from app.web.auth import current_login, require, session_cookie, set_session_cookie
from app.web.errors import error_response
from app.web.limits import rate_limited
from app.workflow import accounts, audit, launch
from app.workflow.intake import IdentificationMethod
from app.workflow.launch import LaunchError, PendingLaunch

bp = Blueprint("launch", __name__, url_prefix="/launch")
EXTENSION = "ebiw.smart"
PENDING_COOKIE, SECURE_PENDING_COOKIE = "ebiw_launch", "__Host-ebiw_launch"
_SALT = "ebiw.smart-launch"
OTHER_PATIENT = "this session was opened from the EMR for another patient"
ONE_PATIENT = "this session was opened from the EMR for one patient: look up no other"
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; "
                           "form-action 'self'")


def init_app(app: Flask) -> None:
    """Register the launch routes when EMRs are allowed to launch the app."""
    settings = app.extensions["ebiw"].settings
    if not settings.smart_clients:
        return
    app.extensions[EXTENSION] = SmartGateway(timeout=float(settings.emr_timeout_seconds))
    app.register_blueprint(bp)


def _gateway() -> SmartGateway:
    return current_app.extensions[EXTENSION]


def _redirect_uri() -> str:
    """Our registered redirect URI: under ``EBIW_PUBLIC_URL``, never from the Host header."""
    return services().settings.public_url.rstrip("/") + "/launch/callback"


def _pending_cookie() -> str:
    return SECURE_PENDING_COOKIE if services().settings.secure_cookies else PENDING_COOKIE


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(services().settings.secret_key, salt=_SALT)


def _pending() -> PendingLaunch | None:
    """This browser's pending launch: None when absent, expired or tampered with."""
    raw = request.cookies.get(_pending_cookie(), "")
    try:
        value = _serializer().loads(raw, max_age=launch.PENDING_SECONDS) if raw else None
    except BadData:
        return None
    return PendingLaunch.from_json(value)


def _forget_pending(response: BaseResponse) -> None:
    """Clear the pending launch cookie (a launch is used once, refused or not)."""
    response.delete_cookie(_pending_cookie(), path="/", httponly=True, samesite="Lax",
                           secure=request.is_secure or services().settings.secure_cookies)


def _refused(exc: LaunchError, step: str) -> tuple[Response, int]:
    """The error answer of a refused launch (a plain page for a browser), audited."""
    g.audit_action = "user.launch"
    g.audit_detail = {"step": step, "reason": exc.code}
    response, status = error_response(exc.status, exc.code, exc.message)
    _forget_pending(response)
    return response, status


@bp.get("")
@rate_limited("login")
def start() -> BaseResponse | tuple[Response, int]:
    """Send the browser to the EMR's authorization endpoint (400 for an EMR not allowed)."""
    try:
        url, pending = launch.begin(
            services().settings, _gateway(), iss=request.args.get("iss", ""),
            launch=request.args.get("launch", ""),
            target=request.args.get("target", "viewer"), redirect_uri=_redirect_uri())
    except LaunchError as exc:
        return _refused(exc, "start")
    response = redirect(url, 302)
    response.set_cookie(_pending_cookie(), _serializer().dumps(pending.to_json()),
                        max_age=launch.PENDING_SECONDS, path="/", httponly=True,
                        samesite="Lax",
                        secure=request.is_secure or services().settings.secure_cookies)
    response.headers["Cache-Control"] = "no-store"
    return response


def _destination(context: LaunchContext) -> str:
    """Where the launch ends (a path of this app, never a URL the EMR chose)."""
    if context.target == "capture":
        return "/"
    if context.study_uid:
        return f"/studies/{context.study_uid}"
    return "/launch/patient"


@bp.get("/callback")
@rate_limited("login")
def callback() -> BaseResponse | tuple[Response, int]:
    """Complete the launch, open the session and go where the launch asked."""
    pending = _pending()
    try:
        if pending is None:
            raise LaunchError(400, "launch_state", "this launch cannot be verified: open the "
                                                   "app again from the patient's chart in the "
                                                   "EMR")
        done = launch.complete(services().db, services().settings, _gateway(), pending,
                               state=request.args.get("state", ""),
                               code=request.args.get("code", ""),
                               error=request.args.get("error", ""),
                               redirect_uri=_redirect_uri())
    except LaunchError as exc:
        return _refused(exc, "callback")
    context = done.context
    g.caller = done.login.caller
    g.audit_action = "user.launch"
    g.audit_entities = [audit.patient_ref(context.patient_id, context.issuer),
                        *([audit.study_ref(context.study_uid)] if context.study_uid else [])]
    g.audit_detail = {"emr": context.fhir_base, "target": context.target}
    previous = request.cookies.get(session_cookie(), "")
    if previous:  # whoever was logged in in this browser before is logged out
        accounts.logout(services().db, previous)
    response = redirect(_destination(context), 303)
    set_session_cookie(response, done.session_id)
    _forget_pending(response)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/patient")
def patient_page() -> Response:
    """The launch patient's studies: a shell without PHI (its script fetches the data)."""
    response = Response(render_template("launch/patient.html"),
                        content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-store"
    return response


def context_json(context: LaunchContext) -> dict[str, Any]:
    """The launch context as the capture app and the studies page use it (the patient in the
    shape of ``/api/v1/identify``'s answer, identified by ``emr-launch``)."""
    encounters = [{"identifier": context.encounter, "department": context.department,
                   "started": None}] if context.encounter else []
    return {
        "target": context.target,
        "study_instance_uid": context.study_uid,
        "patient": {
            "mrn": context.patient_id, "issuer": context.issuer,
            "name": {"family": context.family, "given": context.given},
            "birth_date": context.birth_date.isoformat() if context.birth_date else None,
            "sex": context.sex, "encounters": encounters, "worklist": [],
            "identification": {"method": IdentificationMethod.EMR_LAUNCH,
                               "evidence": {"emr": context.fhir_base}},
        },
    }


@bp.get("/context")
@require("capture", "view")
def context() -> Response | tuple[Response, int]:
    """The launch context of this session (404 when it was not launched from the EMR)."""
    login = current_login()
    found = accounts.launch_context(services().db, request.cookies.get(session_cookie(), "")) \
        if login is not None and "Authorization" not in request.headers else None
    if found is None:
        return error_response(404, "not_launched", "this session was not opened from the EMR")
    g.audit_action = "launch.context"
    g.audit_entities = [audit.patient_ref(found.patient_id, found.issuer)]
    response = jsonify(context_json(found))
    response.headers["Cache-Control"] = "no-store"
    return response
