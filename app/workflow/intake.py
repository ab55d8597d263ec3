"""Accept capture sessions and photos: the only place where pipeline, database and archive meet.

An accepted photo means: its DICOM object is durably written to the archive and the database
transaction that indexes it is committed. A video clip DICOM does not take as recorded is
accepted as staged instead (its bytes durably in the data dir, its row and re-encode job
committed) and stored by the worker later. Uploads are idempotent by the client's UUID: the
same bytes again give the same answer, other bytes under that UUID are refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from app.db.models import (
    CaptureSession,
    Delivery,
    DeliveryStatus,
    Instance,
    Photo,
    SessionIdentification,
    SessionSource,
    SessionStatus,
    StagedClip,
    as_utc,
)
from app.db.session import Database
from app.durable import STALE_AFTER_S, TEMP_PREFIX, fsync_dir, temp_file, write_durably
from app.gateways.archive import Archive, ArchiveConflictError, InstanceKey
from app.gateways.errors import GatewayError, PermanentError, TransientError
from app.gateways.patients import Directories
from app.gateways.registry import Registry
from app.pipeline.color import ColorOutcome, normalize_photo
from app.pipeline.decode import PreparedPhoto, UnreadablePhotoError, prepare_for_dicom
from app.pipeline.dicom import values
from app.pipeline.dicom.builder import (
    VL_PHOTOGRAPHIC_IMAGE_STORAGE,
    Derivation,
    InstanceInfo,
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    build_vl_photo,
)
from app.pipeline.dicom.codes import LATERALITY, PAIRED_SIDES, body_site, body_sites
from app.pipeline.dicom.uids import derived_uuid, uid_from_uuid
from app.pipeline.dicom.values import InvalidValue
from app.pipeline.dicom.video import VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE, write_video_photo
from app.pipeline.video import (
    ClipInfo,
    ClipTooLongError,
    UnreadableVideoError,
    probe,
    reencode_h264,
    remux_mp4,
)
from app.settings import Settings
from app.workflow.delivery import REENCODE_QUEUE, Claim, Outbox, Results, utcnow

log = logging.getLogger(__name__)

SOURCES = tuple(SessionSource)
CONSENTS = ("given", "declined", "not-required")
SEXES = ("F", "M", "O")
ORIGINAL_SERIES_NUMBER = 1
NORMALIZED_SERIES_NUMBER = 2
LABEL_SERIES_NUMBER = 3
MEASUREMENT_SERIES_NUMBER = 4  # wound measurement reports (app/workflow/measurements.py)
REJECTION_SERIES_NUMBER = 5  # IOCM rejection notes (app/workflow/corrections.py)
VIDEO_SERIES_NUMBER = 6  # video clips (app/pipeline/video.py)
PRESENTATION_SERIES_NUMBER = 7  # measurement graphics (app/workflow/measurements.py)
STAGED_CLIPS_DIR = "staged-clips"  # under the data dir: clips waiting for their re-encode
REENCODE_SECONDS_PER_CLIP_SECOND = 10
"""What a re-encode's lease allows per second of the longest clip: twice the 4.7 s that
bench/bench_video.py measured for 1080p30 VP8 on one core of a loaded machine."""


class IdentificationMethod(StrEnum):
    """How a session's patient was identified: photo of the wristband, the device's barcode
    scanner, typed identifier, chosen from the worklist, launched from the EMR, entered by hand,
    or named by a DICOM object another device sent (and found in a directory)."""

    WRISTBAND = "wristband"
    SCANNED = "scanned"
    TYPED = "typed"
    WORKLIST = "worklist"
    EMR_LAUNCH = "emr-launch"
    MANUAL = "manual"
    DEVICE = "device"  # a DICOM object's own Patient ID and issuer (app/workflow/dicom_intake.py)


MAX_EVIDENCE_CHARS = 4096
MAX_DESCRIPTION_CHARS = 36
"""A session's description (the view, e.g. close-up) is added to the Series Description (LO)
after the series' own words, so it is kept shorter than an LO."""


class IntakeError(Exception):
    """A request we refuse; ``status`` is the HTTP status, the message is safe to show (no PHI)."""

    status = 400
    code = "invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(IntakeError):
    status, code = 422, "invalid"


class NotFound(IntakeError):
    status, code = 404, "not_found"


class Conflict(IntakeError):
    status, code = 409, "conflict"


class UnreadablePhoto(IntakeError):
    status, code = 422, "unreadable_photo"


class UnreadableVideo(IntakeError):
    status, code = 422, "unreadable_video"


class UnsupportedVideo(IntakeError):
    """A clip that would need re-encoding where re-encoding is not offered (batch import)."""

    status, code = 415, "unsupported_video"


class ClipTooLong(IntakeError):
    status, code = 413, "clip_too_long"


class BodySiteRequired(IntakeError):
    """A video clip for a session without a body site. PS3.3 C.8.12.1 (VL Image Module)
    requires the Anatomic Region Sequence, with a code, in every multi-frame VL image that
    is not of a specimen, and no DICOM context group of anatomic regions has a code for an
    unknown one: such a clip would be an invalid object, so it is refused, nothing stored."""

    status, code = 422, "body_site_required"


class ClipMoved(Exception):
    """A staged clip's study moved to another patient while the clip was being re-encoded:
    the re-encode is retried, then stored in the session the clip now belongs to."""


class ClipGone(Exception):
    """A staged clip was stored by another worker, or discarded with its purged study, while
    it was being re-encoded: there is nothing left to store."""


CLIP_NEEDS_SITE = ("a video clip needs the capture's body site (DICOM requires the anatomic "
                   "region of a video): choose the body site, then send the clip again")


@dataclass(frozen=True)
class VideoWork:
    """A checked clip: what it is and the file that holds its bit stream, an MP4 ready to
    wrap (the upload itself, its video packets copied into a new MP4, or its re-encode) or,
    when :attr:`needs_reencode`, the upload as received."""

    clip: ClipInfo
    payload: Path

    @property
    def needs_reencode(self) -> bool:
        """Whether DICOM cannot take the clip's codec as recorded (VP8/VP9 WebM, H.264 above
        level 4.2…): it is staged for the worker to re-encode to H.264."""
        return self.clip.transfer_syntax is None


@contextmanager
def checked_clip(data: bytes, settings: Settings) -> Iterator[VideoWork]:
    """Inside, the upload as a checked clip, in a private temporary directory removed on
    leaving; a clip DICOM takes as recorded has been remuxed when it had to be, one that
    needs re-encoding is left as it is (re-encoding is the worker's job, never a request's).

    Raises (nothing stored): :class:`UnreadableVideo` for a damaged, truncated or non-video
    file, :class:`ClipTooLong` past ``EBIW_MAX_VIDEO_SECONDS``.
    """
    with tempfile.TemporaryDirectory(prefix="ebiw-clip-") as work:
        upload = Path(work) / "upload"
        upload.write_bytes(data)
        try:
            clip = probe(upload, max_seconds=settings.max_video_seconds,
                         keep_audio=settings.video_keep_audio)
            payload = upload
            if clip.transfer_syntax is not None and not clip.as_recorded:
                payload = Path(work) / "video.mp4"
                remux_mp4(upload, payload, keep_audio=settings.video_keep_audio)
        except ClipTooLongError as exc:
            raise ClipTooLong(str(exc)) from exc
        except UnreadableVideoError as exc:
            raise UnreadableVideo(str(exc)) from exc
        yield VideoWork(clip, payload)


def _has_digest(path: Path, digest: str) -> bool:
    """Whether the file at ``path`` exists and its SHA-256 is ``digest`` (read in blocks,
    never whole)."""
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() == digest
    except FileNotFoundError:
        return False


class UnknownPatient(IntakeError):
    status, code = 422, "unknown_patient"


UNKNOWN_PATIENT = ("no patient directory knows this patient: identify the patient by the "
                   "wristband or the worklist, or ask for the patient to be registered")


@contextmanager
def refusing_invalid_values() -> Iterator[None]:
    """Inside, a value a DICOM attribute cannot hold (:class:`InvalidValue`) is refused as
    :class:`InvalidRequest` (422), naming the field as the caller named it."""
    try:
        yield
    except InvalidValue as exc:
        raise InvalidRequest(str(exc)) from exc


def uuid_field(value: Any, name: str) -> str:
    """``value`` as a canonical UUID string; InvalidRequest naming ``name`` if it is none."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be a UUID") from exc


@dataclass(frozen=True)
class Identification:
    """How the patient was identified and the evidence."""

    method: IdentificationMethod
    evidence: dict[str, Any]

    @classmethod
    def from_json(cls, value: Any) -> Identification | None:
        """Validate ``{"method", "evidence"}``; None when absent."""
        if value is None:
            return None
        try:
            method = IdentificationMethod(
                str(value.get("method")) if isinstance(value, dict) else "")
        except ValueError:
            raise InvalidRequest("identification.method must be one of "
                                 + ", ".join(IdentificationMethod)) from None
        evidence = value.get("evidence") or {}
        if not isinstance(evidence, dict) or len(json.dumps(evidence)) > MAX_EVIDENCE_CHARS:
            raise InvalidRequest("identification.evidence must be a JSON object of at most "
                                 f"{MAX_EVIDENCE_CHARS} characters")
        return cls(method, evidence)


@dataclass(frozen=True)
class WorklistContext:
    """The Modality Worklist item a session fulfils: its Study UID becomes the session's."""

    study_uid: str
    accession_number: str
    requested_procedure_id: str | None
    requested_procedure_description: str | None
    scheduled_step_id: str | None

    @classmethod
    def from_json(cls, value: Any) -> WorklistContext | None:
        """Validate a ``worklist_item`` object (as ``/api/v1/identify`` returns it)."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InvalidRequest("worklist_item must be an object")
        with refusing_invalid_values():
            short = {key: values.identifier(value.get(key), f"worklist_item.{key}", values.SH)
                     for key in ("accession_number", "requested_procedure_id",
                                 "scheduled_step_id")}
            return cls(study_uid=values.uid(value.get("study_instance_uid"),
                                            "worklist_item.study_instance_uid"),
                       accession_number=short["accession_number"] or "",
                       requested_procedure_id=short["requested_procedure_id"],
                       requested_procedure_description=values.text(
                           value.get("requested_procedure_description"),
                           "worklist_item.requested_procedure_description"),
                       scheduled_step_id=short["scheduled_step_id"])


def patient_of(body: Any) -> dict[str, Any]:
    """The ``patient`` object of a JSON body; InvalidRequest if the body or it is no object."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    patient = body.get("patient")
    if not isinstance(patient, dict):
        raise InvalidRequest("patient is required (an object with id and issuer)")
    return patient


def site_and_side(body: dict[str, Any], *, required: bool = False) -> tuple[str | None, str | None]:
    """The body's ``body_site`` (a SNOMED CT code of /api/v1/body-sites; absent only when not
    ``required``) and ``laterality`` (R, L, B or U, and one of R, L, B for a paired site);
    InvalidRequest naming the bad field."""
    site = body.get("body_site") or None
    if site is None and required:
        raise InvalidRequest("body_site is required")
    if site is not None and (not isinstance(site, str) or site not in body_sites()):
        raise InvalidRequest("body_site must be a SNOMED CT code from /api/v1/body-sites")
    laterality = body.get("laterality") or None
    if laterality is not None and laterality not in LATERALITY:
        raise InvalidRequest("laterality must be R, L, B or U")
    if site is not None and body_site(site).paired and laterality not in PAIRED_SIDES:
        raise InvalidRequest("laterality (R, L or B) is required for this body site")
    return site, laterality


def sensitive_flag(body: dict[str, Any]) -> bool:
    """The body's ``sensitive`` flag (default false); InvalidRequest unless a boolean."""
    sensitive = body.get("sensitive", False)
    if not isinstance(sensitive, bool):
        raise InvalidRequest("sensitive must be true or false")
    return sensitive


@dataclass(frozen=True)
class SessionRequest:
    """A validated request to open a capture session (one DICOM study)."""

    patient_id: str
    issuer: str
    name: str | None
    birth_date: date | None
    sex: str | None
    encounter: str | None
    body_site: str | None
    laterality: str | None
    department: str | None
    source: str
    session_id: str
    identification: Identification | None = None
    worklist: WorklistContext | None = None
    consent: str | None = None
    sensitive: bool = False
    description: str | None = None

    @classmethod
    def from_json(cls, body: Any, default_issuer: str) -> SessionRequest:
        """Validate the API's JSON body; raise :class:`InvalidRequest` naming the bad field."""
        patient = patient_of(body)
        birth = patient.get("birth_date")
        try:
            birth_date = date.fromisoformat(birth) if birth else None
        except (TypeError, ValueError) as exc:
            raise InvalidRequest("patient.birth_date must be YYYY-MM-DD") from exc
        sex = patient.get("sex") or None
        if sex is not None and sex not in SEXES:
            raise InvalidRequest("patient.sex must be F, M or O")
        site, laterality = site_and_side(body)
        source = body.get("source") or SessionSource.PROVIDER
        if source not in SOURCES:
            raise InvalidRequest("source must be provider or patient")
        consent = body.get("consent") or None
        if consent is not None and consent not in CONSENTS:
            raise InvalidRequest("consent must be given, declined or not-required")
        sensitive = sensitive_flag(body)
        worklist = WorklistContext.from_json(body.get("worklist_item"))
        identification = Identification.from_json(body.get("identification"))
        if identification is None and worklist is not None:
            identification = Identification(IdentificationMethod.WORKLIST, {})
        with refusing_invalid_values():
            return cls(
                patient_id=values.identifier(patient.get("id"), "patient.id", required=True),
                issuer=values.identifier(patient.get("issuer"), "patient.issuer")
                or default_issuer,
                name=values.person_name(patient.get("name"), "patient.name"),
                birth_date=birth_date, sex=sex,
                encounter=values.identifier(body.get("encounter"), "encounter"),
                body_site=site, laterality=laterality,
                department=values.text(body.get("department"), "department"),
                source=source,
                session_id=uuid_field(body["id"], "id") if body.get("id") else str(uuid.uuid4()),
                identification=identification, worklist=worklist,
                consent=consent,
                description=values.text(body.get("description"), "description",
                                        max_chars=MAX_DESCRIPTION_CHARS),
                sensitive=sensitive or (site is not None and body_site(site).sensitive),
            )


def _identification_row(request: SessionRequest) -> SessionIdentification | None:
    """The row recording how the session's patient was identified, if the client said."""
    if request.identification is None:
        return None
    item = request.worklist
    return SessionIdentification(
        session_id=request.session_id, method=request.identification.method,
        evidence=request.identification.evidence,
        requested_procedure_id=item.requested_procedure_id if item else None,
        requested_procedure_description=item.requested_procedure_description if item else None,
        scheduled_step_id=item.scheduled_step_id if item else None)


@dataclass(frozen=True)
class ColorResult:
    """What intake keeps of the colour step: ``report`` (``ColorOutcome.as_json()``), the
    normalized JPEG when the correction is reliable (else None) with its size, the pixel
    spacing at the chart plane of the normalized image and of the photo (they differ when
    the normalized image is reduced, ``EBIW_COLOR_MAX_PIXELS``), the Derivation
    Description of the normalized instance and the photo's quality record
    (``Quality.as_json()``, measured on the same decoded pixels; None when staged before
    quality records existed)."""

    report: dict[str, Any]
    jpeg: bytes | None
    width: int
    height: int
    pixel_spacing_mm: float | None
    derivation: str | None
    photo_pixel_spacing_mm: float | None
    quality: dict[str, Any] | None = None

    @classmethod
    def of(cls, outcome: ColorOutcome) -> ColorResult:
        return cls(report=outcome.as_json(), jpeg=outcome.jpeg, width=outcome.width,
                   height=outcome.height, pixel_spacing_mm=outcome.pixel_spacing_mm,
                   derivation=outcome.derivation_description() if outcome.jpeg else None,
                   photo_pixel_spacing_mm=outcome.photo_pixel_spacing_mm,
                   quality=outcome.quality.as_json() if outcome.quality else None)


@dataclass(frozen=True)
class PhotoWork:
    """The pixel work on one upload, which needs no session: the JPEG to wrap and the colour
    result (None: the colour step did not run). Batch import does it when a photo arrives and
    hands it to :meth:`Intake.accept_photo` once the photo's patient is confirmed."""

    prepared: PreparedPhoto
    color: ColorResult | None


def color_step(data: bytes, settings: Settings) -> ColorOutcome:
    """The colour step as intake runs it, with the settings' pixel caps and reliability limit
    (``EBIW_MAX_PIXELS``, ``EBIW_COLOR_MAX_PIXELS``, ``EBIW_COLOR_MAX_LOO_DELTA_E``)."""
    return normalize_photo(data, max_pixels=settings.max_pixels,
                           max_loo_delta_e=settings.color_max_loo_delta_e,
                           output_max_pixels=settings.color_max_pixels)


class Intake:
    """Opens sessions and accepts photos into the local archive."""

    def __init__(self, db: Database, archive: Archive, settings: Settings,
                 registry: Registry, directories: Directories) -> None:
        self.db = db
        self.archive = archive
        self.settings = settings
        self.directories = directories
        self.outbox = Outbox(registry)
        # Pixel work is CPU-bound and holds whole frames: the threads of one process take
        # turns (EBIW_PIXEL_JOBS at a time), so memory per process stays bounded and a photo
        # is not slowed by sharing a core with its neighbours.
        self._pixel_slots = threading.BoundedSemaphore(max(1, settings.pixel_jobs))

    # --- sessions ------------------------------------------------------------------------

    def open_session(self, request: SessionRequest, user: str) -> tuple[CaptureSession, bool]:
        """Create the session, or return the existing one when its id is sent again.

        Returns (session, created). The Study Instance UID is derived from the session id, or
        is the worklist item's (then a second session for that item is a :class:`Conflict`);
        how the patient was identified is stored with the session. A new session's patient
        is looked up in the directories unless the unknown-patient policy is ``accept``: one
        nobody knows is refused (:class:`UnknownPatient`, ``refuse``, when every directory
        answered) or the session is opened unverified (``hold``, or a directory was down).
        """
        now = datetime.now().astimezone()
        offset = now.utcoffset() or timedelta(0)
        row = CaptureSession(
            id=request.session_id,
            study_uid=request.worklist.study_uid if request.worklist
            else uid_from_uuid(request.session_id, self.settings.uid_prefix),
            patient_id=request.patient_id, issuer=request.issuer,
            accession_number=request.worklist.accession_number if request.worklist else "",
            patient_name=request.name, birth_date=request.birth_date, sex=request.sex,
            encounter=request.encounter, body_site=request.body_site,
            laterality=request.laterality, department=request.department,
            source=request.source, consent=request.consent, sensitive=request.sensitive,
            description=request.description,
            created_by=user, created_at=now.astimezone(UTC),
            utc_offset_minutes=int(offset.total_seconds() // 60))
        try:
            with self.db.session() as db:
                existing = db.get(CaptureSession, request.session_id)
                if existing is not None:
                    if (existing.patient_id, existing.issuer) != (request.patient_id,
                                                                  request.issuer):
                        raise Conflict("this session id is already used for another patient")
                    return existing, False
                if request.worklist is not None and db.scalar(select(CaptureSession.id).where(
                        CaptureSession.study_uid == request.worklist.study_uid)) is not None:
                    raise Conflict("another capture session already fulfils this worklist item")
                row.identification = _identification_row(request)
                row.patient_verified = self._patient_known(request.patient_id, request.issuer)
                db.add(row)
        except IntegrityError:
            return self.get_session(request.session_id), False
        return row, True

    def _patient_known(self, patient_id: str, issuer: str) -> bool:
        """Whether a directory knows the patient (always, under ``accept``); raises
        :class:`UnknownPatient` under ``refuse`` when none does and every one answered."""
        policy = self.settings.unknown_patient_policy
        if policy == "accept":
            return True
        lookup = self.directories.find(patient_id, issuer)
        if any(p.key == (issuer, patient_id) for p in lookup.patients):
            return True
        if policy == "refuse" and not lookup.unavailable:
            raise UnknownPatient(UNKNOWN_PATIENT)
        return False

    def verify_patient(self, session_id: str) -> CaptureSession:
        """Confirm the patient of an unverified session now that a directory knows them, and
        queue the deliveries of every instance of its study not rejected meanwhile (a
        rejection note is queued, never what it rejects; one transaction). A verified
        session is returned as it is; a patient still unknown raises :class:`Conflict`."""
        session = self.get_session(session_id, photos=False)
        if session.patient_verified:
            return self.get_session(session_id)
        lookup = self.directories.find(session.patient_id, session.issuer)
        if not any(p.key == (session.issuer, session.patient_id) for p in lookup.patients):
            raise Conflict("no patient directory knows this patient yet"
                           + (" (a directory is unavailable)" if lookup.unavailable else ""))
        with self.db.session() as db:
            row = db.get(CaptureSession, session.id)
            if row is not None and not row.patient_verified:
                row.patient_verified = True
                for instance in db.scalars(select(Instance).where(
                        Instance.study_uid == row.study_uid, Instance.shown())
                        .order_by(Instance.stored_at)):
                    self.outbox.enqueue_photo(db, row, instance)
        return self.get_session(session_id)

    def get_session(self, session_id: str, *, photos: bool = True) -> CaptureSession:
        """The session with its identification and, when ``photos``, every photo with its
        instance and every clip staged for re-encoding; without them it is one row read
        however many photos the session holds (``session.photos`` and
        ``session.staged_clips`` are then not loaded). Raises :class:`NotFound`."""
        with self.db.session() as db:
            row = db.get(CaptureSession, uuid_field(session_id, "session id"),
                         options=[selectinload(CaptureSession.photos)
                                  .selectinload(Photo.instance),
                                  selectinload(CaptureSession.staged_clips)]
                         if photos else [])
            if row is None:
                raise NotFound("no such capture session")
            return row

    def complete(self, session_id: str) -> CaptureSession:
        """Mark the session complete (photos may still be added later; they update the study)."""
        with self.db.session() as db:
            row = db.get(CaptureSession, uuid_field(session_id, "session id"))
            if row is None:
                raise NotFound("no such capture session")
            if row.completed_at is None:
                row.status = SessionStatus.COMPLETE
                row.completed_at = datetime.now(UTC)
        return self.get_session(session_id)

    # --- photos --------------------------------------------------------------------------

    def process(self, data: bytes, *, color: bool = True,
                prepared: PreparedPhoto | None = None) -> PhotoWork:
        """Do the pixel work of an upload: the JPEG to wrap (``prepared`` when it was made from
        ``data`` already) and, when ``color`` and ``EBIW_COLOR_NORMALIZATION`` are on, the
        colour step. Raises :class:`UnreadablePhoto` for input we cannot accept (nothing is
        stored here). At most ``EBIW_PIXEL_JOBS`` calls run at once in a process."""
        with self._pixel_slots:
            return self._process(data, color=color, prepared=prepared)

    def _process(self, data: bytes, *, color: bool,
                 prepared: PreparedPhoto | None) -> PhotoWork:
        try:
            prepared = prepared or prepare_for_dicom(data, self.settings.max_pixels)
            outcome = self._color(data) if color else None
        except UnreadablePhotoError as exc:
            raise UnreadablePhoto(str(exc)) from exc
        return PhotoWork(prepared, ColorResult.of(outcome) if outcome else None)

    def accept_photo(self, session_id: str, upload_uuid: str, data: bytes, *,
                     work: PhotoWork | None = None, label: bool = False,
                     burned_in: bool = False, number: int | None = None) -> tuple[Photo, bool]:
        """Store one photo as a DICOM instance; return (photo, created).

        Guarantees: when this returns, the instance is durably in the archive and indexed,
        and its deliveries are queued in the same transaction; the same bytes under the same
        UUID return the first result with ``created=False``; other bytes under that UUID raise
        :class:`Conflict`; unreadable input raises :class:`UnreadablePhoto` and stores nothing.
        ``work`` is :meth:`process`'s result for ``data`` when it was done earlier. A ``label``
        photo (a wristband or patient label frame) goes to the label series with Burned In
        Annotation YES and no colour-normalized version; ``burned_in`` marks a clinical photo
        that shows a label too. ``number``: its Instance Number, taken earlier with
        :meth:`reserve_instance_numbers` (default: the session's next). The rows read and
        written do not grow with the session: its photos are never loaded.
        """
        upload_uuid = uuid_field(upload_uuid, "upload id")
        digest = hashlib.sha256(data).hexdigest()
        session = self.get_session(session_id, photos=False)
        known = self._known_photo(upload_uuid, digest, session.id)
        if known is not None:
            return known, False
        if work is None:
            work = self.process(data, color=not label)
        if label:
            work = replace(work, color=None)
        photo, color = work.prepared, work.color
        if number is None:
            [number] = self.reserve_instance_numbers(session.id, 1)
        built = self._instances(photo, color, session, upload_uuid, number, label=label,
                                burned_in=burned_in or label)
        try:
            with self.db.session() as db:
                stored = [self.archive.store(db, key, dicom, {"SeriesNumber": series_number,
                                                              "InstanceNumber": number,
                                                              "Modality": "XC"})
                          for key, dicom, series_number in built]
                instance = stored[0]
                row = Photo(upload_uuid=upload_uuid, session_id=session.id, sha256=digest,
                            size=len(data), media_type=photo.info.media_type,
                            passthrough=photo.passthrough, width=photo.width,
                            height=photo.height,
                            acquired_at=as_utc(photo.info.acquired)
                            if photo.info.acquired else None,
                            instance_number=number, sop_uid=instance.sop_uid,
                            color=color.report if color else None,
                            pixel_spacing_mm=color.photo_pixel_spacing_mm if color else None,
                            quality=color.quality if color else None,
                            normalized_sop_uid=stored[1].sop_uid if len(stored) > 1 else None)
                db.add(row)
                for item in stored:  # queued with the photo, in the same transaction
                    self.outbox.enqueue_photo(db, session, item)
            row.instance = instance
        except (IntegrityError, ArchiveConflictError):
            # The same upload raced us and won. Our files may have replaced the winner's (they
            # differ only in Instance Number): rebuild the winner's bytes, which are a pure
            # function of the photo and its number, and put them back.
            known = self._known_photo(upload_uuid, digest, session.id)
            if known is None:
                raise
            self._restore(self._instances(photo, color, session, upload_uuid,
                                          known.instance_number, label=label,
                                          burned_in=burned_in or label))
            return known, False
        return row, True

    def accept_video(self, session_id: str, upload_uuid: str, data: bytes, *,
                     number: int | None = None) -> tuple[Photo | StagedClip, bool]:
        """Take one video clip for the session's video series; return (upload row, created).
        ``number``: as for :meth:`accept_photo`.

        A clip DICOM takes as recorded is stored now, a Video Photographic Image, with the
        guarantees of :meth:`accept_photo`: durably archived, indexed and queued for delivery
        in one transaction. One whose codec DICOM does not take (VP8/VP9 WebM…) is staged
        (:meth:`stage_clip`): a :class:`StagedClip` is returned and the worker re-encodes and
        stores it later (:meth:`reencode_job`). Either way: idempotent by UUID (same bytes:
        the first result, the stored photo once the staged clip is stored; other bytes:
        :class:`Conflict`); a clip we cannot take raises (see :func:`checked_clip`) and stores
        nothing, and so does a session without a body site (:class:`BodySiteRequired`).
        Memory: the upload's bytes and its DICOM object (the archive takes bytes); probing
        and remuxing read the clip from a temporary file one packet at a time.
        """
        upload_uuid = uuid_field(upload_uuid, "upload id")
        digest = hashlib.sha256(data).hexdigest()
        session = self.get_session(session_id, photos=False)
        known = self._known_upload(upload_uuid, digest, session.id)
        if known is not None:
            return known, False
        if session.body_site is None:
            raise BodySiteRequired(CLIP_NEEDS_SITE)
        with self._pixel_slots, checked_clip(data, self.settings) as work:
            if number is None:
                [number] = self.reserve_instance_numbers(session.id, 1)
            clip = work.clip
            if work.needs_reencode:
                return self.stage_clip(session, upload_uuid, data, digest, clip, number)
            return self._store_video(session, work, Photo(
                upload_uuid=upload_uuid, session_id=session.id, sha256=digest, size=len(data),
                media_type=clip.media_type, passthrough=clip.as_recorded, width=clip.width,
                height=clip.height, acquired_at=as_utc(clip.recorded) if clip.recorded else None,
                instance_number=number, sop_uid=uid_from_uuid(upload_uuid,
                                                              self.settings.uid_prefix)))

    def _store_video(self, session: CaptureSession, work: VideoWork, row: Photo, *,
                     staged: bool = False) -> tuple[Photo, bool]:
        """Wrap ``work``'s MP4 as the instance ``row`` names, archive and index it, add
        ``row`` and queue its deliveries in one transaction (deleting its staged clip's row in
        it too when ``staged``); return (photo, created). A racer that stored the same upload
        first wins: its row is returned and its archived file put back. A staged clip that a
        patient move took to another session meanwhile raises :class:`ClipMoved`, one stored
        by another worker or discarded (its study purged) :class:`ClipGone`: nothing stored."""
        key, dicom = self._video_instance(work, session, row.upload_uuid, row.instance_number)
        try:
            with self.db.session() as db:
                if staged:
                    now_in = db.scalar(select(StagedClip.session_id)
                                       .where(StagedClip.upload_uuid == row.upload_uuid))
                    if now_in is None:
                        raise ClipGone("the staged clip was stored by another worker or "
                                       "discarded meanwhile: nothing to store")
                    if now_in != session.id:
                        raise ClipMoved("the clip's study moved to another patient while it "
                                        "was re-encoded: it is stored there on the next try")
                instance = self.archive.store(db, key, dicom, {
                    "SeriesNumber": VIDEO_SERIES_NUMBER, "InstanceNumber": row.instance_number,
                    "Modality": "XC"})
                db.add(row)
                self.outbox.enqueue_photo(db, session, instance)
                if staged:
                    db.execute(delete(StagedClip)
                               .where(StagedClip.upload_uuid == row.upload_uuid))
            row.instance = instance
        except (IntegrityError, ArchiveConflictError):
            known = self._known_photo(row.upload_uuid, row.sha256, session.id)
            if known is None:
                raise
            self._restore([(*self._video_instance(work, session, row.upload_uuid,
                                                  known.instance_number), 0)])
            return known, False
        return row, True

    # --- clips staged for re-encoding ------------------------------------------------------

    def staged_path(self, upload_uuid: str, digest: str) -> Path:
        """Where the bytes of a clip staged for re-encoding wait, named by upload and content
        (so a racing upload of other bytes under the same UUID never overwrites them)."""
        return self.settings.data_dir / STAGED_CLIPS_DIR / f"{upload_uuid}.{digest}"

    def stage_clip(self, session: CaptureSession, upload_uuid: str, data: bytes, digest: str,
                   clip: ClipInfo, number: int) -> tuple[StagedClip | Photo, bool]:
        """Keep a checked clip that needs re-encoding for the worker; return (row, created).

        Guarantees: when this returns, the bytes are durably in :meth:`staged_path` (fsync'd,
        atomic rename) and the :class:`StagedClip` row and its job (a ``video`` row of
        :data:`REENCODE_QUEUE`) are committed in one transaction. A racer that staged or
        stored the same upload first wins (its row, ``created=False``); one with other bytes
        is :class:`Conflict`, and this call's file is removed."""
        path = self.staged_path(upload_uuid, digest)
        write_durably(path, data)
        row = StagedClip(upload_uuid=upload_uuid, session_id=session.id, sha256=digest,
                         size=len(data), media_type=clip.media_type, width=clip.width,
                         height=clip.height,
                         acquired_at=as_utc(clip.recorded) if clip.recorded else None,
                         sop_uid=uid_from_uuid(upload_uuid, self.settings.uid_prefix),
                         instance_number=number)
        try:
            with self.db.session() as db:
                db.add(row)
                self.outbox.enqueue_reencode(db, session.study_uid, row.sop_uid)
        except IntegrityError:
            try:
                known = self._known_upload(upload_uuid, digest, session.id)
            except Conflict:
                path.unlink(missing_ok=True)
                raise
            if known is None:
                raise
            return known, False
        return row, True

    def sweep_staged_clips(self) -> int:
        """Remove the staged files no staged clip names any more (a worker died between
        storing the clip and deleting its file); how many. Only files older than
        :data:`~app.durable.STALE_AFTER_S` go, so a clip being staged right now (its file
        written, its row not yet committed) is never taken; temporary files are left to
        :func:`~app.durable.sweep_temp_files`. Run when a worker starts."""
        folder = self.settings.data_dir / STAGED_CLIPS_DIR
        if not folder.is_dir():
            return 0
        with self.db.session() as db:
            kept = {f"{upload}.{digest}" for upload, digest in db.execute(
                select(StagedClip.upload_uuid, StagedClip.sha256))}
        now, removed = time.time(), 0
        for path in folder.iterdir():
            if path.name.startswith(TEMP_PREFIX) or path.name in kept:
                continue
            try:
                if now - path.stat().st_mtime > STALE_AFTER_S:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        if removed:
            log.info("removed %d staged clip file(s) already stored", removed)
        return removed

    def discard_staged_clips(self, db: Session, session_id: str) -> list[str]:
        """In ``db``'s transaction: the clips of ``session_id`` still staged (waiting for
        their re-encode, or failed) are discarded, their files deleted and their jobs
        cancelled, so nothing of them is stored or kept (a retention purge). The SOP
        Instance UIDs they would have had. A worker re-encoding one right now stores nothing
        (:class:`ClipGone`)."""
        staged = db.scalars(select(StagedClip).where(StagedClip.session_id == session_id)
                            .order_by(StagedClip.sop_uid)).all()
        uids = [clip.sop_uid for clip in staged]
        if not uids:
            return uids
        for clip in staged:
            self.staged_path(clip.upload_uuid, clip.sha256).unlink(missing_ok=True)
        fsync_dir(self.settings.data_dir / STAGED_CLIPS_DIR)
        db.execute(delete(StagedClip).where(StagedClip.sop_uid.in_(uids)))
        db.execute(update(Delivery).where(
            Delivery.destination == REENCODE_QUEUE, Delivery.sop_uid.in_(uids),
            Delivery.status.in_((DeliveryStatus.PENDING, DeliveryStatus.DEAD)))
            .values(status=DeliveryStatus.CANCELLED, last_error="the study was purged",
                    updated_at=utcnow()))
        return uids

    def reencode_lease_seconds(self) -> float:
        """How long a worker may hold a re-encode job: enough for the longest clip allowed
        (``EBIW_MAX_VIDEO_SECONDS``) at :data:`REENCODE_SECONDS_PER_CLIP_SECOND`, plus a
        minute to store it. A crashed worker's job waits this long before it is retried."""
        return REENCODE_SECONDS_PER_CLIP_SECOND * self.settings.max_video_seconds + 60.0

    def reencode_job(self, claim: Claim) -> Results:
        """The worker's job for :data:`REENCODE_QUEUE` (``DeliveryWorker(jobs=...)``): each
        claimed row's staged clip re-encoded and stored (:meth:`reencode_staged`). A clip that
        cannot be re-encoded is a :class:`PermanentError` (the row becomes dead and the staged
        clip shows the failure); anything unexpected (logged by type only) a transient one,
        retried later."""
        results: Results = {}
        for row in claim.rows:
            try:
                results[row.id] = self.reencode_staged(row.sop_uid)
            except Exception as exc:
                log.error("re-encoding a clip: unexpected %s", type(exc).__name__)
                results[row.id] = TransientError(f"unexpected {type(exc).__name__}")
        return results

    def reencode_staged(self, sop_uid: str) -> GatewayError | None:
        """Re-encode the clip staged to become ``sop_uid`` to H.264 and store it as an H.264
        upload is stored (:meth:`_store_video`: same builder, video series, index and
        deliveries, the staged row deleted in the same transaction), then delete the staged
        file; None when done (also when an earlier attempt had stored it).

        Guarantees: the instance is stored whole or not at all (a crash mid-way leaves the
        staged clip and its job, to be claimed again when the lease ends; the half-written
        re-encode is a temporary file the start-up sweep removes). A clip that cannot be
        re-encoded, or whose staged bytes are missing or damaged, or whose session has no body
        site (a clip staged before uploads checked it), answers a :class:`PermanentError` and
        keeps its staged file, with ``failure`` set on its row. A clip whose study moved to
        another patient during the re-encode answers a :class:`TransientError`: retried, it
        is stored in the right patient's study (``corrections.move_to_patient`` takes the
        staged clip along)."""
        with self.db.session() as db:
            staged = db.scalars(select(StagedClip).where(StagedClip.sop_uid == sop_uid)).first()
            stored = db.scalar(select(Photo.upload_uuid).where(Photo.sop_uid == sop_uid))
        if staged is None:
            return None if stored else PermanentError("the staged clip is gone")
        source = self.staged_path(staged.upload_uuid, staged.sha256)
        try:
            if not _has_digest(source, staged.sha256):
                raise UnreadableVideoError("the staged clip is missing or damaged")
            with self._pixel_slots:
                self._reencode_and_store(staged, source)
        except ClipMoved as exc:
            return TransientError(str(exc))
        except ClipGone:
            return None
        except (UnreadableVideoError, BodySiteRequired) as exc:
            with self.db.session() as db:
                if db.scalar(select(Photo.upload_uuid).where(Photo.sop_uid == sop_uid)):
                    return None  # a worker that took over an expired lease stored it first
                db.execute(update(StagedClip).where(StagedClip.sop_uid == sop_uid)
                           .values(failure=str(exc)[:200]))
            return PermanentError(str(exc))
        source.unlink(missing_ok=True)
        fsync_dir(source.parent)
        return None

    def _reencode_and_store(self, staged: StagedClip, source: Path) -> None:
        """Re-encode ``source`` into a temporary file beside it, check it is H.264 DICOM takes,
        and store it as ``staged``'s photo; the temporary file is removed whatever happens
        (but a kill -9, whose leftover the start-up sweep removes). A session without a body
        site is :class:`BodySiteRequired` before any work."""
        session = self.get_session(staged.session_id, photos=False)
        if session.body_site is None:
            raise BodySiteRequired(CLIP_NEEDS_SITE)
        fd, name = temp_file(source.parent)
        os.close(fd)
        target = Path(name)
        try:
            reencode_h264(source, target)
            clip = probe(target)
            if clip.transfer_syntax is None:
                raise UnreadableVideoError("the re-encoded clip is not H.264 that DICOM takes")
            clip = replace(clip, recorded=staged.acquired_at)
            self._store_video(session, VideoWork(clip, target), Photo(
                upload_uuid=staged.upload_uuid, session_id=staged.session_id,
                sha256=staged.sha256, size=staged.size, media_type=staged.media_type,
                passthrough=False, width=clip.width, height=clip.height,
                acquired_at=staged.acquired_at, instance_number=staged.instance_number,
                sop_uid=staged.sop_uid), staged=True)
        finally:
            target.unlink(missing_ok=True)

    def _video_instance(self, work: VideoWork, session: CaptureSession, upload_uuid: str,
                        number: int) -> tuple[InstanceKey, bytes]:
        """The clip's instance in the session's video series: its key and Part 10 bytes."""
        study, series = self._study(session), self._series(session, video=True)
        sop_uid = uid_from_uuid(upload_uuid, self.settings.uid_prefix)
        out = io.BytesIO()
        write_video_photo(work.clip, work.payload, out, self._patient(session), study, series,
                          InstanceInfo(sop_uid=sop_uid, number=number))
        return (InstanceKey(study.uid, series.uid, sop_uid, VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE),
                out.getvalue())

    def _color(self, data: bytes) -> ColorOutcome | None:
        """The colour step's outcome, or None when normalization is switched off."""
        return color_step(data, self.settings) if self.settings.color_normalization else None

    def _instances(self, photo: PreparedPhoto, color: ColorResult | None,
                   session: CaptureSession, upload_uuid: str, number: int, *,
                   label: bool = False,
                   burned_in: bool = False) -> list[tuple[InstanceKey, bytes, int]]:
        """The photo's instances (key, Part 10 bytes, series number): the original (in the
        label series for a label photo), then the colour-normalized DERIVED one when the
        correction is reliable."""
        patient, study = self._patient(session), self._study(session)
        sop_uid = uid_from_uuid(upload_uuid, self.settings.uid_prefix)
        series = self._series(session, labels=label)
        original = build_vl_photo(photo, patient, study, series, InstanceInfo(
            sop_uid=sop_uid, number=number,
            pixel_spacing_mm=color.photo_pixel_spacing_mm if color else None,
            burned_in_annotation=burned_in,
            recognizable_visual_features=False if label else None))
        built = [(InstanceKey(study.uid, series.uid, sop_uid, VL_PHOTOGRAPHIC_IMAGE_STORAGE),
                  original, series.number)]
        if color is None or color.jpeg is None:
            return built
        derived_series = self._series(session, normalized=True)
        derived_uid = uid_from_uuid(derived_uuid(upload_uuid, "normalized"),
                                    self.settings.uid_prefix)
        normalized = PreparedPhoto(jpeg=color.jpeg, width=color.width, height=color.height,
                                   info=replace(photo.info, icc_profile=None),  # now sRGB
                                   passthrough=False)
        derived = build_vl_photo(normalized, patient, study, derived_series, InstanceInfo(
            sop_uid=derived_uid, number=number, pixel_spacing_mm=color.pixel_spacing_mm,
            burned_in_annotation=burned_in,
            derivation=Derivation(sop_uid, color.derivation or "")))
        built.append((InstanceKey(study.uid, derived_series.uid, derived_uid,
                                  VL_PHOTOGRAPHIC_IMAGE_STORAGE), derived, derived_series.number))
        return built

    def _restore(self, built: list[tuple[InstanceKey, bytes, int]]) -> None:
        """Put back indexed instances whose file a losing racer overwrote."""
        with self.db.session() as db:
            for key, dicom, _ in built:
                row = db.get(Instance, key.sop_uid)
                if row is not None and hashlib.sha256(dicom).hexdigest() == row.sha256:
                    self.archive.restore(row, dicom)

    def _known_upload(self, upload_uuid: str, digest: str,
                      session_id: str) -> Photo | StagedClip | None:
        """What was already taken under ``upload_uuid`` with these bytes in this session: the
        stored photo (with its instance) or the clip staged for re-encoding; None when the
        UUID is new. :class:`Conflict` when it holds other bytes or another session's."""
        with self.db.session() as db:
            row: Photo | StagedClip | None = db.get(
                Photo, upload_uuid, options=[selectinload(Photo.instance)]) \
                or db.get(StagedClip, upload_uuid)
            if row is None:
                return None
            if row.session_id != session_id or row.sha256 != digest:
                raise Conflict("this upload id was already used for a different photo")
            return row

    def _known_photo(self, upload_uuid: str, digest: str, session_id: str) -> Photo | None:
        """As :meth:`_known_upload`, for a photo: a staged clip under the UUID is a
        :class:`Conflict` (the same bytes cannot be both)."""
        known = self._known_upload(upload_uuid, digest, session_id)
        if isinstance(known, StagedClip):
            raise Conflict("this upload id was already used for a different photo")
        return known

    def reserve_instance_numbers(self, session_id: str, count: int) -> list[int]:
        """Atomically take the session's next ``count`` instance numbers, in order (a number
        taken but not used leaves a gap, which is harmless)."""
        with self.db.session() as db:
            db.execute(update(CaptureSession).where(CaptureSession.id == session_id)
                       .values(photo_count=CaptureSession.photo_count + count))
            last = db.scalar(select(CaptureSession.photo_count)
                             .where(CaptureSession.id == session_id)) or count
        return list(range(last - count + 1, last + 1))

    # --- DICOM context of a session --------------------------------------------------------

    def _patient(self, s: CaptureSession) -> PatientInfo:
        return PatientInfo(id=s.patient_id, issuer=s.issuer, name=s.patient_name,
                           birth_date=s.birth_date, sex=s.sex)

    def _study(self, s: CaptureSession) -> StudyInfo:
        tz = timezone(timedelta(minutes=s.utc_offset_minutes))
        ident = s.identification
        return StudyInfo(uid=s.study_uid, started=as_utc(s.created_at).astimezone(tz),
                         accession_number=s.accession_number, admission_id=s.encounter,
                         requested_procedure_id=ident.requested_procedure_id if ident else None,
                         scheduled_step_id=ident.scheduled_step_id if ident else None,
                         **({"description": ident.requested_procedure_description}
                            if ident and ident.requested_procedure_description else {}))

    def _series(self, s: CaptureSession, *, normalized: bool = False,
                labels: bool = False, video: bool = False) -> SeriesInfo:
        """The series of the session's originals, of their colour-normalized versions, of
        its video clips, or of its label photos (wristband / patient label frames: no body
        site)."""
        if labels:
            return SeriesInfo(
                uid=uid_from_uuid(derived_uuid(s.id, "series:labels"), self.settings.uid_prefix),
                number=LABEL_SERIES_NUMBER, department=s.department,
                institution=self.settings.institution_name or None,
                description="Patient identification labels")
        role, number = (("series:video", VIDEO_SERIES_NUMBER) if video
                        else ("series:normalized", NORMALIZED_SERIES_NUMBER) if normalized
                        else ("series:original", ORIGINAL_SERIES_NUMBER))
        return SeriesInfo(
            uid=uid_from_uuid(derived_uuid(s.id, role), self.settings.uid_prefix),
            number=number,
            body_site=body_site(s.body_site) if s.body_site else None,
            laterality=s.laterality, department=s.department,
            institution=self.settings.institution_name or None,
            description=", ".join(filter(None, (
                ("Patient-taken " if s.source == SessionSource.PATIENT else "Clinical ")
                + ("video clips" if video else "photographs"),
                "colour normalized" if normalized else None, s.description))))
