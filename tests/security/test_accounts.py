"""Lockout after failed logins, and the account and token commands of ``ebiw``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from app.db.models import ApiToken, LoginThrottle
from app.factory import create_app
from app.workflow import accounts, audit
from app.workflow.tokens import create_token, list_tokens, revoke_tokens
from tests.conftest import PASSWORD, REPO, log_in, services

ADMIN = audit.Actor("test-admin")


def _attempt(client: FlaskClient, username: str, password: str) -> tuple[int, dict, dict]:
    response = client.post("/login", json={"username": username, "password": password})
    return response.status_code, response.get_json() or {}, dict(response.headers)


def test_five_failures_lock_the_account_even_against_the_right_password(
        app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    name = users["capture"]
    for _ in range(4):
        assert _attempt(client, name, "wrong password!!")[0] == 401
    log_in(client, name)  # a success clears the count
    for _ in range(5):
        status, body, _ = _attempt(client, name, "wrong password!!")
        assert status == 401 and body["error"]["code"] == "login_failed"
    status, body, headers = _attempt(client, name, PASSWORD)
    assert status == 401 and body["error"]["code"] == "account_locked"
    assert 14 * 60 < int(headers["Retry-After"]) <= 15 * 60 + 1
    assert "15 minutes" in body["error"]["message"]
    # other accounts are not affected; the lock ends by itself
    log_in(client, users["view"])
    with services(app).db.session() as db:
        db.execute(update(LoginThrottle).values(
            locked_until=datetime.now(UTC) - timedelta(seconds=1)))
    log_in(client, name)


def test_unknown_usernames_lock_alike(client: FlaskClient, users: dict[str, str]) -> None:
    """A lock tells nothing about whether an account exists."""
    answers = []
    for name in (users["view"], "nobody-here"):
        for _ in range(5):
            _attempt(client, name, "wrong password!!")
        status, body, headers = _attempt(client, name, "wrong password!!")
        answers.append((status, body, "Retry-After" in headers))
    assert answers[0] == answers[1]
    assert answers[0][1]["error"]["code"] == "account_locked"


def test_failures_age_out_and_unlock_lifts_the_lock(app: Flask, client: FlaskClient,
                                                   users: dict[str, str]) -> None:
    db = services(app).db
    name = users["capture"]
    for _ in range(4):
        _attempt(client, name, "wrong password!!")
    with db.session() as session:  # the four failures were long ago
        session.execute(update(LoginThrottle).values(
            last_failure_at=datetime.now(UTC) - timedelta(minutes=16)))
    _attempt(client, name, "wrong password!!")
    log_in(client, name)
    for _ in range(5):
        _attempt(client, name, "wrong password!!")
    assert _attempt(client, name, PASSWORD)[1]["error"]["code"] == "account_locked"
    assert accounts.unlock(db, name, by=ADMIN) is True
    log_in(client, name)


def test_failures_in_two_workers_add_up(app: Flask, users: dict[str, str],
                                        database_url: str) -> None:
    other = create_app({"data_dir": services(app).settings.data_dir, "env": "test",
                        "database_url": database_url})
    clients = [app.test_client(), other.test_client()]
    try:
        for i in range(5):
            _attempt(clients[i % 2], users["capture"], "wrong password!!")
        assert _attempt(clients[0], users["capture"], PASSWORD)[1]["error"]["code"] == \
            "account_locked"
    finally:
        services(other).db.engine.dispose()


def test_lockout_can_be_switched_off(tmp_path: Path) -> None:
    app = create_app({"data_dir": tmp_path, "env": "test", "login_max_failures": 0})
    services(app).db.create_schema()
    accounts.create_user(services(app).db, "nurse", PASSWORD, "capture")
    client = app.test_client()
    for _ in range(8):
        _attempt(client, "nurse", "wrong password!!")
    log_in(client, "nurse")


def test_password_change_and_disable_end_sessions(app: Flask, users: dict[str, str]) -> None:
    db = services(app).db
    client = app.test_client()
    log_in(client, users["capture"])
    accounts.set_password(db, users["capture"], "a brand new password")
    assert client.get("/api/v1/me").status_code == 401
    log_in(client, users["capture"], "a brand new password")
    accounts.set_disabled(db, users["capture"], True, by=ADMIN)
    assert client.get("/api/v1/me").status_code == 401
    assert _attempt(client, users["capture"], "a brand new password")[0] == 401
    accounts.set_disabled(db, users["capture"], False, by=ADMIN)
    log_in(client, users["capture"], "a brand new password")
    with pytest.raises(accounts.AccountError, match="at least 12"):
        accounts.set_password(db, users["capture"], "short")
    with pytest.raises(accounts.AccountError, match="no such user"):
        accounts.set_disabled(db, "nobody", True, by=ADMIN)


def test_tokens_are_listed_without_secrets_and_revocable(
        app: Flask, client: FlaskClient) -> None:
    db = services(app).db
    first = create_token(db, "ward7-phone", "capture")
    second = create_token(db, "ward7-phone", "capture")
    third = create_token(db, "pacs-bridge", "view")
    listed = list_tokens(db)
    assert [(t.user, t.role, t.revoked_at) for t in listed] == [
        ("ward7-phone", "capture", None), ("ward7-phone", "capture", None),
        ("pacs-bridge", "view", None)]
    assert all(secret not in repr(listed) for secret in (first, second, third))
    with db.session() as session:  # only digests are stored
        hashes = set(session.scalars(select(ApiToken.token_hash)))
    assert not {first, second, third} & hashes

    def me(token: str) -> int:
        return client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}) \
            .status_code

    assert me(third) == 200
    assert revoke_tokens(db, token_id=listed[2].id, by=ADMIN) == 1
    assert me(third) == 401
    assert revoke_tokens(db, user="ward7-phone", by=ADMIN) == 2
    assert me(first) == me(second) == 401
    assert revoke_tokens(db, user="ward7-phone", by=ADMIN) == 0


def test_cli_user_and_token_commands(tmp_path: Path) -> None:
    env = {**os.environ, "EBIW_DATA_DIR": str(tmp_path)}

    def ebiw(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", *args], input=stdin,
                              capture_output=True, text=True, env=env, cwd=REPO, check=False)

    assert ebiw("user", "create", "--username", "ward7", "--role", "capture",
                stdin=PASSWORD + "\n").returncode == 0
    changed = ebiw("user", "password", "--username", "ward7", stdin="another long password\n")
    assert changed.returncode == 0, changed.stderr
    assert "another long password" not in changed.stdout + changed.stderr
    assert ebiw("user", "disable", "--username", "ward7").returncode == 0
    listed = [json.loads(line) for line in ebiw("user", "list").stdout.splitlines()]
    assert [(u["username"], u["kind"], u["disabled"]) for u in listed] == [
        ("ward7", "local", True)]
    assert ebiw("user", "enable", "--username", "ward7").returncode == 0
    assert ebiw("user", "unlock", "--username", "ward7").returncode == 0
    assert ebiw("user", "disable", "--username", "nobody").returncode != 0

    token = ebiw("token", "create", "--user", "ward7-phone", "--role", "capture").stdout.strip()
    tokens = ebiw("token", "list")
    assert token not in tokens.stdout
    rows = [json.loads(line) for line in tokens.stdout.splitlines()]
    assert rows[0]["user"] == "ward7-phone" and rows[0]["revoked_at"] is None
    assert set(rows[0]) == {"id", "user", "role", "created_at", "revoked_at", "expires_at",
                            "last_used_at", "expired"}
    assert ebiw("token", "revoke", "--id", str(rows[0]["id"])).returncode == 0
    assert json.loads(ebiw("token", "list").stdout)["revoked_at"] is not None
    assert ebiw("token", "revoke", "--id", str(rows[0]["id"])).returncode != 0
    assert ebiw("token", "revoke").returncode != 0
    app = create_app({"data_dir": tmp_path, "env": "test"})
    assert app.test_client().get("/api/v1/me", headers={
        "Authorization": f"Bearer {token}"}).status_code == 401
    assert app.test_client().post("/login", json={
        "username": "ward7", "password": "another long password"}).status_code == 200
