"""Shared fixtures: the real test data beside the checkout, an app on a temp data dir, tokens."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.web import Services
from app.workflow.tokens import create_token

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TESTDATA = SHARED / "testdata"
PEERS = SHARED / "tools" / "peers"
CHARTS = TESTDATA / "colourchart"
BARCODES = TESTDATA / "barcodes"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    """An app on embedded defaults in a fresh data dir, schema created."""
    flask_app = create_app({"data_dir": tmp_path / "var", "env": "test"})
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
