"""Liveness and readiness for load balancers; no authentication, no PHI."""

from __future__ import annotations

import os

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from app.web import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process answers."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready to accept uploads: the database answers and the archive folder is writable."""
    svc = services()
    checks: dict[str, str] = {}
    try:
        with svc.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; the type is enough to diagnose
        checks["database"] = f"failed: {type(exc).__name__}"
    root = svc.settings.archive_root
    root.mkdir(parents=True, exist_ok=True)
    checks["archive"] = "ok" if os.access(root, os.W_OK) else "failed: not writable"
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ok" if ready else "unavailable", checks=checks), 200 if ready else 503
