"""Fixtures for the security tests: a stored study with recognisable PHI, helpers (the
accounts, `users` and `log_in`, are in tests/conftest.py)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import date

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.db.models import Encounter, FhirResource, Patient
from tests.conftest import BARCODES, CHARTS, services

PHOTO = (CHARTS / "sio_classic.jpg").read_bytes()
BAND = BARCODES / "zx_code128-2_05.png"  # Code 128, payload 15182881 (plain digits)

# Recognisable, synthetic PHI: every log line and error body is searched for these.
MRN = "15182881"
FAMILY, GIVEN = "QUIMBYZ", "ORLANDA"
BIRTH = date(1961, 2, 3)
ENCOUNTER = "ENC-7734"
PHI_STRINGS = (MRN, FAMILY, GIVEN, f"{FAMILY}^{GIVEN}", BIRTH.isoformat(),
               BIRTH.strftime("%Y%m%d"), ENCOUNTER)


def seed_patient(app: Flask) -> None:
    """The patient of :data:`MRN` in the local index, with an open encounter."""
    svc = services(app)
    with svc.db.session() as db:
        patient = Patient(mrn=MRN, issuer=svc.settings.default_issuer, family=FAMILY,
                          given=GIVEN, birth_date=BIRTH, sex="F")
        patient.encounters.append(Encounter(identifier=ENCOUNTER, department="Wound care"))
        db.add(patient)


@dataclass(frozen=True)
class Study:
    """A capture session with one stored photo, and the identifiers to reach it."""

    session_id: str
    upload_uuid: str
    study_uid: str
    series_uid: str
    sop_uid: str
    fhir_study_id: str | None
    fhir_patient_id: str | None


def store_study(app: Flask, client: FlaskClient, headers: dict[str, str],
                photo: bytes = PHOTO) -> Study:
    """Open a session for the seeded patient and upload ``photo`` (bearer ``headers``)."""
    body = {"patient": {"id": MRN, "issuer": services(app).settings.default_issuer,
                        "name": f"{FAMILY}^{GIVEN}", "birth_date": BIRTH.isoformat(),
                        "sex": "F"},
            "encounter": ENCOUNTER, "body_site": "14975008", "laterality": "L",
            "department": "Wound care"}
    opened = client.post("/api/v1/sessions", json=body, headers=headers)
    assert opened.status_code == 201, opened.get_json()
    session = opened.get_json()
    upload = str(uuid.uuid4())
    put = client.put(f"/api/v1/sessions/{session['id']}/photos/{upload}", data=photo,
                     headers={**headers, "Content-Type": "image/jpeg"})
    assert put.status_code == 201, put.get_json()
    photo_json = put.get_json()
    with services(app).db.session() as db:
        study = db.scalar(select(FhirResource.logical_id)
                          .where(FhirResource.resource_type == "ImagingStudy"))
        patient = db.scalar(select(Patient.id).where(Patient.mrn == MRN))
    return Study(session["id"], upload, session["study_instance_uid"],
                 photo_json["series_instance_uid"], photo_json["sop_instance_uid"],
                 study, str(patient) if patient is not None else None)


def away_from_window_edge(window: int = 60, margin: float = 8.0) -> None:
    """Wait until the current rate-limit window has at least ``margin`` seconds left, so a
    short burst of requests all fall into one window."""
    left = window - time.time() % window
    if left < margin:
        time.sleep(left + 0.5)
