"""Retention, an admin page: ``GET /admin/retention`` shows the dry-run report (studies due,
held, undetermined) and the legal holds, each study named by its patient (name, MRN with
issuer), date, department, body site and photos, its UID below for reference, so that an
admin recognises what a purge deletes or a hold keeps; a held patient is named as their
latest study here names them, or by the hold's own ID and issuer when no study of theirs is
here. ``POST /admin/retention/purge`` purges the studies the page listed (each still due, and
the confirmation box ticked), ``POST /admin/retention/hold`` and ``/admin/retention/release``
set and release a legal hold on a study or a patient. A release takes two posts, as it gives
the studies back to the purge: the first changes nothing and answers with what it would
release (the patient or study, the hold's reason, who set it and when; audited as
``retention.preview``), a form posting the same target back with ``confirmed=yes`` and a
Cancel link; only that second post releases, checked again. Forms carry the session's CSRF
token; a patient's ID goes in the form body, never in a URL. Every answer that shows the
report is audited as ``retention.read``, naming the patients shown; the workflow
(``app.workflow.retention``) audits each action with the logged-in admin as the actor; a
refused one answers 422 with the reason (no PHI) and changes nothing.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, render_template, request

from app.web import services
from app.web.auth import current_login, require
from app.web.shell import confirmed
from app.workflow import audit, retention

bp = Blueprint("retention", __name__, url_prefix="/admin")


def _page(status: int = 200, **context: Any) -> tuple[Response, int]:
    """The page: the confirmation of ``preview`` (a :class:`retention.ReleasePlan`) alone, or
    else the report as of now (or why there is none) and the holds, each study with its
    patient, date, department, body site and photos, each held patient named, audited as
    ``retention.read`` with the patients and studies it shows."""
    login = current_login()
    context = {"purged": None, "done": None, "error": None, "preview": None, **context}
    if context["preview"] is None:
        context.update(_report())
    response = Response(render_template(
        "retention/index.html", csrf_token=login.csrf_token if login else "", **context))
    response.headers["Cache-Control"] = "no-store"
    return response, status


def _report() -> dict[str, Any]:
    """The report, the facts of every study it lists (due, held, undetermined) and of every
    held study, the holds and the patients of the patient holds, for the page; names the
    patients and studies it shows (the studies' first, as listed) in this request's audit
    record (``retention.read``)."""
    try:
        report, report_error = retention.report(services()), None
    except retention.RetentionError as exc:
        report, report_error = None, str(exc)
    holds = retention.holds(services())
    listed = [a.study_uid for a in (*report.due, *report.held, *report.undetermined)] \
        if report else []
    shown = [*listed, *(h.study_uid for h in holds if h.study_uid)]
    facts = retention.study_facts(services(), shown)
    held_patients = retention.held_patients(services(), holds)
    g.audit_action = "retention.read"
    g.audit_entities = list(dict.fromkeys([
        *(ref for uid in shown if uid in facts for ref in (
            audit.patient_ref(facts[uid].patient.patient_id, facts[uid].patient.issuer),
            audit.study_ref(uid))),
        *(audit.patient_ref(h.patient_id, h.issuer) for h in holds
          if h.patient_id and h.issuer)]))
    return {"report": report, "report_error": report_error, "facts": facts, "holds": holds,
            "held_patients": held_patients}


def _target() -> retention.HoldTarget:
    form = request.form
    return retention.HoldTarget(form.get("study", "").strip() or None,
                                form.get("issuer", "").strip() or None,
                                form.get("patient_id", "").strip() or None)


@bp.get("/retention")
@require("admin")
def retention_page() -> tuple[Response, int]:
    return _page()


@bp.post("/retention/purge")
@require("admin")
def purge_submit() -> tuple[Response, int]:
    studies = [uid.strip() for uid in request.form.getlist("study") if uid.strip()]
    if request.form.get("confirm") != "yes":
        return _page(422, error="tick the box to confirm the purge")
    if not studies:
        return _page(422, error="no study is due")
    try:
        done = retention.purge(services(), actor=g.caller.user, studies=studies)
    except retention.RetentionError as exc:
        return _page(422, error=str(exc))
    return _page(purged=done)


@bp.post("/retention/hold")
@require("admin")
def hold_submit() -> tuple[Response, int]:
    try:
        target = _target()
        retention.set_hold(services(), target, request.form.get("reason", ""),
                           actor=g.caller.user)
    except retention.RetentionError as exc:
        return _page(422, error=str(exc))
    return _page(done=f"The {target.scope} is on legal hold.")


@bp.post("/retention/release")
@require("admin")
def release_submit() -> tuple[Response, int]:
    try:
        target = _target()
        if not confirmed():
            return _release_preview(retention.plan_release(services(), target))
        retention.release_hold(services(), target, actor=g.caller.user)
    except retention.RetentionError as exc:
        return _page(422, error=str(exc))
    return _page(done=f"The {target.scope}'s legal hold is released.")


def _release_preview(plan: retention.ReleasePlan) -> tuple[Response, int]:
    """The page asking to confirm the release of ``plan``'s hold, with its target to post
    back; audited as ``retention.preview``, naming its patient and study."""
    g.audit_action = "retention.preview"
    g.audit_entities = [audit.patient_ref(plan.patient.patient_id, plan.patient.issuer),
                        *((audit.study_ref(plan.target.study_uid),) if plan.target.study_uid
                          else ())]
    g.audit_detail = {"release": plan.target.scope}
    return _page(preview=plan)
