"""Uniform error bodies, never a stack trace or PHI.

JSON ``{"error": {"code", "message"}}`` for the API, DICOMweb, admin JSON and any client that
prefers JSON; a plain page (no script, the same fixed message) for a browser on an HTML route.

Faults of the machine are mapped here, in one place (:func:`fault_response`), wherever they
surface, in a view or in the audit hook: a full disk or quota (``OSError`` ENOSPC/EDQUOT from
a file write, SQLite's or PostgreSQL's "disk full") answers 507 ``insufficient_storage``; a
database that does not answer (SQLAlchemy's ``OperationalError``: refused, timed out,
connection lost) or an archive store that does not answer answers 503. Both carry
``Retry-After``: nothing was stored, and the same request (idempotent by its upload UUID)
succeeds once the fault is gone.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, InternalServerError

from app.durable import disk_full
from app.gateways.archive import ArchiveConflictError, ArchiveUnavailableError
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
_PAGE_MESSAGES = {
    401: "please log in to see this page",
    403: "your role cannot open this page",
}
"""What the error page tells a browser instead (the page adds the Log in or home link)."""
_JSON_PREFIXES = ("/api/", "/dicomweb", "/fhir", "/admin/api/")
RETRY_AFTER_SECONDS = 10
"""``Retry-After`` of a 503 or 507: a fault of ours that a retry of the same request outlives."""
STORAGE_FULL = "the server's storage is full: nothing was stored; try again later"
DATABASE_UNAVAILABLE = "the database is not answering: try again shortly"
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"
_PG_DISK_FULL = "53100"  # SQLSTATE disk_full


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
    if status in (503, 507):
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
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

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.error("unhandled %s in request", type(exc).__name__)
        return error_response(500, "internal_error",
                              InternalServerError.description.split(".")[0])

    @app.errorhandler(OSError)
    @app.errorhandler(OperationalError)
    def machine_fault(exc: OSError | OperationalError) -> tuple[Response, int]:
        return fault_response(exc) or unexpected(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        message = (_PAGE_MESSAGES.get(status) if wants_html() else None) \
            or _MESSAGES.get(status, exc.name or "error")
        return error_response(status, code, message)


def fault_response(exc: BaseException) -> tuple[Response, int] | None:
    """The answer to a fault of the machine, or None when ``exc`` is none: 507
    ``insufficient_storage`` when a write found the disk or quota full (a file write's ENOSPC
    or EDQUOT, SQLite's or PostgreSQL's "disk full"), 503 ``database_unavailable`` when the
    database does not answer, 503 ``archive_unavailable`` when the archive's store does not.
    Logged by kind only."""
    if isinstance(exc, OperationalError):
        orig = exc.orig
        if (getattr(orig, "sqlite_errorcode", None) == _SQLITE_FULL
                or getattr(orig, "sqlstate", None) == _PG_DISK_FULL):
            log.error("database storage full in request")
            return error_response(507, "insufficient_storage", STORAGE_FULL)
        log.error("database unavailable in request: %s", type(orig).__name__)
        return error_response(503, "database_unavailable", DATABASE_UNAVAILABLE)
    if disk_full(exc):
        log.error("storage full in request")
        return error_response(507, "insufficient_storage", STORAGE_FULL)
    if isinstance(exc, ArchiveUnavailableError):
        log.error("archive unavailable in request")
        return error_response(503, "archive_unavailable",
                              "the archive is not answering: try again shortly")
    return None
