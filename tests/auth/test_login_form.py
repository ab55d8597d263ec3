"""The plain login form (``/login``): its token against cross-site posts, and what it says when
a login is refused (wrong credentials, a locked account), alike for unknown usernames."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from app.db.models import LoginThrottle
from app.factory import create_app
from tests.conftest import PASSWORD, log_in, services

WRONG = "wrong password!!"


def form_token(client: FlaskClient) -> str:
    """Open ``/login``; the token of its form, which must equal the login form cookie's."""
    page = client.get("/login")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    found = re.search(rb'name="login_token" value="([A-Za-z0-9_-]{43})"', page.data)
    assert found, page.data
    cookie = client.get_cookie("ebiw_login")
    assert cookie is not None and cookie.value == found.group(1).decode()
    return cookie.value


def alert(page: bytes) -> str:
    """The text of the login page's alert."""
    found = re.search(rb'<p id="login-message" class="alert" role="alert">([^<]*)</p>', page)
    assert found, page
    return found.group(1).decode()


def test_the_form_carries_a_token_equal_to_a_strict_httponly_cookie(
        client: FlaskClient) -> None:
    token = form_token(client)
    cookie = client.get("/login").headers["Set-Cookie"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in cookie
    assert form_token(client) == token  # the same browser keeps its token
    other = form_token(client.application.test_client())
    assert other != token
    client.set_cookie("ebiw_login", "<b>not a token</b>")
    assert form_token(client) not in (token, "<b>not a token</b>")  # replaced, never echoed


def test_the_token_is_host_prefixed_and_secure_over_https(tmp_path: Path) -> None:
    app = create_app({"data_dir": tmp_path, "env": "test",
                      "public_url": "https://wounds.example.org"})
    services(app).db.create_schema()
    page = app.test_client().get("/login", base_url="https://wounds.example.org")
    cookie = page.headers["Set-Cookie"]
    assert cookie.startswith("__Host-ebiw_login=") and "Secure" in cookie
    assert "Domain" not in cookie


def test_origin_null_needs_the_token_or_fetch_metadata_saying_same_origin(
        client: FlaskClient, users: dict[str, str]) -> None:
    """Chromium posts the form with ``Origin: null`` (a no-referrer page, e.g. one still
    cached from before) and ``Sec-Fetch-Site: same-origin``; a sandboxed frame of another site
    sends ``Origin: null`` too, but neither the cookie nor its value."""
    token = form_token(client)
    credentials = {"username": users["admin"], "password": PASSWORD}
    null = {"Origin": "null"}
    for data, headers in [
            (credentials, null),  # no token
            ({**credentials, "login_token": "x" * 43}, null),  # a wrong one
            ({**credentials, "login_token": token}, {**null, "Sec-Fetch-Site": "cross-site"}),
            ({**credentials, "login_token": token}, {"Origin": "https://evil.example"}),
            ({**credentials, "login_token": token}, {"Sec-Fetch-Site": "same-site"})]:
        refused = client.post("/login", data=data, headers=headers)
        assert refused.status_code == 403, (data, headers)
        assert refused.get_json()["error"]["code"] == "cross_origin"
        assert "Set-Cookie" not in refused.headers
    assert client.get("/api/v1/me").status_code == 401
    # the token alone is not enough either: another browser has no such cookie
    stranger = client.application.test_client()
    assert stranger.post("/login", data={**credentials, "login_token": token},
                         headers=null).status_code == 403
    ok = client.post("/login", data={**credentials, "login_token": token}, headers=null)
    assert ok.status_code == 303 and ok.headers["Location"] == "/"
    assert client.get("/api/v1/me").get_json()["user"] == users["admin"]
    chromium = client.application.test_client()
    same = chromium.post("/login", data=credentials,
                         headers={**null, "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 303
    assert chromium.get("/admin/deliveries", headers={"Accept": "text/html"}).status_code == 200


def test_the_json_login_from_the_app_keeps_working(client: FlaskClient,
                                                   users: dict[str, str]) -> None:
    response = client.post("/login", json={"username": users["capture"], "password": PASSWORD},
                           headers={"Origin": "http://localhost",
                                    "Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 200 and response.get_json()["user"] == users["capture"]
    refused = client.post("/login", json={"username": users["capture"], "password": PASSWORD},
                          headers={"Origin": "null"})
    assert refused.status_code == 403


def test_wrong_password_and_unknown_user_get_the_same_page(
        client: FlaskClient, users: dict[str, str]) -> None:
    token = form_token(client)
    answers = [client.post("/login", data={"username": name, "password": WRONG,
                                           "login_token": token})
               for name in (users["capture"], "nobody-here")]
    assert [a.status_code for a in answers] == [401, 401]
    assert answers[0].data == answers[1].data
    assert alert(answers[0].data) == "Wrong username or password."
    assert b"ended" not in answers[0].data and b"locked" not in answers[0].data
    assert f'value="{token}"'.encode() in answers[0].data  # the form can be posted again


def test_a_locked_account_gets_the_login_page_saying_for_how_long(
        app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    token = form_token(client)
    pages = []
    for name in (users["capture"], "nobody-here"):
        for _ in range(5):
            client.post("/login", data={"username": name, "password": WRONG,
                                        "login_token": token})
        pages.append(client.post("/login", data={"username": name, "password": PASSWORD,
                                                 "login_token": token},
                                 headers={"Accept": "text/html"}))
    locked = pages[0]
    assert locked.status_code == 401 and locked.mimetype == "text/html"
    assert 14 * 60 < int(locked.headers["Retry-After"]) <= 15 * 60
    assert alert(locked.data) == ("Too many failed logins: this account is locked for "
                                  "15 minutes. Try again then, or ask an administrator to "
                                  "unlock it.")
    assert b'<form method="post" action="/login"' in locked.data
    assert pages[1].status_code == 401 and pages[1].data == locked.data  # alike for unknown
    with services(app).db.session() as db:
        db.execute(update(LoginThrottle).values(
            locked_until=datetime.now(UTC) + timedelta(seconds=30)))
    almost = client.post("/login", json={"username": users["capture"], "password": PASSWORD})
    assert almost.status_code == 401 and almost.get_json()["error"] == {
        "code": "account_locked",
        "message": "too many failed logins: try again in 1 minute or ask an administrator to "
                   "unlock the account"}
    assert 0 < int(almost.headers["Retry-After"]) <= 30


def test_the_csrf_check_refuses_non_ascii_tokens(client: FlaskClient,
                                                users: dict[str, str]) -> None:
    log_in(client, users["capture"])
    response = client.post("/api/v1/sessions", json={}, headers={"X-CSRF-Token": "é" * 43})
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "csrf"

