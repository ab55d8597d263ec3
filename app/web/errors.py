"""Uniform error bodies: JSON ``{"error": {"code", "message"}}``, never a stack trace or PHI."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException, InternalServerError

from app.gateways.archive.local import ArchiveConflictError
from app.workflow.intake import IntakeError

log = logging.getLogger(__name__)

_MESSAGES = {
    401: "authentication required (Authorization: Bearer <token>)",
    403: "your role does not allow this",
    404: "not found",
    405: "method not allowed",
    413: "the upload is too large",
}


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    response = jsonify({"error": {"code": code, "message": message}})
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="ebiw"'
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
