"""The local patient index: patients and encounters in the database (the embedded default).

Filled by ``ebiw patients import FILE`` from a FHIR R4 Bundle or a CSV file. Importing is an
upsert by (issuer, MRN) and, per patient, by encounter identifier: importing the same file again
changes nothing, and nothing absent from a file is deleted.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from app.db.models import Encounter, Patient
from app.db.session import Database
from app.gateways.patients import (
    OPEN_ENCOUNTER_STATUSES,
    EncounterRecord,
    ImportFormatError,
    PatientRecord,
    sort_encounters,
)
from app.gateways.patients.fhir import parse_bundle
from app.pipeline.dicom import values
from app.pipeline.dicom.values import InvalidValue

ENCOUNTER_STATUSES = ("planned", "arrived", "triaged", "in-progress", "onleave", "finished",
                      "cancelled", "entered-in-error", "unknown")
"""FHIR R4 Encounter.status codes."""

CSV_COLUMNS = ("mrn", "issuer", "family", "given", "birth_date", "sex", "encounter",
               "encounter_status", "encounter_start", "department")
"""Columns of an import CSV (header row required; only ``mrn`` is mandatory)."""

_SEXES = {"f": "F", "m": "M", "o": "O", "female": "F", "male": "M", "other": "O",
          "u": None, "unknown": None, "": None}


@dataclass(frozen=True)
class ImportCounts:
    """What an import changed (all zero when the same file is imported again)."""

    patients_added: int = 0
    patients_updated: int = 0
    encounters_added: int = 0
    encounters_updated: int = 0


class LocalIndex:
    """The :class:`~app.gateways.patients.PatientDirectory` over the database tables."""

    name = "local"

    def __init__(self, db: Database) -> None:
        self.db = db

    def find(self, mrn: str, issuer: str | None) -> list[PatientRecord]:
        """Patients with exactly this MRN (and issuer, unless None) with their open encounters.

        Guarantees: encounters whose status is one of ``OPEN_ENCOUNTER_STATUSES``, preferred
        status first then most recent; patients ordered by issuer.
        """
        query = (select(Patient).where(Patient.mrn == mrn)
                 .options(selectinload(Patient.encounters)).order_by(Patient.issuer))
        if issuer is not None:
            query = query.where(Patient.issuer == issuer)
        with self.db.session() as session:
            return [_record(p) for p in session.scalars(query)]

    def upsert(self, records: Iterable[PatientRecord]) -> ImportCounts:
        """Add or update the patients and their encounters in one transaction.

        Guarantees: matched by (issuer, MRN) and encounter identifier; a field is only written
        when its value differs, so a repeated import reports zero changes; all or nothing.
        """
        counts = {"patients_added": 0, "patients_updated": 0, "encounters_added": 0,
                  "encounters_updated": 0}
        with self.db.session() as session:
            for record in records:
                row = session.scalar(select(Patient).where(Patient.issuer == record.issuer,
                                                           Patient.mrn == record.mrn)
                                     .options(selectinload(Patient.encounters)))
                if row is None:
                    row = Patient(mrn=record.mrn, issuer=record.issuer)
                    session.add(row)
                    counts["patients_added"] += 1
                    _assign(row, _demographics(record))
                elif _assign(row, _demographics(record)):
                    counts["patients_updated"] += 1
                existing = {e.identifier: e for e in row.encounters}
                for encounter in record.encounters:
                    target = existing.get(encounter.identifier)
                    if target is None:
                        target = Encounter(identifier=encounter.identifier)
                        row.encounters.append(target)
                        existing[encounter.identifier] = target
                        counts["encounters_added"] += 1
                        _assign(target, _encounter_values(encounter))
                    elif _assign(target, _encounter_values(encounter)):
                        counts["encounters_updated"] += 1
        return ImportCounts(**counts)


def _demographics(record: PatientRecord) -> dict[str, Any]:
    return {"family": record.family, "given": record.given, "birth_date": record.birth_date,
            "sex": record.sex}


def _encounter_values(encounter: EncounterRecord) -> dict[str, Any]:
    return {"status": encounter.status or "unknown", "department": encounter.department,
            "started": encounter.started}


def _assign(row: Patient | Encounter, values: Mapping[str, Any]) -> bool:
    """Set the attributes that differ; return whether any did."""
    changed = False
    for key, value in values.items():
        current = getattr(row, key)
        if isinstance(current, datetime) and current.tzinfo is None:
            current = current.replace(tzinfo=UTC)  # SQLite gives back naive UTC
        if current != value:
            setattr(row, key, value)
            changed = True
    return changed


def _record(patient: Patient) -> PatientRecord:
    encounters = [EncounterRecord(e.identifier, e.status, e.department,
                                  e.started.replace(tzinfo=UTC) if e.started and
                                  e.started.tzinfo is None else e.started)
                  for e in patient.encounters if e.status in OPEN_ENCOUNTER_STATUSES]
    return PatientRecord(mrn=patient.mrn, issuer=patient.issuer, family=patient.family,
                         given=patient.given, birth_date=patient.birth_date, sex=patient.sex,
                         sources=("local",), encounters=sort_encounters(encounters))


# --- import files ------------------------------------------------------------------------------

def read_import_file(path: Path, *, default_issuer: str,
                     issuer_systems: Mapping[str, str]) -> list[PatientRecord]:
    """Parse a FHIR R4 Bundle (``.json``, or any file starting with ``{``) or a CSV file.

    ``default_issuer`` is used for CSV rows without an issuer and Bundle patients whose MRN
    system is not in ``issuer_systems`` (issuer → identifier system). Raises
    :class:`ImportFormatError` naming the row or entry at fault; the result is validated
    (DICOM-safe identifiers, known codes) and holds one record per (issuer, MRN).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFormatError("the file is not UTF-8 text") from exc
    if text.lstrip().startswith("{"):
        try:
            bundle = json.loads(text)
        except ValueError as exc:
            raise ImportFormatError("the file is not valid JSON") from exc
        records = parse_bundle(bundle, issuer_systems=issuer_systems,
                               default_issuer=default_issuer)
    else:
        records = _parse_csv(text, default_issuer)
    for number, record in enumerate(records, start=1):
        _validate(record, f"patient {number}")
    return records


def _parse_csv(text: str, default_issuer: str) -> list[PatientRecord]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    if "mrn" not in header:
        raise ImportFormatError("the CSV needs a header row with at least an mrn column; "
                                f"columns: {', '.join(CSV_COLUMNS)}")
    unknown = set(header) - set(CSV_COLUMNS)
    if unknown:
        raise ImportFormatError(f"unknown CSV columns: {', '.join(sorted(unknown))}")
    reader.fieldnames = header
    patients: dict[tuple[str, str], PatientRecord] = {}
    for row in reader:
        where = f"row {reader.line_num}"
        cell = {k: (v or "").strip() for k, v in row.items() if k is not None}
        record = PatientRecord(
            mrn=cell.get("mrn", ""), issuer=cell.get("issuer") or default_issuer,
            family=cell.get("family", ""), given=cell.get("given", ""),
            birth_date=_date(cell.get("birth_date", ""), where),
            sex=_sex(cell.get("sex", ""), where), sources=("local",))
        known = patients.get(record.key)
        if known is not None and _demographics(known) != _demographics(record):
            raise ImportFormatError(f"{where}: the patient's details differ from an "
                                    "earlier row with the same MRN")
        encounters = known.encounters if known else ()
        if cell.get("encounter"):
            encounters += (EncounterRecord(
                identifier=cell["encounter"],
                status=cell.get("encounter_status") or "in-progress",
                department=cell.get("department") or None,
                started=_datetime(cell.get("encounter_start", ""), where)),)
        patients[record.key] = replace(record, encounters=encounters)
    return list(patients.values())


def _date(value: str, where: str) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError as exc:
        raise ImportFormatError(f"{where}: birth_date must be YYYY-MM-DD") from exc


def _datetime(value: str, where: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value) if value else None
    except ValueError as exc:
        raise ImportFormatError(f"{where}: encounter_start must be ISO 8601") from exc
    if parsed is None:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _sex(value: str, where: str) -> str | None:
    try:
        return _SEXES[value.lower()]
    except KeyError as exc:
        raise ImportFormatError(f"{where}: sex must be F, M, O or empty") from exc


def _holds(rule: Callable[..., str | None], value: str) -> bool:
    """Whether a DICOM LO attribute holds ``value`` under ``rule`` (:mod:`values`)."""
    try:
        return rule(value, "value", required=True) is not None
    except InvalidValue:
        return False


def _validate(record: PatientRecord, where: str) -> None:
    """Refuse values the database or a DICOM header cannot hold."""
    for name, value in (("MRN", record.mrn), ("issuer", record.issuer)):
        if not _holds(values.identifier, value):
            raise ImportFormatError(f"{where}: the {name} must be 1-64 characters without "
                                    "backslashes, control or invisible formatting characters")
    if len(record.family) > 128 or len(record.given) > 128 or "^" in record.family + \
            record.given or "\\" in record.family + record.given:
        raise ImportFormatError(f"{where}: names must be at most 128 characters without ^ or \\")
    seen: set[str] = set()
    for encounter in record.encounters:
        if not _holds(values.identifier, encounter.identifier):
            raise ImportFormatError(f"{where}: an encounter identifier must be 1-64 characters "
                                    "without backslashes, control or invisible formatting "
                                    "characters")
        if encounter.identifier in seen:
            raise ImportFormatError(f"{where}: an encounter identifier appears twice")
        seen.add(encounter.identifier)
        if encounter.status not in ENCOUNTER_STATUSES:
            raise ImportFormatError(f"{where}: encounter status must be one of "
                                    f"{', '.join(ENCOUNTER_STATUSES)}")
        if encounter.department is not None and not _holds(values.text, encounter.department):
            raise ImportFormatError(f"{where}: department must be 1-64 characters")
