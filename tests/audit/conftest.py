"""Audit trail and de-identified export fixtures: an app with a known node and institution, a
patient in the local index, accounts, and capture through the real API with real photos."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.db.models import Encounter, Patient
from app.factory import create_app
from app.workflow.tokens import create_token
from tests.conftest import CHARTS, REPO, services

PATIENT = {"id": "48213377", "issuer": "HOSP-ZULU", "name": "ZEBRA^QUINTUS",
           "birth_date": "1953-04-17", "sex": "M"}
ENCOUNTER = "ENCZ7766"
DEPARTMENT = "Wound Clinic Zed"
INSTITUTION = "Saint Zephyr Hospital"
NODE = "node-a"
FOREARM = "14975008"
PHOTOS = ("jtvd_classic_01.jpg", "jtvd_classic_02.jpg")
PASSWORD = "correct horse battery staple"


def make_app(data_dir: Path, database_url: str, **overrides: Any) -> Flask:
    """An app on ``data_dir`` (schema created) with this package's node and institution."""
    app = create_app({"data_dir": data_dir, "env": "test", "database_url": database_url,
                      "institution_name": INSTITUTION, "node_name": NODE,
                      "audit_forward_thread": False, **overrides})
    services(app).db.create_schema()
    return app


@pytest.fixture
def audit_app(tmp_path: Path, database_url: str) -> Iterator[Flask]:
    """The app, with PATIENT and an in-progress encounter in the local patient index."""
    app = make_app(tmp_path / "var", database_url)
    with services(app).db.session() as db:
        patient = Patient(mrn=PATIENT["id"], issuer=PATIENT["issuer"], family="ZEBRA",
                          given="QUINTUS", birth_date=date(1953, 4, 17), sex="M")
        patient.encounters.append(Encounter(identifier=ENCOUNTER, department=DEPARTMENT))
        db.add(patient)
    yield app
    services(app).db.engine.dispose()


def bearer(app: Flask, user: str, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_token(services(app).db, user, role)}"}


def session_body(**extra: Any) -> dict[str, Any]:
    """A capture session for PATIENT: forearm, left, in the encounter and department."""
    return {"id": str(uuid.uuid4()), "patient": PATIENT, "encounter": ENCOUNTER,
            "department": DEPARTMENT, "body_site": FOREARM, "laterality": "L", **extra}


@dataclass
class Captured:
    """A study made through the API: its UIDs as the API reported them."""

    session_id: str
    study_uid: str
    photos: list[dict[str, Any]]

    @property
    def instances(self) -> list[str]:
        return [uid for p in self.photos
                for uid in (p["sop_instance_uid"], p.get("normalized_sop_instance_uid")) if uid]


def capture(client: FlaskClient, headers: dict[str, str], names: tuple[str, ...] = PHOTOS,
            **extra: Any) -> Captured:
    """Open a session and upload ``names`` from the colour chart set through the API."""
    opened = client.post("/api/v1/sessions", json=session_body(**extra), headers=headers)
    assert opened.status_code == 201, opened.get_json()
    session = opened.get_json()
    photos = []
    for name in names:
        put = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                         data=(CHARTS / name).read_bytes(),
                         headers={**headers, "Content-Type": "image/jpeg"})
        assert put.status_code == 201, put.get_json()
        photos.append(put.get_json())
    return Captured(session["id"], session["study_instance_uid"], photos)


def ebiw(app: Flask, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``ebiw`` command on the app's data directory and database."""
    settings = services(app).settings
    env = {**os.environ, "EBIW_DATA_DIR": str(settings.data_dir), "EBIW_ENV": "test",
           "EBIW_DATABASE_URL": settings.database_url, "EBIW_NODE_NAME": NODE}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, check=False, timeout=300)
