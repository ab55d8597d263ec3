"""Uniform error bodies, never a stack trace or PHI.

JSON ``{"error": {"code", "message"}}`` for the API, DICOMweb, admin JSON and any client that
prefers JSON; a plain page (no script, the same fixed message) for a browser on an HTML route.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError

from app.gateways.archive import ArchiveConflictError
from app.workflow.intake import IntakeError

log = logging.getLogger(__name__)

_MESSAGES = {
    401: "authentication required (Authorization: Bearer <token>)",
    403: "your role does not allow this",
    404: "not found",
    405: "method not allowed",
    413: "the upload is too large",
    429: "too many requests: wait a moment and try again",
}
_JSON_PREFIXES = ("/api/", "/dicomweb", "/fhir", "/admin/api/")


def wants_html() -> bool:
    """Whether this request is a browser's on an HTML route (then errors are a plain page)."""
    if request.path.startswith(_JSON_PREFIXES) or request.is_json:
        return False
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    """The error answer: JSON, or the plain error page for a browser (see :func:`wants_html`).

    Guarantees: the body holds only ``code`` and ``message`` (fixed texts, no PHI) and is
    never cached.
    """
    if wants_html():
        response = Response(render_template("errors/error.html", status=status,
                                            message=message), status=status)
    else:
        response = jsonify({"error": {"code": code, "message": message}})
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="ebiw"'
    response.headers["Cache-Control"] = "no-store"
    return response, status


def register_error_handlers(app: Flask) -> None:
    """JSON errors for every status; exceptions are logged by type only (messages may hold PHI)."""

    @app.errorhandler(IntakeError)
    def intake_error(exc: IntakeError) -> tuple[Response, int]:
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(ArchiveConflictError)
    def archive_conflict(_exc: ArchiveConflictError) -> tuple[Response, int]:
        return error_response(409, "conflict", "this instance is already stored with other "
                                                "content")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(status, code, _MESSAGES.get(status, exc.name or "error"))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.error("unhandled %s in request", type(exc).__name__)
        return error_response(500, "internal_error",
                              InternalServerError.description.split(".")[0])
