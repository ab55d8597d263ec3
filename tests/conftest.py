"""Shared fixtures: the real test data beside the checkout, an app on a temp data dir, tokens."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from app.factory import create_app
from app.web import Services
from app.workflow.accounts import create_user
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


PASSWORD = "correct horse battery staple"
"""The password of the :func:`users` accounts."""


@pytest.fixture
def users(app: Flask) -> dict[str, str]:
    """One local account per role: role -> username (password :data:`PASSWORD`)."""
    for role in ("capture", "view", "admin"):
        create_user(services(app).db, f"{role}-nurse", PASSWORD, role)
    return {"capture": "capture-nurse", "view": "view-nurse", "admin": "admin-nurse"}


def log_in(client: FlaskClient, username: str, password: str = PASSWORD) -> str:
    """Log ``client`` in (``POST /login``, must answer 200); return the session's CSRF token."""
    response = client.post("/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["csrf_token"]


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


# --- a headless Chromium for browser tests ----------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "tests" / ".artifacts"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--no-first-run"]
T = TypeVar("T")


class Browser:
    """A headless Chromium owned by one worker thread; ``run(fn)`` calls ``fn(browser)`` there
    (Playwright's sync API must stay on one thread, and may share a pytest run with others)."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
        self.playwright = self.thread.submit(lambda: sync_playwright().start()).result()
        self.browser = self.thread.submit(lambda: self.playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)).result()

    def run(self, fn: Callable[[Any], T]) -> T:
        return self.thread.submit(fn, self.browser).result()

    def close(self) -> None:
        self.thread.submit(self.browser.close).result()
        self.thread.submit(self.playwright.stop).result()
        self.thread.shutdown()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One browser per test module; skipped where Debian's chromium is not installed."""
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser = Browser()
    yield browser
    browser.close()
