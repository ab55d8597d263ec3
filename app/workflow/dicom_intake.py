"""DICOM objects made by other devices (dermatoscopes, fundus cameras, other capture apps): the
one intake behind STOW-RS (``POST /dicomweb/studies``) and the C-STORE SCP (``ebiw dicom-scp``).

Bytes in, one :class:`Received` out. An object is kept only when it is a readable Part 10 file
of an accepted SOP class whose Patient ID and Issuer of Patient ID (the default issuer when it
has none) name a patient a configured directory knows. Its patient attributes are then coerced
to the directory's (name, birth date, sex, issuer; the header re-encoded, the pixel data kept
byte for byte), and in one transaction it is stored in the archive and indexed, its study gets
a capture session (created the first time: one study = one session, as for our photos), its
deliveries to the PACS and the EMR are queued and a ``dicom.receive`` audit record is written.
A refusal stores nothing and is audited too.

Status codes (PS3.4 B.2.3, the C-STORE statuses; STOW-RS reports the same values as Failure or
Warning Reason): ``Axxx`` refusals are about our resources and invite a retry later; ``Cxxx``
("cannot understand") refuse what this object says (unknown patient, a SOP Instance UID already
stored with other bytes), which sending it again unchanged cannot fix.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from pydicom import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import CaptureSession, Instance, SessionIdentification, SessionSource
from app.db.session import Database
from app.durable import disk_full
from app.gateways.archive import Archive, ArchiveConflictError, InstanceKey
from app.gateways.archive.base import instance_path
from app.gateways.patients import Directories, PatientRecord
from app.pipeline.dicom.read import UnreadableDicomError, read_part10, rewrite_header
from app.settings import Settings
from app.workflow import audit
from app.workflow.delivery import Outbox
from app.workflow.intake import IdentificationMethod

ACCEPTED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.7": "Dermoscopic Photography Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image Storage",
}
"""Visible-light photographs of skin, wounds and eyes: what the EBIW workflow files and the
viewer shows. Video, microscopy, endoscopy and Secondary Capture are refused (0x0122)."""

_SESSION_NAMESPACE = uuid.UUID("0f7d61a2-3c3e-4d0e-9a55-6b1f4d1f2b7e")
"""Capture session ids of received studies: uuid5 of the Study Instance UID, so every receipt
of one study (and every node) names the same session."""


class Status(IntEnum):
    """C-STORE response statuses (PS3.4 B.2.3), also STOW-RS Failure/Warning Reasons."""

    SUCCESS = 0x0000
    COERCED = 0xB000  # Warning: Coercion of Data Elements (the patient's, to the directory's)
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # Refused: SOP Class not supported
    OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources (the archive's disk is full)
    DIRECTORY_UNAVAILABLE = 0xA701  # Refused: Out of Resources (no directory answered)
    NOT_MATCHING_SOP_CLASS = 0xA900  # Error: Data Set does not match SOP Class
    CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand (not a readable Part 10 object)
    UNKNOWN_PATIENT = 0xC001  # Cannot understand: no directory knows the patient
    CONFLICT = 0xC002  # Cannot understand: this SOP Instance UID holds other bytes here
    WRONG_STUDY = 0xC003  # Cannot understand: not of the study the request names


@dataclass(frozen=True)
class Received:
    """What became of one object: ``status`` and a reason that names no patient data (at
    most 64 characters: it is also a C-STORE Error Comment, an LO); the
    UIDs as far as the object could be read (empty otherwise); ``coerced`` lists the keywords
    of the patient attributes changed to the directory's."""

    status: Status
    reason: str
    sop_class_uid: str = ""
    sop_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    coerced: tuple[str, ...] = ()

    @property
    def stored(self) -> bool:
        """Whether the object is in the archive (success, with or without a warning)."""
        return self.status in (Status.SUCCESS, Status.COERCED)


class Refused(Exception):
    """An object we do not keep: its status and a reason without patient data."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        return int(ds.get(keyword))
    except (TypeError, ValueError):
        return None


def _patient_values(record: PatientRecord) -> dict[str, str]:
    """The patient attributes the directory decides, as DICOM text (only those it knows)."""
    values = {"IssuerOfPatientID": record.issuer, "PatientName": record.dicom_name,
              "PatientBirthDate": record.birth_date.strftime("%Y%m%d")
              if record.birth_date else "",
              "PatientSex": record.sex or ""}
    return {keyword: value for keyword, value in values.items() if value}


def patient_changes(ds: Dataset, values: dict[str, str]) -> dict[str, str]:
    """Those of ``values`` (keyword -> DICOM text) that differ from ``ds``'s."""
    return {k: v for k, v in values.items() if _text(ds, k) != v}


def _setter(changes: dict[str, str]) -> Callable[[Dataset], None]:
    """Sets ``changes`` in a data set; non-ASCII values make its character set UTF-8 (pydicom
    re-encodes every text value on writing)."""

    def change(ds: Dataset) -> None:
        if any(not v.isascii() for v in changes.values()):
            ds.SpecificCharacterSet = "ISO_IR 192"
        for keyword, value in changes.items():
            setattr(ds, keyword, value)

    return change


class DicomIntake:
    """Receives DICOM objects from other devices; see the module doc."""

    def __init__(self, db: Database, archive: Archive, settings: Settings,
                 directories: Directories, outbox: Outbox) -> None:
        self.db = db
        self.archive = archive
        self.settings = settings
        self.directories = directories
        self.outbox = outbox

    def receive(self, data: bytes, *, sender: str, sop_class_uid: str | None = None,
                study_uid: str | None = None) -> Received:
        """Reconcile, store and queue one Part 10 object sent by ``sender`` (the audit actor).

        ``sop_class_uid``: the class the transport declared (C-STORE's Affected SOP Class);
        ``study_uid``: the study the request is limited to (STOW-RS ``/studies/{uid}``).
        Guarantees: a stored result (:attr:`Received.stored`) means the object is durably in
        the archive, indexed, its deliveries queued and audited, all committed; the same bytes
        again are a success that changes nothing; any other result stored nothing. Database
        faults propagate (the transport maps them).
        """
        header: Dataset | None = None
        try:
            header = read_part10(data)  # whole: a cut object reads as an empty data set
            return self._receive(data, header, sender, sop_class_uid, study_uid)
        except UnreadableDicomError as exc:
            refusal = Refused(Status.CANNOT_UNDERSTAND, str(exc))
        except Refused as exc:
            refusal = exc
        except OSError as exc:
            if not disk_full(exc):
                raise
            refusal = Refused(Status.OUT_OF_RESOURCES, "the archive's disk is full")
        result = Received(refusal.status, refusal.reason,
                          *(_text(header, k) for k in ("SOPClassUID", "SOPInstanceUID",
                                                       "StudyInstanceUID", "SeriesInstanceUID"))
                          if header is not None else ())
        audit.append(self.db, sender, "dicom.receive",
                     *([audit.instance_ref(result.sop_uid)] if result.sop_uid else []),
                     outcome=audit.FAILED, detail={"status": f"{result.status:04X}",
                                                   "reason": result.reason},
                     node=self.settings.node)
        return result

    def _receive(self, data: bytes, header: Dataset, sender: str, declared: str | None,
                 study_uid: str | None) -> Received:
        sop_class = _text(header, "SOPClassUID")
        meta = getattr(header, "file_meta", None) or Dataset()
        if not sop_class or not _text(header, "SOPInstanceUID"):
            raise Refused(Status.CANNOT_UNDERSTAND, "the object is cut short or has no SOP "
                          "Class or SOP Instance UID")
        if sop_class not in ACCEPTED_SOP_CLASSES:
            raise Refused(Status.SOP_CLASS_NOT_SUPPORTED, "this SOP class is not accepted here")
        if (declared and declared != sop_class) or \
                _text(meta, "MediaStorageSOPClassUID") not in ("", sop_class):
            raise Refused(Status.NOT_MATCHING_SOP_CLASS,
                          "the SOP class of the data set differs from the one declared")
        if "PixelData" not in header:
            raise Refused(Status.NOT_MATCHING_SOP_CLASS, "the image has no Pixel Data")
        key = InstanceKey(_text(header, "StudyInstanceUID"), _text(header, "SeriesInstanceUID"),
                          _text(header, "SOPInstanceUID"), sop_class)
        try:
            instance_path(key)
        except ValueError:
            raise Refused(Status.NOT_MATCHING_SOP_CLASS, "a Study, Series or SOP Instance UID "
                          "is missing or invalid") from None
        if study_uid is not None and key.study_uid != study_uid:
            raise Refused(Status.WRONG_STUDY, "the instance is not of the study in the URL")
        patient = self._patient(header)
        changes = patient_changes(header, _patient_values(patient))
        coerced = tuple(changes)
        stored = rewrite_header(data, _setter(changes)) if changes else data
        status = Status.COERCED if coerced else Status.SUCCESS
        reason = "patient attributes set to the directory's values" if coerced else "stored"
        result = Received(status, reason, sop_class, key.sop_uid, key.study_uid, key.series_uid,
                          coerced)
        for attempt in range(2):
            try:
                self._store(key, stored, header, patient, sender, coerced)
                break
            except IntegrityError:  # a concurrent receipt made the session or row: look again
                if attempt:
                    raise
            except ArchiveConflictError:
                raise Refused(Status.CONFLICT, "this SOP Instance UID is already stored with "
                              "other content") from None
        return result

    def _patient(self, header: Dataset) -> PatientRecord:
        """The directory's record of the object's patient; :class:`Refused` when none."""
        mrn = _text(header, "PatientID")
        issuer = _text(header, "IssuerOfPatientID") or self.settings.default_issuer
        if not mrn:
            raise Refused(Status.UNKNOWN_PATIENT, "the object has no Patient ID")
        lookup = self.directories.find(mrn, issuer)
        found = [p for p in lookup.patients if p.key == (issuer, mrn)]
        if found:
            return found[0]
        if lookup.unavailable:
            raise Refused(Status.DIRECTORY_UNAVAILABLE,
                          "the patient directory is unavailable: send it again later")
        raise Refused(Status.UNKNOWN_PATIENT,
                      "no patient directory knows this Patient ID and issuer")

    def _store(self, key: InstanceKey, data: bytes, header: Dataset, patient: PatientRecord,
               sender: str, coerced: tuple[str, ...]) -> None:
        """One transaction: the study's session (found or created), the archived instance,
        its deliveries and the audit record. The same bytes already stored: nothing."""
        digest = hashlib.sha256(data).hexdigest()
        with self.db.session() as db:
            existing = db.get(Instance, key.sop_uid)
            if existing is not None:
                if existing.sha256 != digest:
                    raise ArchiveConflictError(key.sop_uid)
                return
            session = self._session(db, key.study_uid, header, patient, sender)
            instance = self.archive.store(db, key, data, {
                "SeriesNumber": _int(header, "SeriesNumber"),
                "InstanceNumber": _int(header, "InstanceNumber"),
                "Modality": _text(header, "Modality") or None})
            self.outbox.enqueue_photo(db, session, instance)
            audit.record(db, sender, "dicom.receive",
                         audit.patient_ref(patient.mrn, patient.issuer),
                         audit.study_ref(key.study_uid), audit.instance_ref(key.sop_uid),
                         outcome=audit.SUCCESS,
                         detail={"sop_class": key.sop_class_uid, "coerced": list(coerced)},
                         node=self.settings.node)

    def _session(self, db: Session, study_uid: str, header: Dataset, patient: PatientRecord,
                 sender: str) -> CaptureSession:
        """The capture session of ``study_uid``, created for a study seen the first time;
        :class:`Refused` when the study is another patient's."""
        session = db.scalar(select(CaptureSession).where(CaptureSession.study_uid == study_uid))
        if session is not None:
            if (session.issuer, session.patient_id) != patient.key:
                raise Refused(Status.UNKNOWN_PATIENT, "the study is another patient's")
            return session
        now = datetime.now().astimezone()
        offset = now.utcoffset() or timedelta(0)
        session_id = str(uuid.uuid5(_SESSION_NAMESPACE, study_uid))
        session = CaptureSession(
            id=session_id, study_uid=study_uid, patient_id=patient.mrn, issuer=patient.issuer,
            patient_name=patient.dicom_name or None, birth_date=patient.birth_date,
            sex=patient.sex, encounter=_text(header, "AdmissionID")[:64] or None,
            accession_number=_text(header, "AccessionNumber")[:16],
            department=_text(header, "InstitutionalDepartmentName")[:64] or None,
            source=SessionSource.PROVIDER, created_by=sender[:128],
            created_at=now.astimezone(UTC), utc_offset_minutes=int(offset.total_seconds() // 60))
        session.identification = SessionIdentification(
            session_id=session_id, method=IdentificationMethod.DEVICE,
            evidence={"directories": list(patient.sources),
                      "sop_class": _text(header, "SOPClassUID")})
        db.add(session)
        db.flush()
        return session
