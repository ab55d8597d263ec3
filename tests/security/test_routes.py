"""Every route in app.url_map, anonymously and with an expired session: only the public ones
answer, everything else is 401 (never data).

Public, and why:

- ``/healthz``, ``/readyz``: load balancers probe them without credentials; they say only
  "ok" or which subsystem failed;
- ``/login`` (GET form, POST credentials), ``/logout`` (ending a session needs none), and
  ``/login/oidc`` + its callback when OpenID Connect is configured: the way in;
- ``/`` (the capture app shell), ``/batch`` (the batch import page's shell), ``/sw.js``,
  ``/manifest.webmanifest``, ``/static/…``: the same files for everyone, with no user data;
  the pages fetch everything else with credentials;
- ``/api/v1/openapi.json``: the API contract, no data;
- ``/studies/<uid>``: the viewer is a PHI-free shell (it holds only the UID from its own URL)
  whose scripts fetch everything from ``/dicomweb`` with the user's cookie, or with a bearer
  token an embedding EMR put in sessionStorage, which a page navigation cannot carry; access is
  checked and audited there.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from app.db.models import WebSession
from app.workflow.accounts import create_user
from tests.conftest import log_in, services
from tests.security.conftest import PHI_STRINGS, Study, seed_patient, store_study

PUBLIC = frozenset({
    "health.healthz", "health.readyz", "auth.login_form", "auth.login", "auth.logout",
    "oidc.start", "oidc.callback", "pwa.index", "pwa.service_worker", "pwa.manifest",
    "static", "api.openapi", "studies.viewer", "batch.batch_page",
})


def _values(study: Study) -> dict[str, str]:
    """Real identifiers for the URL placeholders, so a leak would show real data."""
    return {"study": study.study_uid, "series": study.series_uid, "sop": study.sop_uid,
            "study_uid": study.study_uid, "session_id": study.session_id,
            "upload_uuid": study.upload_uuid, "frames": "1", "tag": "7FE00010",
            "logical_id": study.fhir_patient_id or "1", "delivery_id": "1",
            "filename": "css/app.css"}


def _requests(app: Flask, study: Study) -> list[tuple[str, str, str]]:
    """(endpoint, method, URL) for every route and method (HEAD and OPTIONS aside)."""
    values = _values(study)
    found = []
    for rule in app.url_map.iter_rules():
        url = rule.rule
        for name in rule.arguments:  # a route added later gets a plausible "1"
            value = values.get(name, "1")
            url = url.replace(f"<{name}>", value).replace(
                f"<int:{name}>", value).replace(f"<path:{name}>", value)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((rule.endpoint, method, url))
    return found


def _assert_no_data(endpoint: str, method: str, url: str, status: int, body: bytes) -> None:
    assert status == 401, (endpoint, method, url, status, body[:200])
    text = body.decode("utf-8", "replace")
    for phi in PHI_STRINGS:
        assert phi not in text, (endpoint, url)


@pytest.fixture
def study(app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> Study:
    seed_patient(app)
    return store_study(app, client, auth["capture"])


def test_every_route_is_listed_as_public_or_refuses_anonymous_callers(
        app: Flask, study: Study) -> None:
    client = app.test_client()
    requests = _requests(app, study)
    assert len(requests) > 40
    public_seen = set()
    for endpoint, method, url in requests:
        response = client.open(url, method=method, data=b"", headers={"Accept": "*/*"})
        if endpoint in PUBLIC:
            public_seen.add(endpoint)
            text = response.get_data(as_text=True)
            assert not [phi for phi in PHI_STRINGS if phi in text], (endpoint, url)
            continue
        _assert_no_data(endpoint, method, url, response.status_code, response.data)
    assert public_seen >= PUBLIC - {"oidc.start", "oidc.callback", "batch.batch_page"}


def test_an_expired_session_is_worth_nothing_anywhere(app: Flask, study: Study) -> None:
    db = services(app).db
    for role in ("capture", "view", "admin"):
        create_user(db, f"{role}-expiring", "correct horse battery staple", role)
    for role, column in (("admin", "last_seen_at"), ("view", "created_at"),
                         ("capture", "last_seen_at")):
        client = app.test_client()
        token = log_in(client, f"{role}-expiring")
        assert client.get("/api/v1/me").status_code == 200
        age = timedelta(minutes=16) if column == "last_seen_at" else timedelta(hours=13)
        with db.session() as session:
            session.execute(update(WebSession).values(
                **{column: datetime.now(UTC) - age}))
        for endpoint, method, url in _requests(app, study):
            if endpoint in PUBLIC:
                continue
            response = client.open(url, method=method, data=b"",
                                   headers={"X-CSRF-Token": token})
            _assert_no_data(endpoint, method, url, response.status_code, response.data)


def test_html_routes_answer_401_with_a_page_that_leads_to_the_login(
        app: Flask, study: Study) -> None:
    response = app.test_client().get("/admin/deliveries", headers={"Accept": "text/html"})
    assert response.status_code == 401
    assert response.mimetype == "text/html"
    assert b'href="/login?next=/admin/deliveries"' in response.data  # and back there after
    assert b"<script" not in response.data
