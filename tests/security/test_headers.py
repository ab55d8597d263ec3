"""Security headers and cache policy on every kind of response; uniform error bodies."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from app.factory import create_app
from app.web.security import CONTENT_SECURITY_POLICY
from app.workflow.accounts import create_user
from app.workflow.tokens import create_token
from tests.conftest import services
from tests.security.conftest import PHI_STRINGS, PHOTO, seed_patient, store_study

SECRET = "QUIMBYZ^ORLANDA 15182881 1961-02-03"


def _boom() -> str:
    raise RuntimeError(SECRET)


@pytest.fixture
def hardened(tmp_path: Path, database_url: str) -> Iterator[Flask]:
    """The app with test-only routes that fail (an API one and an HTML one), a small upload
    limit for 413s."""
    app = create_app({"data_dir": tmp_path / "var", "env": "test",
                      "database_url": database_url, "max_upload_bytes": 2_000_000})
    app.add_url_rule("/api/v1/_boom", "boom_api", _boom)
    app.add_url_rule("/_boom", "boom_page", _boom)
    services(app).db.create_schema()
    yield app
    services(app).db.engine.dispose()


def assert_hardened(response: TestResponse, *, https: bool = False) -> None:
    headers = response.headers
    csp = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp and "script-src 'self'" in csp
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    # no referrer leaves the site; pages showing a patient's photos send none at all
    assert headers["Referrer-Policy"] in ("same-origin", "no-referrer")
    assert not [k for k in headers if k[0].lower().startswith("access-control-")]
    assert ("Strict-Transport-Security" in headers) == https
    if response.status_code >= 400:
        assert headers["Cache-Control"] == "no-store"
        text = response.get_data(as_text=True)
        assert "Traceback" not in text and "RuntimeError" not in text
        for phi in (*PHI_STRINGS, SECRET):
            assert phi not in text


def test_every_kind_of_response_is_hardened(hardened: Flask) -> None:
    token = {"Authorization": f"Bearer {create_token(services(hardened).db, 'u', 'capture')}"}
    client = hardened.test_client()
    cases = {
        "200 json": client.get("/healthz"),
        "200 api": client.get("/api/v1/me", headers=token),
        "200 shell": client.get("/"),
        "200 login page": client.get("/login"),
        "static": client.get("/static/css/app.css"),
        "sw.js": client.get("/sw.js"),
        "manifest": client.get("/manifest.webmanifest"),
        "openapi": client.get("/api/v1/openapi.json"),
        "viewer": client.get("/studies/1.2.3"),
        "401": client.get("/api/v1/me"),
        "404 api": client.get(f"/api/v1/sessions/{uuid.uuid4()}", headers=token),
        "404 page": client.get("/no/such/page", headers={"Accept": "text/html"}),
        "404 json": client.get("/no/such/page"),
        "405": client.delete("/api/v1/sessions", headers=token),
        "413": client.put(f"/api/v1/sessions/{uuid.uuid4()}/photos/{uuid.uuid4()}",
                          data=b"\xff" * 2_100_000,
                          headers={**token, "Content-Type": "image/jpeg"}),
        "500 api": client.get("/api/v1/_boom"),
        "500 page": client.get("/_boom", headers={"Accept": "text/html"}),
        "fhir 401": client.get("/fhir/Patient/1"),
        "dicomweb 401": client.get("/dicomweb/studies"),
    }
    for name, response in cases.items():
        try:
            assert_hardened(response)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
    assert cases["static"].status_code == 200 and cases["sw.js"].status_code == 200
    assert cases["413"].status_code == 413
    assert cases["413"].get_json()["error"]["code"] == "request_entity_too_large"
    for name in ("500 api", "500 page"):
        assert cases[name].status_code == 500
    assert cases["500 api"].get_json() == {"error": {
        "code": "internal_error",
        "message": "The server encountered an internal error and was unable to complete "
                   "your request"}}
    page = cases["500 page"]
    assert page.mimetype == "text/html" and b"<script" not in page.data
    assert cases["404 page"].mimetype == "text/html"
    assert cases["404 json"].get_json()["error"]["code"] == "not_found"
    # same-origin referrers, so that the pages' own form posts carry their real Origin (under
    # no-referrer Chromium sends "Origin: null" and the login form was refused); the viewer
    # keeps its stricter no-referrer
    for name in ("200 shell", "200 login page", "401", "404 page", "500 page"):
        assert cases[name].headers["Referrer-Policy"] == "same-origin", name
    for name in ("200 shell", "200 login page"):
        assert b'<meta name="referrer" content="same-origin">' in cases[name].data, name
    assert cases["viewer"].headers["Referrer-Policy"] == "no-referrer"
    # the app's own policy everywhere, the viewer's stricter one kept (frame-ancestors added)
    assert cases["200 shell"].headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "img-src 'self' blob:;" in cases["viewer"].headers["Content-Security-Policy"]


def test_cache_policy_no_store_on_phi_private_on_thumbnails(
        app: Flask, auth: dict[str, dict[str, str]]) -> None:
    client = app.test_client()
    seed_patient(app)
    study = store_study(app, client, auth["capture"], PHOTO)
    base = f"/dicomweb/studies/{study.study_uid}"
    view = auth["view"]
    for url, headers in [
            (f"/api/v1/sessions/{study.session_id}", auth["capture"]),
            ("/api/v1/body-sites", view), ("/api/v1/me", view),
            (f"{base}/metadata", view), (base, {**view, "Accept": "multipart/related; "
                                                "type=\"application/dicom\""}),
            (f"{base}/series/{study.series_uid}/instances/{study.sop_uid}/rendered", view),
            (f"/fhir/Patient/{study.fhir_patient_id}", view),
            (f"/studies/{study.study_uid}", {})]:
        response = client.get(url, headers=headers)
        assert response.status_code == 200, (url, response.status_code)
        assert response.headers["Cache-Control"] == "no-store", url
        assert_hardened(response)
    thumb = client.get(f"{base}/thumbnail", headers=view)
    assert thumb.status_code == 200
    assert thumb.headers["Cache-Control"].startswith("private, max-age=")
    assert_hardened(thumb)
    static = client.get("/static/js/app.js")
    assert "no-store" not in static.headers.get("Cache-Control", "")


def test_hsts_and_host_prefixed_cookies_over_https(tmp_path: Path) -> None:
    app = create_app({"data_dir": tmp_path, "env": "test",
                      "public_url": "https://wounds.example.org"})
    services(app).db.create_schema()
    create_user(services(app).db, "nurse", "correct horse battery staple", "capture")
    client = app.test_client()
    for response in (client.get("/healthz", base_url="https://wounds.example.org"),
                     client.get("/nope", base_url="https://wounds.example.org")):
        assert_hardened(response, https=True)
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    login = client.post("/login", json={"username": "nurse",
                                        "password": "correct horse battery staple"},
                        base_url="https://wounds.example.org")
    cookie = login.headers["Set-Cookie"]
    assert cookie.startswith("__Host-ebiw_session=")
    for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in cookie
    assert "Domain" not in cookie
    me = client.get("/api/v1/me", base_url="https://wounds.example.org")
    assert me.status_code == 200 and me.get_json()["user"] == "nurse"


def test_plain_http_development_keeps_an_unprefixed_cookie_and_no_hsts(
        app: Flask, users: dict[str, str]) -> None:
    client = app.test_client()
    response = client.post("/login", json={"username": users["capture"],
                                           "password": "correct horse battery staple"})
    assert response.headers["Set-Cookie"].startswith("ebiw_session=")
    assert "Secure" not in response.headers["Set-Cookie"]
    assert_hardened(response)
