"""CSRF on every state-changing request made with the session cookie; CORS refused."""

from __future__ import annotations

import json
import uuid

from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import PASSWORD, log_in
from tests.security.conftest import PHOTO, seed_patient

SESSION = {"patient": {"id": "00123456", "issuer": "LOCAL"}, "body_site": "14975008",
           "laterality": "L"}


def _writes(session_id: str) -> list[tuple[str, str, dict]]:
    """(method, URL, request keyword arguments) of every state-changing API request."""
    return [
        ("POST", "/api/v1/sessions", {"json": {**SESSION, "id": str(uuid.uuid4())}}),
        ("PUT", f"/api/v1/sessions/{session_id}/photos/{uuid.uuid4()}",
         {"data": PHOTO, "content_type": "image/jpeg"}),
        ("POST", f"/api/v1/sessions/{session_id}/complete", {}),
        ("POST", "/api/v1/identify", {"json": {"barcode": "15182881"}}),
        ("POST", "/api/v1/patients/search", {"json": {"mrn": "15182881"}}),
        ("POST", "/admin/api/deliveries/retry", {"json": {}}),
        ("POST", "/admin/deliveries/retry", {"data": {"destination": "x"}}),
        ("POST", "/fhir/Patient/_search", {"data": {"identifier": "x|1"}}),
        ("POST", "/logout", {}),
    ]


def test_cookie_writes_without_the_csrf_token_are_refused_everywhere(
        app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    seed_patient(app)
    token = log_in(client, users["admin"])
    opened = client.post("/api/v1/sessions", json=SESSION, headers={"X-CSRF-Token": token})
    assert opened.status_code == 201
    session_id = opened.get_json()["id"]
    for method, url, kwargs in _writes(session_id):
        for headers in ({}, {"X-CSRF-Token": "x" * 43}):
            response = client.open(url, method=method, headers=headers, **kwargs)
            assert response.status_code == 403, (method, url, response.status_code)
            assert response.get_json()["error"]["code"] == "csrf", (method, url)
    # with the token every one of them goes through (logout last: it ends the session)
    for method, url, kwargs in _writes(session_id):
        response = client.open(url, method=method, headers={"X-CSRF-Token": token}, **kwargs)
        assert response.status_code not in (401, 403), (method, url, response.get_json())


def test_form_posts_carry_the_token_in_a_field(client: FlaskClient,
                                               users: dict[str, str]) -> None:
    token = log_in(client, users["admin"])
    refused = client.post("/logout", data={"next": "/"})
    assert refused.status_code == 403
    ok = client.post("/logout", data={"csrf_token": token})
    assert ok.status_code == 303 and client.get("/api/v1/me").status_code == 401


def test_bearer_requests_need_no_csrf_token(client: FlaskClient,
                                            auth: dict[str, dict[str, str]]) -> None:
    response = client.post("/api/v1/sessions", json=SESSION, headers=auth["capture"])
    assert response.status_code == 201


def test_login_from_another_site_is_refused(client: FlaskClient,
                                            users: dict[str, str]) -> None:
    credentials = {"username": users["capture"], "password": PASSWORD}
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
        response = client.post("/login", data=credentials, headers=headers)
        assert response.status_code == 403, headers
        assert "Set-Cookie" not in response.headers
    assert client.post("/login", data=credentials,
                       headers={"Sec-Fetch-Site": "same-origin"}).status_code == 303


def test_cors_preflights_get_no_allowance(client: FlaskClient) -> None:
    for url in ("/api/v1/sessions", "/dicomweb/studies", "/fhir/Patient", "/login"):
        response = client.options(url, headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert response.status_code == 403, url
        assert not [k for k, _ in response.headers.items()
                    if k.lower().startswith("access-control-")]


def test_cross_origin_requests_are_refused_or_left_unreadable(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    evil = {"Origin": "https://evil.example"}
    write = client.post("/api/v1/sessions", data=json.dumps(SESSION),
                        headers={**auth["capture"], **evil, "Content-Type": "application/json"})
    assert write.status_code == 403 and write.get_json()["error"]["code"] == "cross_origin"
    read = client.get("/api/v1/body-sites", headers={**auth["view"], **evil})
    assert "Access-Control-Allow-Origin" not in read.headers
    same = client.post("/api/v1/sessions", json=SESSION,
                       headers={**auth["capture"], "Origin": "http://localhost"})
    assert same.status_code == 201
