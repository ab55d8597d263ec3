"""Patient directory: whose identifier a wristband carries, with their open encounters.

One :class:`PatientDirectory` protocol, three implementations chosen by
``EBIW_PATIENT_DIRECTORY`` (comma separated, queried in that order and merged):

- ``local`` — the local index in the database (``ebiw patients import``), the embedded default;
- ``fhir`` — an EMR's FHIR R4 API: ``Patient?identifier=system|value``, then
  ``Encounter?patient=…&status=in-progress,arrived,planned``;
- ``mwl`` — a DICOM Modality Worklist (C-FIND): today's scheduled steps for the modality, whose
  Accession Number, Requested Procedure and Study Instance UID a capture session can adopt.

A directory that cannot answer raises :class:`DirectoryUnavailable` (down, timed out) or
:class:`DirectoryRejected` (refused our request or credentials); messages never hold PHI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Protocol

from app.db.session import Database
from app.gateways.errors import PermanentError, TransientError
from app.settings import Settings

OPEN_ENCOUNTER_STATUSES = ("in-progress", "arrived", "planned")
"""FHIR Encounter statuses offered for a new capture, in order of preference."""


class DirectoryUnavailable(TransientError):
    """The directory did not answer (connection refused, timeout, 5xx): fall back to manual
    entry. The message names the directory and the reason, never a patient."""


class DirectoryRejected(PermanentError):
    """The directory refused the request (credentials, 4xx, a malformed answer)."""


class ImportFormatError(ValueError):
    """An import file cannot be used; the message names the row or entry, never its data."""


@dataclass(frozen=True)
class EncounterRecord:
    """An open encounter (visit): ``identifier`` becomes the DICOM Admission ID.

    ``status`` is FHIR's Encounter.status code, or None when the source does not say (MWL).
    """

    identifier: str
    status: str | None
    department: str | None = None
    started: datetime | None = None


@dataclass(frozen=True)
class WorklistItem:
    """A scheduled procedure step of a Modality Worklist that a capture session can fulfil."""

    study_uid: str
    accession_number: str  # may be empty (IHE EBIW)
    requested_procedure_id: str
    requested_procedure_description: str
    scheduled_step_id: str
    scheduled_start: datetime | None
    modality: str
    admission_id: str | None


@dataclass(frozen=True)
class PatientRecord:
    """One patient as a directory knows them. ``sex`` is F, M, O or None.

    ``sources`` names the directories that returned the patient, first the one whose
    demographics are shown. ``replaces`` holds the (issuer, MRN) of the patients that a
    directory said were replaced by this one (FHIR ``Patient.link`` ``replaced-by``): looking
    one of those up found this patient instead.
    """

    mrn: str
    issuer: str
    family: str
    given: str
    birth_date: date | None
    sex: str | None
    sources: tuple[str, ...]
    encounters: tuple[EncounterRecord, ...] = ()
    worklist: tuple[WorklistItem, ...] = ()
    replaces: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        """(issuer, MRN): the identity of a patient across directories."""
        return self.issuer, self.mrn

    @property
    def dicom_name(self) -> str:
        """Patient's Name as a DICOM PN (``FAMILY^GIVEN``), empty when unknown."""
        return f"{self.family}^{self.given}".strip("^")


class PatientDirectory(Protocol):
    """One source of patients (local index, EMR, worklist)."""

    name: str
    """Short, stable name: ``local``, ``fhir`` or ``mwl``."""

    def find(self, mrn: str, issuer: str | None) -> list[PatientRecord]:
        """The patients whose MRN is ``mrn`` (exactly), of ``issuer`` or of any issuer when it
        is None, each with their open encounters (and worklist items). Possibly empty, possibly
        several: the caller decides, never the directory.

        Raises :class:`DirectoryUnavailable` or :class:`DirectoryRejected`.
        """
        ...


@dataclass(frozen=True)
class Lookup:
    """The merged answer of every configured directory.

    ``unavailable`` maps the name of each directory that failed to a PHI-free reason; when it
    is not empty, an empty ``patients`` does not mean that the patient is unknown.
    """

    patients: tuple[PatientRecord, ...]
    unavailable: dict[str, str]


class Directories:
    """The configured directories, queried in order and merged by (issuer, MRN)."""

    def __init__(self, directories: Sequence[PatientDirectory]) -> None:
        if not directories:
            raise ValueError("at least one patient directory is needed")
        self.directories = tuple(directories)

    def find(self, mrn: str, issuer: str | None) -> Lookup:
        """Ask every directory; a failing one is reported in ``unavailable``, not raised.

        Guarantees: one record per (issuer, MRN), with the demographics of the first directory
        that knows the patient, the encounters of all (distinct by identifier) and the worklist
        items of all (distinct by Study Instance UID); patients in first-seen order.
        """
        merged: dict[tuple[str, str], PatientRecord] = {}
        unavailable: dict[str, str] = {}
        for directory in self.directories:
            try:
                found = directory.find(mrn, issuer)
            except (DirectoryUnavailable, DirectoryRejected) as exc:
                unavailable[directory.name] = str(exc)
                continue
            for record in found:
                known = merged.get(record.key)
                merged[record.key] = record if known is None else _merge(known, record)
        return Lookup(tuple(merged.values()), unavailable)


def _merge(first: PatientRecord, other: PatientRecord) -> PatientRecord:
    encounters = {e.identifier: e for e in other.encounters} | {
        e.identifier: e for e in first.encounters}
    worklist = {w.study_uid: w for w in other.worklist} | {w.study_uid: w for w in first.worklist}
    return replace(first, sources=first.sources + tuple(s for s in other.sources
                                                          if s not in first.sources),
                   encounters=sort_encounters(list(encounters.values())),
                   worklist=tuple(worklist.values()),
                   replaces=first.replaces + tuple(r for r in other.replaces
                                                   if r not in first.replaces))


def _encounter_order(encounter: EncounterRecord) -> tuple[int, float]:
    """Preferred status first, then the most recently started."""
    rank = (OPEN_ENCOUNTER_STATUSES.index(encounter.status)
            if encounter.status in OPEN_ENCOUNTER_STATUSES else len(OPEN_ENCOUNTER_STATUSES))
    return rank, -(encounter.started.timestamp() if encounter.started else 0.0)


def sort_encounters(encounters: Sequence[EncounterRecord]) -> tuple[EncounterRecord, ...]:
    """Encounters in the order a clinician is offered them (see :func:`_encounter_order`)."""
    return tuple(sorted(encounters, key=_encounter_order))


def build_directories(settings: Settings, db: Database) -> Directories:
    """The directories named by ``EBIW_PATIENT_DIRECTORY``, in that order.

    Guarantees: every directory is configured from ``settings`` (already validated by
    :meth:`Settings.checked`); nothing is contacted until the first lookup.
    """
    from app.gateways.patients.fhir import FhirDirectory, TokenSource
    from app.gateways.patients.local import LocalIndex
    from app.gateways.patients.mwl import WorklistDirectory

    timeout = float(settings.patient_timeout_seconds)
    built: list[PatientDirectory] = []
    for name in settings.patient_directory_names:
        if name == "local":
            built.append(LocalIndex(db))
        elif name == "fhir":
            token = None
            if settings.patient_fhir_token_url:
                key = settings.patient_fhir_private_key
                token = TokenSource(settings.patient_fhir_token_url,
                                    settings.patient_fhir_client_id,
                                    client_secret=settings.patient_fhir_client_secret,
                                    private_key_pem=key.read_bytes() if key else None,
                                    key_id=settings.patient_fhir_key_id,
                                    scope=settings.patient_fhir_scope, timeout=timeout)
            built.append(FhirDirectory(settings.patient_fhir_url,
                                       issuer_systems=settings.issuer_systems,
                                       default_issuer=settings.default_issuer,
                                       timeout=timeout, token=token))
        else:
            host, _, port = settings.mwl_address.rpartition(":")
            built.append(WorklistDirectory(host, int(port), settings.mwl_aet,
                                           calling_aet=settings.mwl_calling_aet,
                                           modality=settings.mwl_modality, timeout=timeout,
                                           default_issuer=settings.default_issuer))
    return Directories(built)
