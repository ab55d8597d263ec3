"""Local accounts and web sessions: hashing, cookies, CSRF, timeouts, logout, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from app.db.models import CaptureSession, User, WebSession
from app.factory import create_app
from app.workflow.accounts import AccountError, create_user
from tests.conftest import PASSWORD, REPO, log_in, services

SESSION = {"patient": {"id": "00123456", "issuer": "HOSP-A"}, "body_site": "14975008",
           "laterality": "L", "consent": "given"}


def test_passwords_are_argon2id_hashes_and_accounts_are_checked(app: Flask) -> None:
    db = services(app).db
    create_user(db, "nurse", PASSWORD, "capture")
    with db.session() as session:
        stored = session.scalar(select(User.password_hash).where(User.username == "nurse"))
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    for username, password, role, message in [
        ("nurse", PASSWORD, "capture", "taken"),
        ("bad name", PASSWORD, "capture", "username"),
        ("other", "short", "capture", "at least 12"),
        ("other", PASSWORD, "root", "role"),
    ]:
        with pytest.raises(AccountError, match=message):
            create_user(db, username, password, role)


def test_login_sets_a_strict_httponly_cookie_holding_only_a_random_id(
        app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    response = client.post("/login", json={"username": users["capture"], "password": PASSWORD})
    assert response.status_code == 200
    body = response.get_json()
    assert body["user"] == users["capture"] and body["role"] == "capture"
    assert body["idle_timeout_seconds"] == 15 * 60 and len(body["csrf_token"]) >= 32
    assert response.headers["Cache-Control"] == "no-store"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("ebiw_session=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain http on loopback: a Secure cookie would be dropped
    value = cookie.split(";")[0].split("=", 1)[1]
    with services(app).db.session() as session:
        rows = session.scalars(select(WebSession)).all()
    assert len(rows) == 1 and rows[0].id_hash != value and value not in rows[0].id_hash
    # a second login gets a new id (no fixation); the first session stays valid on its own
    again = client.post("/login", json={"username": users["capture"], "password": PASSWORD})
    assert again.headers["Set-Cookie"].split(";")[0].split("=", 1)[1] != value


def test_cookie_is_secure_when_served_over_https(tmp_path: Path) -> None:
    https = create_app({"data_dir": tmp_path, "env": "test",
                        "public_url": "https://wounds.example.org"})
    services(https).db.create_schema()
    create_user(services(https).db, "nurse", PASSWORD, "capture")
    response = https.test_client().post("/login", json={"username": "nurse",
                                                        "password": PASSWORD})
    assert "Secure" in response.headers["Set-Cookie"]
    direct = https.test_client().post("/login", json={"username": "nurse", "password": PASSWORD},
                                      base_url="https://localhost")
    assert "Secure" in direct.headers["Set-Cookie"]


@pytest.mark.parametrize(("username", "password"), [
    ("capture-nurse", "wrong password!"), ("nobody", PASSWORD), ("capture-nurse", ""),
    ("x" * 300, PASSWORD), ("capture-nurse", "p" * 5000)])
def test_wrong_credentials_are_refused_alike(client: FlaskClient, users: dict[str, str],
                                             username: str, password: str) -> None:
    response = client.post("/login", json={"username": username, "password": password})
    assert response.status_code == 401
    assert response.get_json()["error"] == {"code": "login_failed",
                                            "message": "wrong username or password"}
    assert "Set-Cookie" not in response.headers


def test_form_login_redirects_to_the_app(client: FlaskClient, users: dict[str, str]) -> None:
    assert client.get("/login").status_code == 200
    ok = client.post("/login", data={"username": users["capture"], "password": PASSWORD})
    assert ok.status_code == 303 and ok.headers["Location"] == "/"
    assert client.get("/api/v1/me").get_json()["user"] == users["capture"]
    bad = client.post("/login", data={"username": users["capture"], "password": "nope"})
    assert bad.status_code == 401 and b"Wrong username or password" in bad.data


def test_login_from_another_site_is_refused(client: FlaskClient, users: dict[str, str]) -> None:
    response = client.post("/login", data={"username": users["capture"], "password": PASSWORD},
                           headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    same = client.post("/login", json={"username": users["capture"], "password": PASSWORD},
                       headers={"Origin": "http://localhost"})
    assert same.status_code == 200


def test_cookie_requests_that_change_state_need_the_csrf_token(
        app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    log_in(client, users["capture"])
    me = client.get("/api/v1/me")
    assert me.status_code == 200 and me.headers["Cache-Control"] == "no-store"
    token = me.get_json()["csrf_token"]
    sid = str(uuid.uuid4())
    refused = client.post("/api/v1/sessions", json={**SESSION, "id": sid})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "csrf"
    wrong = client.post("/api/v1/sessions", json={**SESSION, "id": sid},
                        headers={"X-CSRF-Token": "x" * 43})
    assert wrong.status_code == 403
    opened = client.post("/api/v1/sessions", json={**SESSION, "id": sid},
                         headers={"X-CSRF-Token": token})
    assert opened.status_code == 201
    assert opened.get_json()["consent"] == "given"
    with services(app).db.session() as session:
        assert session.get(CaptureSession, sid).created_by == users["capture"]
    assert client.get(f"/api/v1/sessions/{sid}").status_code == 200  # reads need no token


def test_roles_apply_to_cookie_sessions(client: FlaskClient, users: dict[str, str]) -> None:
    token = log_in(client, users["view"])
    assert client.get("/api/v1/body-sites").status_code == 200
    response = client.post("/api/v1/sessions", json=SESSION, headers={"X-CSRF-Token": token})
    assert response.status_code == 403


def test_bearer_header_decides_alone(client: FlaskClient, users: dict[str, str],
                                     auth: dict[str, dict[str, str]]) -> None:
    log_in(client, users["capture"])
    assert client.get("/api/v1/me", headers={"Authorization": "Bearer ebiw_wrong"}) \
        .status_code == 401
    me = client.get("/api/v1/me", headers=auth["view"]).get_json()
    assert me == {"user": "view-user", "role": "view", "csrf_token": None, "expires_at": None,
                  "idle_timeout_seconds": None}
    # bearer requests need no CSRF token (no cookie is involved)
    assert client.post("/api/v1/sessions", json=SESSION, headers=auth["capture"]) \
        .status_code == 201


def test_logout_ends_the_session_server_side(app: Flask, client: FlaskClient,
                                             users: dict[str, str]) -> None:
    token = log_in(client, users["capture"])
    cookie = client.get_cookie("ebiw_session")
    assert cookie is not None
    assert client.post("/logout").status_code == 403  # no token: another site's form
    response = client.post("/logout", headers={"X-CSRF-Token": token})
    assert response.status_code == 204
    assert "ebiw_session=;" in response.headers["Set-Cookie"]
    with services(app).db.session() as session:
        assert session.scalars(select(WebSession)).all() == []
    client.set_cookie("ebiw_session", cookie.value)  # a copy of the old cookie is worthless
    assert client.get("/api/v1/me").status_code == 401


@pytest.mark.parametrize("column", ["last_seen_at", "created_at"])
def test_idle_and_absolute_timeouts(app: Flask, client: FlaskClient, users: dict[str, str],
                                    column: str) -> None:
    log_in(client, users["capture"])
    assert client.get("/api/v1/me").status_code == 200
    age = timedelta(minutes=16) if column == "last_seen_at" else timedelta(hours=12, seconds=1)
    with services(app).db.session() as session:
        values = {column: datetime.now(UTC) - age}
        if column == "created_at":
            values["last_seen_at"] = datetime.now(UTC)
        session.execute(update(WebSession).values(**values))
    assert client.get("/api/v1/me").status_code == 401
    with services(app).db.session() as session:
        assert session.scalars(select(WebSession)).all() == []  # expired rows are removed


def test_activity_restarts_the_idle_clock(app: Flask, client: FlaskClient,
                                          users: dict[str, str]) -> None:
    log_in(client, users["capture"])
    with services(app).db.session() as session:
        session.execute(update(WebSession).values(
            last_seen_at=datetime.now(UTC) - timedelta(minutes=14)))
    assert client.get("/api/v1/me").status_code == 200
    with services(app).db.session() as session:
        seen = session.scalar(select(WebSession.last_seen_at))
    assert datetime.now(UTC) - seen.replace(tzinfo=UTC) < timedelta(minutes=1)


def test_disabled_user_loses_the_session(app: Flask, client: FlaskClient,
                                         users: dict[str, str]) -> None:
    log_in(client, users["capture"])
    with services(app).db.session() as session:
        session.execute(update(User).where(User.username == users["capture"])
                        .values(disabled_at=datetime.now(UTC)))
    assert client.get("/api/v1/me").status_code == 401
    response = client.post("/login", json={"username": users["capture"], "password": PASSWORD})
    assert response.status_code == 401


def test_cli_creates_a_user_from_stdin(tmp_path: Path) -> None:
    env = {**os.environ, "EBIW_DATA_DIR": str(tmp_path)}

    def run(*args: str, password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", "user", "create", *args],
                              input=password + "\n", capture_output=True, text=True, env=env,
                              cwd=REPO, check=False)

    ok = run("--username", "ward7", "--role", "capture", password=PASSWORD)
    assert ok.returncode == 0, ok.stderr
    assert "ward7" in ok.stdout and PASSWORD not in ok.stdout + ok.stderr
    short = run("--username", "ward8", "--role", "capture", password="short")
    assert short.returncode != 0 and "at least 12" in short.stderr
    app = create_app({"data_dir": tmp_path, "env": "test"})
    response = app.test_client().post("/login", json={"username": "ward7", "password": PASSWORD})
    assert response.status_code == 200
