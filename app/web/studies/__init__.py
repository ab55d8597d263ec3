"""The study viewer at /studies/<StudyInstanceUID>: the page an EMR link opens.

The page itself holds no PHI: it is a shell whose ES modules (``static/js/viewer*.js``) fetch
everything from /dicomweb with the user's credentials (the session cookie, or a bearer token the
embedding app put in sessionStorage), so access is checked and audited where the data is served.
It is sent with a strict Content Security Policy: scripts and styles from this origin only.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, abort, current_app, render_template, url_for

from app.web.auth import current_login
from app.web.dicomweb import study_visible
from app.web.errors import error_response
from app.web.launch import OTHER_PATIENT

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
                           dicomweb=url_for("dicomweb.search_studies").rsplit("/studies", 1)[0])
    response = Response(html, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response
