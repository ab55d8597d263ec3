"""A wound's healing trajectory: the page at /wounds/<TrackingUID> (chart and table) and its CSV
(served by the API at /api/v1/wounds/<TrackingUID>/trajectory.csv, with this module's answer).

The wound is named by its Tracking Unique Identifier only, never by a patient identifier, so
no MRN reaches a URL or a log. Access follows the viewer's data rules: the ``view`` or
``capture`` role (401 without credentials, 403 without the role), 403 for a session launched
from the EMR for another patient, 404 for a UID no measurement has. Both answers are audited
(``wound.read``, ``wound.export``; refusals too) with the wound, its patient, studies and
reports, and are never cached. The figures come from `app.workflow.trajectory`; the page is
served under the viewer's strict CSP: the chart is drawn by the vendored Chart.js from the
figures of the table (``static/js/wound.js``), never from inline script.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, abort, g, render_template, url_for
from sqlalchemy import select

from app.db.models import WoundMeasurement
from app.web import services
from app.web.auth import require
from app.web.errors import error_response
from app.web.launch import OTHER_PATIENT
from app.workflow import audit
from app.workflow.trajectory import (
    FOUR_WEEK_WINDOW,
    PREDICTOR_REDUCTION_PERCENT,
    TRACKED,
    UNITS,
    Trajectory,
    UnknownWound,
    trajectory_csv,
    wound_trajectory,
)

bp = Blueprint("wounds", __name__, url_prefix="/wounds")

ROLES = ("view", "capture")
"""The roles that may read a trajectory: those that may read the viewer's data."""
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                           "img-src 'self'; connect-src 'self'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
CSV_FILENAME = "wound-trajectory.csv"
"""The CSV's file name: the same for every wound, so it can carry no PHI."""


def _trajectory(tracking_uid: str) -> Trajectory | tuple[Response, int]:
    """The wound's trajectory for this caller, its audit entities set; or the refusal."""
    if not (len(tracking_uid) <= 64 and _UID.match(tracking_uid)):
        abort(404)
    g.audit_entities = [f"wound:{tracking_uid}"]
    try:
        trajectory = wound_trajectory(services(), tracking_uid)
    except UnknownWound:
        abort(404)
    g.audit_entities += [audit.patient_ref(trajectory.patient_id, trajectory.issuer),
                         *(audit.study_ref(v.study_uid) for v in trajectory.visits),
                         *(audit.instance_ref(v.report_sop_uid) for v in trajectory.visits)]
    if not g.caller.sees(trajectory.patient_id, trajectory.issuer):
        return error_response(403, "other_patient", OTHER_PATIENT)
    return trajectory


def _private(response: Response, policy: str | None = None) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if policy:
        response.headers["Content-Security-Policy"] = policy
    return response


@bp.get("/<tracking_uid>")
@require(*ROLES)
def trajectory_page(tracking_uid: str) -> Response | tuple[Response, int]:
    """The trajectory page: the 4-week area reduction, the chart and the same figures as a
    table (the quantities some visit measured), each visit linked to its study in the viewer."""
    trajectory = _trajectory(tracking_uid)
    if isinstance(trajectory, tuple):
        return trajectory
    html = render_template(
        "studies/wound.html", t=trajectory, units=UNITS,
        quantities=[q for q in TRACKED if any(q in v.figures for v in trajectory.visits)],
        predictor=PREDICTOR_REDUCTION_PERCENT,
        window_weeks=tuple(int(w.days // 7) for w in FOUR_WEEK_WINDOW),
        csv_url=url_for("api.wound_trajectory_csv", tracking_uid=tracking_uid))
    return _private(Response(html, content_type="text/html; charset=utf-8"),
                    CONTENT_SECURITY_POLICY)


def trajectory_csv_response(tracking_uid: str) -> Response | tuple[Response, int]:
    """The trajectory as CSV (`app.workflow.trajectory.trajectory_csv`), as an attachment
    named :data:`CSV_FILENAME`; for ``GET /api/v1/wounds/<uid>/trajectory.csv``, whose view
    (``app.web.api``) checks the roles."""
    trajectory = _trajectory(tracking_uid)
    if isinstance(trajectory, tuple):
        return trajectory
    response = Response(trajectory_csv(trajectory), content_type="text/csv; charset=utf-8")
    response.headers["Content-Disposition"] = f'attachment; filename="{CSV_FILENAME}"'
    return _private(response)


def study_wounds(study_uid: str) -> list[tuple[str, str]]:
    """(label, trajectory page URL) of each wound measured in ``study_uid`` (not on a
    rejected report or photo), by label."""
    with services().db.session() as db:
        rows = db.execute(select(WoundMeasurement.tracking_uid, WoundMeasurement.wound_label)
                          .where(WoundMeasurement.study_uid == study_uid,
                                 WoundMeasurement.shown())
                          .distinct()).all()
    labels = {uid: label for uid, label in rows}
    return sorted(((label, url_for("wounds.trajectory_page", tracking_uid=uid))
                   for uid, label in labels.items()), key=lambda item: item[0].casefold())
