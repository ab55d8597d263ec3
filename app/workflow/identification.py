"""Identify the patient: a wristband photo or a typed/scanned barcode → rules → directories.

The result is never a guess: every patient the directories return for the identifier is
offered, with a flag when there are several, and each carries the evidence of its match (how it
was identified, reader, symbology, rule, directories, fields that matched) for the capture
session to keep with the study. Nothing here logs or raises with a payload, MRN or name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from app.db.session import Database
from app.gateways.patients import Directories, PatientRecord, build_directories
from app.gateways.patients.local import ImportCounts, LocalIndex, read_import_file
from app.pipeline.decode import UnreadablePhotoError
from app.pipeline.dicom import values
from app.pipeline.identify import Barcode, read_barcodes
from app.pipeline.wristband import NoWristbandRuleMatched, Rule, WristbandId, parse_wristband
from app.settings import Settings
from app.workflow.intake import (
    IdentificationMethod,
    IntakeError,
    InvalidRequest,
    UnreadablePhoto,
    refusing_invalid_values,
)

log = logging.getLogger(__name__)

BARCODE_METHODS = (IdentificationMethod.SCANNED, IdentificationMethod.TYPED)
"""How a barcode text reached us without a photo: the device's scanner, or typed by hand."""
MAX_BARCODE_CHARS = 512


class NoBarcode(IntakeError):
    """The photo was readable but held no barcode we could decode."""

    status, code = 422, "no_barcode"

    def __init__(self) -> None:
        super().__init__("no barcode was found in the photo: fill the frame with the "
                         "wristband's barcode, hold it flat and steady, or type the identifier")


class NoWristbandRule(IntakeError):
    """Barcodes were read but none is a wristband identifier under the configured rules."""

    status, code = 422, "no_wristband_rule"

    def __init__(self, symbologies: Sequence[str], reasons: Sequence[str]) -> None:
        detail = f" ({'; '.join(reasons)})" if reasons else ""
        super().__init__(f"the barcode ({', '.join(symbologies)}) is not a wristband "
                         f"identifier{detail}")


class DirectoriesUnavailable(IntakeError):
    """No patient found and at least one directory did not answer: nobody can say who it is."""

    status, code = 503, "directory_unavailable"

    def __init__(self, reasons: dict[str, str]) -> None:
        super().__init__("the patient directory is unavailable (" + "; ".join(reasons.values())
                         + "): enter the patient manually")


@dataclass(frozen=True)
class Reading:
    """A barcode and the identifier a wristband rule made of it (``barcode`` is None when the
    text came typed or from the device's scanner)."""

    identifier: WristbandId
    symbology: str
    barcode: Barcode | None = None


@dataclass(frozen=True)
class Match:
    """One patient offered for the identifier, and why (``evidence``, stored with the study)."""

    patient: PatientRecord
    reading: Reading | None
    evidence: dict[str, Any]


class LookupStatus(StrEnum):
    """What looking up an identifier found: ``matched`` (exactly one patient), ``ambiguous``
    (several) or ``not_found``; a batch group's kept answer may also be ``unavailable`` (a
    directory did not answer)."""

    MATCHED = "matched"
    AMBIGUOUS = "ambiguous"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class IdentifyResult:
    """Everything one identification found.

    ``status``: ``matched`` (exactly one patient), ``ambiguous`` (several: the clinician must
    choose, nothing is picked) or ``not_found``. ``unavailable`` names directories that did
    not answer (then ``not_found`` is never returned: :class:`DirectoriesUnavailable` is).
    """

    method: IdentificationMethod
    readings: tuple[Reading, ...]
    matches: tuple[Match, ...]
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> LookupStatus:
        if not self.matches:
            return LookupStatus.NOT_FOUND
        return LookupStatus.MATCHED if len(self.matches) == 1 else LookupStatus.AMBIGUOUS


def read_wristband(data: bytes, rules: Sequence[Rule], max_pixels: int) -> list[Reading]:
    """The wristband identifiers in a photo, one per barcode that a rule accepts, in the
    reader's order.

    Raises :class:`UnreadablePhoto` (not an image, too large, truncated), :class:`NoBarcode`
    or :class:`NoWristbandRule`; messages hold no payload.
    """
    try:
        barcodes = read_barcodes(data, max_pixels=max_pixels)
    except UnreadablePhotoError as exc:
        raise UnreadablePhoto(str(exc)) from exc
    if not barcodes:
        raise NoBarcode()
    readings: list[Reading] = []
    reasons: list[str] = []
    for barcode in barcodes:
        try:
            identifier = parse_wristband(barcode.payload, barcode.symbology, rules)
        except NoWristbandRuleMatched as exc:
            reasons.extend(exc.reasons)
            continue
        readings.append(Reading(identifier, barcode.symbology, barcode))
    if not readings:
        raise NoWristbandRule(sorted({b.symbology for b in barcodes}), reasons)
    return readings


class Identifier:
    """Turns wristband photos, barcode texts and typed MRNs into offered patients."""

    def __init__(self, directories: Directories, rules: Sequence[Rule], max_pixels: int) -> None:
        self.directories = directories
        self.rules = tuple(rules)
        self.max_pixels = max_pixels

    def from_photo(self, data: bytes) -> IdentifyResult:
        """Identify from a wristband photo (method ``wristband``); see :func:`read_wristband`.

        Several barcodes with different identifiers are all looked up: their patients are
        offered together, so disagreeing barcodes show up as ``ambiguous``.
        """
        return self._lookup(IdentificationMethod.WRISTBAND,
                            read_wristband(data, self.rules, self.max_pixels))

    def from_barcode(self, text: Any, *, method: Any = IdentificationMethod.TYPED,
                     symbology: Any = None) -> IdentifyResult:
        """Identify from barcode text typed by hand or read by the device's scanner.

        ``symbology`` is what the scanner reported (rules limited to symbologies only apply
        when it is given). Raises :class:`InvalidRequest` for bad input and
        :class:`NoWristbandRule` when no rule accepts the text.
        """
        if method not in BARCODE_METHODS:
            raise InvalidRequest(f"method must be {' or '.join(BARCODE_METHODS)}")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_BARCODE_CHARS:
            raise InvalidRequest(f"barcode must be text of 1 to {MAX_BARCODE_CHARS} characters")
        if symbology is not None and not isinstance(symbology, str):
            raise InvalidRequest("symbology must be text")
        name = symbology or method
        try:
            identifier = parse_wristband(text, name, self.rules)
        except NoWristbandRuleMatched as exc:
            raise NoWristbandRule([name], exc.reasons) from None
        return self._lookup(IdentificationMethod(method), [Reading(identifier, name)])

    def search(self, mrn: Any, issuer: Any = None) -> IdentifyResult:
        """Look up an MRN entered by hand (method ``manual``; no wristband rule involved)."""
        with refusing_invalid_values():
            mrn = values.identifier(mrn, "mrn", required=True)
            issuer = values.identifier(issuer, "issuer")
        lookup = self.directories.find(mrn, issuer)
        matches = tuple(Match(p, None, _evidence(None, p, issuer is not None))
                        for p in lookup.patients)
        return self._result(IdentificationMethod.MANUAL, (), matches, lookup.unavailable)

    def _lookup(self, method: IdentificationMethod, readings: list[Reading]) -> IdentifyResult:
        matches: dict[tuple[str, str], Match] = {}
        unavailable: dict[str, str] = {}
        done: set[tuple[str, str | None]] = set()
        for reading in readings:
            wid = reading.identifier
            if (wid.mrn, wid.issuer) in done:
                continue
            done.add((wid.mrn, wid.issuer))
            lookup = self.directories.find(wid.mrn, wid.issuer)
            unavailable.update(lookup.unavailable)
            for patient in lookup.patients:
                matches.setdefault(patient.key, Match(
                    patient, reading, _evidence(reading, patient, wid.issuer is not None)))
        return self._result(method, tuple(readings), tuple(matches.values()), unavailable)

    @staticmethod
    def _result(method: IdentificationMethod, readings: tuple[Reading, ...],
                matches: tuple[Match, ...], unavailable: dict[str, str]) -> IdentifyResult:
        if not matches and unavailable:
            raise DirectoriesUnavailable(unavailable)
        result = IdentifyResult(method, readings, matches, unavailable)
        log.info("identification method=%s status=%s candidates=%d unavailable=%s", method,
                 result.status, len(matches), ",".join(unavailable) or "-")
        return result


def _evidence(reading: Reading | None, patient: PatientRecord,
              issuer_given: bool) -> dict[str, Any]:
    """What matched, to be kept with the study: no payload, no demographics."""
    matched = ["mrn"] + (["issuer"] if issuer_given else [])
    evidence: dict[str, Any] = {"directories": list(patient.sources)}
    if reading is not None:
        wid = reading.identifier
        evidence.update(symbology=reading.symbology, rule=wid.rule)
        if reading.barcode is not None:
            evidence.update(reader=reading.barcode.reader, gs1=reading.barcode.gs1)
        if wid.encounter is not None:
            if any(e.identifier == wid.encounter for e in patient.encounters):
                matched.append("encounter")
            else:
                evidence["unmatched"] = ["encounter"]
    evidence["matched"] = matched
    if patient.replaces:  # the MRN read is of a patient merged into this one (FHIR link)
        evidence["link"] = "replaced-by"
    return evidence


def build_identifier(settings: Settings, db: Database) -> Identifier:
    """The identifier service configured by ``EBIW_PATIENT_DIRECTORY``, ``EBIW_WRISTBAND_RULES``
    and ``EBIW_MAX_PIXELS`` (nothing is contacted until the first identification)."""
    return Identifier(build_directories(settings, db), settings.wristband_rule_set,
                      settings.max_pixels)


def import_patient_file(db: Database, path: Path, *, settings: Settings,
                        issuer: str | None = None) -> ImportCounts:
    """Import a FHIR R4 Bundle or CSV file into the local patient index (idempotent upsert).

    ``issuer`` (default ``EBIW_DEFAULT_ISSUER``) is used for patients whose file names none;
    Bundle identifier systems map to issuers by ``EBIW_EMR_ISSUER_SYSTEMS``. Raises
    :class:`ImportFormatError` (nothing imported) or :class:`OSError`.
    """
    records = read_import_file(path, default_issuer=issuer or settings.default_issuer,
                               issuer_systems=settings.issuer_systems)
    return LocalIndex(db).upsert(records)
