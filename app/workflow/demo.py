"""Synthetic demo patients for the embedded default (no real person's data)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import select

from app.db.models import Encounter, Patient
from app.db.session import Database

DEMO_PATIENTS = (
    # mrn, family, given, birth date, sex, open encounter, department
    ("00123456", "DEMO", "ALICE", date(1950, 3, 14), "F", "ENC1001", "Wound care"),
    ("00234567", "DEMO", "BOB", date(1962, 11, 2), "M", "ENC1002", "Dermatology"),
    ("00345678", "SAMPLE", "CAROL", date(1988, 7, 21), "F", "ENC1003", "Burns unit"),
    ("00456789", "SAMPLE", "DAVID", date(1975, 1, 30), "M", None, None),
)


def seed_demo_patients(db: Database, issuer: str) -> int:
    """Add the demo patients that are not yet in the index; return how many were added."""
    added = 0
    with db.session() as session:
        for mrn, family, given, born, sex, encounter, department in DEMO_PATIENTS:
            exists = session.scalar(select(Patient.id).where(Patient.issuer == issuer,
                                                             Patient.mrn == mrn))
            if exists is not None:
                continue
            patient = Patient(mrn=mrn, issuer=issuer, family=family, given=given,
                              birth_date=born, sex=sex)
            if encounter:
                patient.encounters.append(Encounter(identifier=encounter, status="in-progress",
                                                    department=department,
                                                    started=datetime.now(UTC)))
            session.add(patient)
            added += 1
    return added
