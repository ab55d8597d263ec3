"""API tokens with a lifetime and a last-used time: an expired token is refused 401 naming the
cause, use is recorded to the minute (one write a minute at most), the command line sets and
lists both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, select, update

from app.db.models import ApiToken
from app.workflow.tokens import create_token, list_tokens
from tests.conftest import REPO, services


def _row(app: Flask, token_id: int) -> ApiToken:
    with services(app).db.session() as db:
        row = db.get(ApiToken, token_id)
        assert row is not None
        return row


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_an_expired_token_is_refused_with_a_clear_401(app: Flask, client: FlaskClient) -> None:
    db = services(app).db
    token = create_token(db, "ward7-phone", "capture", timedelta(days=30))
    (info,) = list_tokens(db)
    assert info.expires_at is not None
    assert timedelta(days=30) - timedelta(minutes=1) < info.expires_at - datetime.now(UTC) \
        <= timedelta(days=30)
    assert client.get("/api/v1/me", headers=_bearer(token)).status_code == 200
    with db.session() as session:
        session.execute(update(ApiToken).values(
            expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    refused = client.get("/api/v1/me", headers=_bearer(token))
    assert refused.status_code == 401
    assert refused.get_json()["error"] == {
        "code": "token_expired",
        "message": "this API token has expired: ask an administrator for a new one "
                   "(ebiw token create)"}
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    unknown = client.get("/api/v1/me", headers=_bearer("ebiw_nosuchtoken"))
    assert unknown.status_code == 401
    assert unknown.get_json()["error"]["code"] != "token_expired"
    forever = create_token(db, "pacs-bridge", "view")
    assert client.get("/api/v1/me", headers=_bearer(forever)).status_code == 200
    with pytest.raises(ValueError):
        create_token(db, "x", "view", timedelta(0))


def test_last_use_is_written_at_most_once_a_minute(app: Flask, client: FlaskClient) -> None:
    db = services(app).db
    token = create_token(db, "ward7-phone", "capture")
    (info,) = list_tokens(db)
    assert info.last_used_at is None
    writes: list[str] = []

    @event.listens_for(db.engine, "before_cursor_execute")
    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE API_TOKEN"):
            writes.append(statement)

    for _ in range(5):
        assert client.get("/api/v1/me", headers=_bearer(token)).status_code == 200
    assert len(writes) == 1
    first = _row(app, info.id).last_used_at
    assert first is not None

    a_minute_ago = datetime.now(UTC) - timedelta(seconds=61)
    with db.session() as session:
        session.execute(update(ApiToken).values(last_used_at=a_minute_ago))
    writes.clear()
    for _ in range(3):
        assert client.get("/api/v1/me", headers=_bearer(token)).status_code == 200
    assert len(writes) == 1
    (info,) = list_tokens(db)
    assert info.last_used_at is not None
    assert timedelta(seconds=60) < info.last_used_at - a_minute_ago < timedelta(seconds=90)


def _ebiw(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EBIW_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False, timeout=120)


def test_token_create_expires_in_and_token_list(tmp_path: Path) -> None:
    assert _ebiw(tmp_path, "db", "upgrade").returncode == 0
    short = _ebiw(tmp_path, "token", "create", "--user", "ward7", "--role", "capture",
                  "--expires-in", "30d")
    assert short.returncode == 0, short.stderr
    assert _ebiw(tmp_path, "token", "create", "--user", "bridge", "--role", "view"
                 ).returncode == 0
    for bad in ("0d", "30", "1y", "-3d"):
        refused = _ebiw(tmp_path, "token", "create", "--user", "x", "--role", "view",
                        "--expires-in", bad)
        assert refused.returncode == 2 and "--expires-in" in refused.stderr, bad
    listed = [json.loads(line) for line in _ebiw(tmp_path, "token", "list").stdout.splitlines()]
    assert [(t["user"], t["expired"], t["last_used_at"]) for t in listed] == [
        ("ward7", False, None), ("bridge", False, None)]
    expires = datetime.fromisoformat(listed[0]["expires_at"])
    assert abs(expires - datetime.now(UTC) - timedelta(days=30)) < timedelta(minutes=2)
    assert listed[1]["expires_at"] is None
    assert short.stdout.strip() not in json.dumps(listed)


def test_the_migration_adds_the_columns_to_an_existing_database(tmp_path: Path) -> None:
    """A database at the baseline (tokens included) upgrades to expiry and last use, keeping
    its tokens, which never expire."""
    from alembic import command

    from app.db.migrate import alembic_config, upgrade_transaction
    from app.db.session import Database

    db = Database(f"sqlite:///{tmp_path / 'ebiw.sqlite3'}")
    with upgrade_transaction(db.engine) as conn:
        command.upgrade(alembic_config(conn), "0001_baseline")
    with db.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO api_token (token_hash, user, role, created_at) "
                             "VALUES ('" + "h" * 64 + "', 'old', 'view', '2026-01-01')")
    db.create_schema()
    assert db.schema_differences() == []
    with db.session() as session:
        row = session.scalar(select(ApiToken))
        assert row is not None
        assert (row.user, row.expires_at, row.last_used_at) == ("old", None, None)
    db.engine.dispose()
