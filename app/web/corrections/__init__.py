"""Corrections (IHE IOCM), an admin action: the form at ``GET /admin/corrections`` posts to
``/admin/corrections/reject`` (reject an instance, with a reason) and
``/admin/corrections/patient`` (move a study to the right patient). Form posts carry the
session's CSRF token; the patient's ID goes in the form body, never in a URL.

Each correction takes two posts, as nothing undoes it: the first changes nothing and answers
the page with what would be done (the study's patient and, for a move, the directory's record
of the new one; the photo to reject, its study and patient), a form carrying the same values
in hidden fields with ``confirmed=yes`` and a Cancel link; only that second post corrects,
checked again from scratch. The preview, which shows patients, is audited
(``correction.preview``); the workflow (``app.workflow.corrections``) audits each correction
with the logged-in user as the actor. A refused step answers 422 (403 when not allowed) with
the reason (no PHI) and changes nothing.

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
from app.web.shell import confirmed
from app.workflow import audit, corrections

bp = Blueprint("corrections", __name__, url_prefix="/admin")
REASONS = (RejectionReason.QUALITY, RejectionReason.PATIENT_SAFETY, RejectionReason.WORKLIST)
"""The reasons an admin may give (retention has its own path)."""


def _page(status: int = 200, **context: Any) -> tuple[Response, int]:
    """The page for this caller: the UID forms for an admin (and the study named, when one
    is), their own studies still correctable for a clinician. The patients of the studies
    listed are shown, so the page is audited as reading them (``correction.preview``)."""
    login = current_login()
    own, minutes = None, services().settings.correction_window_minutes
    if g.caller.role != "admin" and minutes > 0:
        with services().db.session() as db:
            own = corrections.own_correctable(db, g.caller.user, timedelta(minutes=minutes))
        _audit_shown(own)
    response = Response(render_template(
        "corrections/index.html", csrf_token=login.csrf_token if login else "",
        reasons=REASONS, own=own, minutes=minutes,
        **{"result": None, "error": None, "preview": None, "study": None, **context}))
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


def _preview(kind: str, plan: corrections.RejectPlan | corrections.MovePlan,
             *patients: corrections.PatientSummary, **fields: str) -> tuple[Response, int]:
    """The page asking to confirm ``plan`` (``kind``: reject or move), with ``fields`` to post
    back; audited as ``correction.preview``, naming the patients it shows and the study."""
    g.audit_action = "correction.preview"
    g.audit_entities = [*(audit.patient_ref(p.patient_id, p.issuer) for p in patients),
                        audit.study_ref(plan.study_uid)]
    g.audit_detail = {"correction": kind}
    return _page(preview={"kind": kind, "plan": plan, "fields": fields})


def _audit_shown(studies: list[corrections.CorrectableStudy]) -> None:
    """Audit the page as showing the patients of ``studies`` (none: not audited)."""
    if studies and "audit_action" not in g:
        g.audit_action = "correction.preview"
        g.audit_entities = sorted({*(audit.patient_ref(s.patient.patient_id, s.patient.issuer)
                                     for s in studies),
                                   *(audit.study_ref(s.study_uid) for s in studies)})
        g.audit_detail = {"correction": "list"}


@bp.get("/corrections")
@require("admin", "capture")
def corrections_form() -> tuple[Response, int]:
    """The page; an admin may name a study (``?study=UID``, as the viewer's "Correct this
    study" does) to have its photos listed for rejection and its move form filled in."""
    _allowed()
    uid = request.args.get("study", "").strip()
    if not uid or g.caller.role != "admin":
        return _page()
    try:
        with services().db.session() as db:
            study = corrections.study_correctable(db, uid)
    except corrections.CorrectionError as exc:
        return _refused(exc)
    _audit_shown([study])
    return _page(study=study)


@bp.post("/corrections/reject")
@require("admin", "capture")
def reject_submit() -> tuple[Response, int]:
    actor, own_within = _allowed()
    reason = request.form.get("reason", "")
    if reason not in {r.value for r in REASONS}:
        return _page(422, error="choose the reason of the rejection")
    instance = request.form.get("instance", "").strip()
    try:
        if not confirmed():
            plan = corrections.plan_reject(services(), instance, actor=actor,
                                           own_within=own_within)
            return _preview("reject", plan, plan.patient, instance=instance, reason=reason)
        done = corrections.reject(services(), instance, RejectionReason(reason), actor=actor,
                                  own_within=own_within)
    except corrections.CorrectionError as exc:
        return _refused(exc)
    return _page(result={"title": "Rejected", "rejection": done, "new_study": None})


@bp.post("/corrections/patient")
@require("admin", "capture")
def patient_submit() -> tuple[Response, int]:
    actor, own_within = _allowed()
    fields = {name: request.form.get(name, "").strip()
              for name in ("study", "patient_id", "issuer", "reason")}
    args = (fields["study"], fields["patient_id"], fields["issuer"], fields["reason"])
    try:
        if not confirmed():
            plan = corrections.plan_move(services(), *args, actor=actor,
                                         own_within=own_within)
            return _preview("move", plan, plan.source, plan.target, **fields)
        moved = corrections.move_to_patient(services(), *args, actor=actor,
                                            own_within=own_within)
        patients = {"from": corrections.study_patient(services(), moved.old_study_uid),
                    "to": corrections.study_patient(services(), moved.new_study_uid)}
    except corrections.CorrectionError as exc:
        return _refused(exc)
    return _page(result={"title": "Moved to the right patient", "moved": patients,
                         "rejection": moved.rejection, "new_study": moved.new_study_uid})
