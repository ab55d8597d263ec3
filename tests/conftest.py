"""Shared fixtures: the real test data beside the checkout, an app on a temp data dir, tokens."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from app.factory import create_app
from app.web import Services
from app.workflow.tokens import create_token

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TESTDATA = SHARED / "testdata"
PEERS = SHARED / "tools" / "peers"
CHARTS = TESTDATA / "colourchart"
BARCODES = TESTDATA / "barcodes"


POSTGRES_ADMIN_URL = os.environ.get("EBIW_TEST_POSTGRES_URL", "")
"""Set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres) to run on PostgreSQL."""


@pytest.fixture
def database_url() -> Iterator[str]:
    """Empty for the embedded SQLite; else a throw-away PostgreSQL database for this test."""
    if not POSTGRES_ADMIN_URL:
        yield ""
        return
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"ebiw_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def app_overrides() -> dict[str, object]:
    """Settings a test folder changes for its ``app`` (override this fixture there)."""
    return {}


@pytest.fixture
def app(tmp_path: Path, database_url: str, app_overrides: dict[str, object]) -> Iterator[Flask]:
    """An app on embedded defaults (or PostgreSQL) in a fresh data dir, schema created."""
    flask_app = create_app({"data_dir": tmp_path / "var", "env": "test",
                            "database_url": database_url, **app_overrides})
    services(flask_app).db.create_schema()
    yield flask_app
    services(flask_app).db.engine.dispose()


def services(flask_app: Flask) -> Services:
    return flask_app.extensions["ebiw"]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def auth(app: Flask) -> dict[str, dict[str, str]]:
    """Authorization headers per role."""
    db = services(app).db
    return {role: {"Authorization": f"Bearer {create_token(db, f'{role}-user', role)}"}
            for role in ("capture", "view", "admin")}


def dicom_validate(*files: Path) -> tuple[int, int, str]:
    """Run dciodvfy (through the shared peer script) with --decode: (errors, warnings, output)."""
    proc = subprocess.run(["bash", str(PEERS / "dicom_validate.sh"), "--decode",
                           *map(str, files)], capture_output=True, text=True, check=False)
    total = re.search(r"TOTAL errors=(\d+) warnings=(\d+)", proc.stdout)
    assert total, proc.stdout + proc.stderr
    return int(total.group(1)), int(total.group(2)), proc.stdout


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL pass, run only the tests that use a database."""
    if not POSTGRES_ADMIN_URL:
        return
    skip = pytest.mark.skip(reason="uses no database: covered by the SQLite pass")
    for item in items:
        if "database_url" not in getattr(item, "fixturenames", ()):
            item.add_marker(skip)
