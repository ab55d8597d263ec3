"""Liveness and readiness for load balancers; no authentication, no PHI."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from app.pipeline.identify import ZBAR_AVAILABLE
from app.web import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process answers."""
    return jsonify(status="ok")


ZBAR_MISSING = ("barcodes: zbar (libzbar0) is not installed; wristbands are read with "
                "zxing-cpp alone, which misses some small or blurred codes")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready to accept uploads: the database answers and the archive can be written to.

    ``warnings`` (present only when there are some) name what works in a reduced way without
    making the node unready: wristband reading without zbar."""
    svc = services()
    checks: dict[str, str] = {}
    try:
        with svc.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; the type is enough to diagnose
        checks["database"] = f"failed: {type(exc).__name__}"
    checks["archive"] = svc.archive.check()
    ready = all(v == "ok" for v in checks.values())
    body: dict[str, object] = {"status": "ok" if ready else "unavailable", "checks": checks}
    if not ZBAR_AVAILABLE:
        body["warnings"] = [ZBAR_MISSING]
    return jsonify(body), 200 if ready else 503
