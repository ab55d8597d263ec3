"""Corrections (IHE IOCM), an admin action: the form at ``GET /admin/corrections`` posts to
``/admin/corrections/reject`` (reject an instance, with a reason) and
``/admin/corrections/patient`` (move a study to the right patient). Form posts carry the
session's CSRF token; the patient's ID goes in the form body, never in a URL. The workflow
(``app.workflow.corrections``) audits each correction with the logged-in user as the actor;
a refused one answers 422 with the reason (no PHI) and changes nothing.

Admins correct any study, named by its UIDs. With ``EBIW_CORRECTION_WINDOW_MINUTES`` above 0 a
``capture`` user may too, for the studies they captured, that long after capturing them (403
otherwise): the page then lists those studies, each photo with its thumbnail and a Reject
button and each study with a form to move it to the right patient, so that nothing has to be
typed but the right patient's ID; the header links the page for them then, never while the
window is 0 (:func:`app.web.shell.nav`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, abort, g, render_template, request

from app.pipeline.dicom.kos import RejectionReason
from app.web import services
from app.web.auth import current_login, require
from app.workflow import corrections

bp = Blueprint("corrections", __name__, url_prefix="/admin")
REASONS = (RejectionReason.QUALITY, RejectionReason.PATIENT_SAFETY, RejectionReason.WORKLIST)
"""The reasons an admin may give (retention has its own path)."""


def _page(status: int = 200, **context: Any) -> tuple[Response, int]:
    """The page for this caller: the UID forms for an admin, their own studies still
    correctable for a clinician."""
    login = current_login()
    own, minutes = None, services().settings.correction_window_minutes
    if g.caller.role != "admin" and minutes > 0:
        with services().db.session() as db:
            own = corrections.own_correctable(db, g.caller.user, timedelta(minutes=minutes))
    response = Response(render_template(
        "corrections/index.html", csrf_token=login.csrf_token if login else "",
        reasons=REASONS, own=own, minutes=minutes,
        **{"result": None, "error": None, **context}))
    response.headers["Cache-Control"] = "no-store"
    return response, status


def _allowed() -> tuple[str, timedelta | None]:
    """(the actor, how long after capturing they may correct their own studies: None for an
    admin); aborts with 403 for a clinician while the window is 0."""
    caller = g.caller
    if caller.role == "admin":
        return caller.user, None
    minutes = services().settings.correction_window_minutes
    if minutes <= 0:
        abort(403)
    return caller.user, timedelta(minutes=minutes)


def _refused(exc: corrections.CorrectionError) -> tuple[Response, int]:
    return _page(403 if isinstance(exc, corrections.NotAllowed) else 422, error=str(exc))


@bp.get("/corrections")
@require("admin", "capture")
def corrections_form() -> tuple[Response, int]:
    _allowed()
    return _page()


@bp.post("/corrections/reject")
@require("admin", "capture")
def reject_submit() -> tuple[Response, int]:
    actor, own_within = _allowed()
    reason = request.form.get("reason", "")
    if reason not in {r.value for r in REASONS}:
        return _page(422, error="choose the reason of the rejection")
    try:
        done = corrections.reject(services(), request.form.get("instance", "").strip(),
                                  RejectionReason(reason), actor=actor, own_within=own_within)
    except corrections.CorrectionError as exc:
        return _refused(exc)
    return _page(result={"title": "Rejected", "rejection": done, "new_study": None})


@bp.post("/corrections/patient")
@require("admin", "capture")
def patient_submit() -> tuple[Response, int]:
    actor, own_within = _allowed()
    form = request.form
    try:
        moved = corrections.move_to_patient(
            services(), form.get("study", "").strip(), form.get("patient_id", "").strip(),
            form.get("issuer", "").strip(), form.get("reason", ""), actor=actor,
            own_within=own_within)
    except corrections.CorrectionError as exc:
        return _refused(exc)
    return _page(result={"title": "Moved to the right patient",
                         "rejection": moved.rejection, "new_study": moved.new_study_uid})
