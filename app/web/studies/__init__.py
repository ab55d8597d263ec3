"""The study viewer at /studies/<StudyInstanceUID>: the page an EMR link opens.

The page itself holds no PHI: it is a shell whose ES modules (``static/js/viewer*.js``) fetch
everything from /dicomweb with the user's credentials (the session cookie, or a bearer token the
embedding app put in sessionStorage), so access is checked and audited where the data is served.
It is sent with a strict Content Security Policy: scripts and styles from this origin only.
The things rendered on the server, for a logged-in user who may see the study, are the photos'
quality record and a link to the trajectory of each wound measured in the study (its label and
tracking UID: no patient identifier).
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, abort, current_app, render_template, url_for
from sqlalchemy import select

from app.db.models import CaptureSession, Instance, Photo
from app.pipeline.quality import TEXTS
from app.web import services
from app.web.auth import current_login
from app.web.dicomweb import study_visible
from app.web.errors import error_response
from app.web.launch import OTHER_PATIENT
from app.web.studies.wounds import study_wounds

bp = Blueprint("studies", __name__, url_prefix="/studies")

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; "
                           "form-action 'self'")


@bp.get("/<study_uid>")
def viewer(study_uid: str) -> Response | tuple[Response, int]:
    """The viewer page for one study (404 for anything that is not a UID; 403 when the
    session cookie is of a session launched from the EMR for another patient)."""
    if not (len(study_uid) <= 64 and _UID.match(study_uid)):
        abort(404)
    login = current_login()
    if login is not None and not study_visible(study_uid, login.caller):
        return error_response(403, "other_patient", OTHER_PATIENT)
    login_url = url_for("auth.login_form") if "auth.login_form" in current_app.view_functions \
        else ""
    html = render_template("studies/viewer.html", study_uid=study_uid, login_url=login_url,
                           dicomweb=url_for("dicomweb.search_studies").rsplit("/studies", 1)[0],
                           api=url_for("api.me").rsplit("/me", 1)[0],
                           quality=_photo_quality(study_uid) if login is not None else [],
                           wounds=study_wounds(study_uid) if login is not None else [],
                           unverified=login is not None and _unverified(study_uid))
    response = Response(html, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


# The compact words of a check on the study page, by (check id, ok) or by its text.
_WORDS: dict[tuple[str, bool | None] | str, str] = {
    ("sharpness", True): "Sharp", ("sharpness", False): "Blurry",
    ("exposure", True): "exposure ok", TEXTS["exposure_dark"]: "too dark",
    TEXTS["exposure_bright"]: "too bright", ("chart", True): "chart found",
    ("chart", False): "no chart", TEXTS["distance_close"]: "too close",
    ("glare", False): "glare"}


def quality_items(quality: dict[str, Any]) -> list[tuple[str, bool | None]]:
    """A stored quality record as the study page's words, (text, ok) in the order sharpness,
    exposure, chart, tilt, distance, glare; glare only when there is some, tilt and distance
    only when measured."""
    checks = {c["id"]: c for c in quality.get("checks", [])}
    items: list[tuple[str, bool | None]] = []
    for check_id in ("sharpness", "exposure", "chart", "tilt", "distance", "glare"):
        check = checks.get(check_id)
        if check is None:
            continue
        ok, value = check["ok"], check["value"]
        word = _WORDS.get(check["text"]) or _WORDS.get((check_id, ok))
        if word is None and value is not None and check_id in ("tilt", "distance"):
            word = f"tilt {value:.0f}°" if check_id == "tilt" else f"{value:.1f} px/mm"
        if word is not None:
            items.append((word, ok))
    return items


def _unverified(study_uid: str) -> bool:
    """Whether the study's capture session was opened for a patient no directory knew and
    has not been confirmed since (``EBIW_UNKNOWN_PATIENTS=hold``)."""
    with services().db.session() as db:
        return db.scalar(select(CaptureSession.patient_verified)
                         .where(CaptureSession.study_uid == study_uid)) is False


def _photo_quality(study_uid: str) -> list[tuple[int, list[tuple[str, bool | None]]]]:
    """(Instance Number, quality words) of the study's photos that have a quality record."""
    with services().db.session() as db:
        photos = db.scalars(select(Photo).join(Photo.instance)
                            .where(Instance.study_uid == study_uid, Instance.shown())
                            .order_by(Photo.instance_number)).all()
        return [(p.instance_number, quality_items(p.quality)) for p in photos if p.quality]
