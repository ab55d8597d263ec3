"""Database models. Times are stored as timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import ClassVar, overload

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    and_,
    select,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...


@overload
def as_utc(value: None) -> None: ...


def as_utc(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (None stays None): SQLite and PostgreSQL's
    ``timestamp`` hand back naive values, which were stored as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {datetime: DateTime(timezone=True)}


class WorkerBookkeeping:
    """The columns every row a background worker holds under a lease shares (the outbox's
    ``delivery``, the audit forwarder's ``audit_forward``): ``last_error`` is the last failure
    (short, never PHI) and ``updated_at`` when a worker last changed the row. The lease pair
    itself is named per table (``claim_token``/``claimed_until``, ``lease_token``/
    ``lease_until``) and stays on each model."""

    last_error: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class UploadedFile:
    """The columns of every row that stands for one uploaded photo (``photo``, and
    ``batch_item`` while a batch holds it): the client's upload UUID as the key, the SHA-256,
    size and media type of the bytes as received, the pixel size and the capture time."""

    upload_uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int]
    media_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int]
    height: Mapped[int]
    acquired_at: Mapped[datetime | None]


class Patient(Base):
    """The local patient index (embedded default of the patient directory)."""

    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("issuer", "mrn"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    mrn: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(64))
    family: Mapped[str] = mapped_column(String(128), default="")
    given: Mapped[str] = mapped_column(String(128), default="")
    birth_date: Mapped[date | None] = mapped_column(Date)
    sex: Mapped[str | None] = mapped_column(String(1))
    encounters: Mapped[list[Encounter]] = relationship(back_populates="patient",
                                                       cascade="all, delete-orphan")


class Encounter(Base):
    """A visit of a patient (the DICOM Admission ID); ``status`` uses FHIR's codes."""

    __tablename__ = "encounter"
    __table_args__ = (UniqueConstraint("patient_id", "identifier"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"))
    identifier: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="in-progress")
    department: Mapped[str | None] = mapped_column(String(64))
    started: Mapped[datetime | None]
    patient: Mapped[Patient] = relationship(back_populates="encounters")


class SessionStatus(StrEnum):
    """A capture session is ``open`` (photos may be added) until it is ``complete``."""

    OPEN = "open"
    COMPLETE = "complete"


class SessionSource(StrEnum):
    """Who took a session's photos: a care ``provider``, or the ``patient``."""

    PROVIDER = "provider"
    PATIENT = "patient"


class CaptureSession(Base):
    """One capture session = one DICOM study (its UID derived from the session id)."""

    __tablename__ = "capture_session"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(256))
    birth_date: Mapped[date | None] = mapped_column(Date)
    sex: Mapped[str | None] = mapped_column(String(1))
    encounter: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    body_site: Mapped[str | None] = mapped_column(String(32))
    laterality: Mapped[str | None] = mapped_column(String(1))
    department: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16), default=SessionSource.PROVIDER)
    consent: Mapped[str | None] = mapped_column(String(16))  # given, declined, not-required
    sensitive: Mapped[bool] = mapped_column(Boolean, default=False)
    # False: no patient directory knew the patient when the session opened
    # (EBIW_UNKNOWN_PATIENTS=hold); its deliveries wait until the patient is confirmed
    patient_verified: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    description: Mapped[str | None] = mapped_column(String(64))  # the view, e.g. "close-up"
    status: Mapped[str] = mapped_column(String(16), default=SessionStatus.OPEN)
    photo_count: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    utc_offset_minutes: Mapped[int] = mapped_column(Integer, default=0)
    completed_at: Mapped[datetime | None]
    # Retention (app/workflow/retention.py): set when a purge deleted the study's files
    purged_at: Mapped[datetime | None]
    photos: Mapped[list[Photo]] = relationship(back_populates="session",
                                               order_by="Photo.instance_number")
    staged_clips: Mapped[list[StagedClip]] = relationship(
        order_by="StagedClip.instance_number")  # clips waiting for their re-encode
    identification: Mapped[SessionIdentification | None] = relationship(lazy="joined")


class SessionIdentification(Base):
    """How the patient of a capture session was identified, kept with its study.

    ``method``: ``wristband`` (photo of the band), ``scanned`` (the device's scanner),
    ``typed``, ``worklist``, ``emr-launch`` or ``manual``; ``evidence``: what matched (reader,
    symbology, rule, directory, fields), never an image. From a worklist item also its
    Requested Procedure and Scheduled Procedure Step (Accession Number and Study Instance UID
    are the session's own).
    """

    __tablename__ = "session_identification"

    session_id: Mapped[str] = mapped_column(ForeignKey("capture_session.id"), primary_key=True)
    method: Mapped[str] = mapped_column(String(16))
    evidence: Mapped[dict] = mapped_column(JSON, default=dict)
    requested_procedure_id: Mapped[str | None] = mapped_column(String(16))
    requested_procedure_description: Mapped[str | None] = mapped_column(String(64))
    scheduled_step_id: Mapped[str | None] = mapped_column(String(16))



class Photo(UploadedFile, Base):
    """One upload, identified by the client's UUID; the instance it became."""

    __tablename__ = "photo"

    session_id: Mapped[str] = mapped_column(ForeignKey("capture_session.id"), index=True)
    passthrough: Mapped[bool] = mapped_column(Boolean)
    instance_number: Mapped[int]
    sop_uid: Mapped[str] = mapped_column(ForeignKey("instance.sop_uid"), unique=True)
    color: Mapped[dict | None] = mapped_column(JSON)  # the colour step's report; None: not run
    pixel_spacing_mm: Mapped[float | None]  # at the chart plane, when a chart was found
    # app.pipeline.quality's record (ok, advice, checks, chart); None: stored before it existed
    # or without the colour step
    quality: Mapped[dict | None] = mapped_column(JSON)
    normalized_sop_uid: Mapped[str | None] = mapped_column(ForeignKey("instance.sop_uid"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    session: Mapped[CaptureSession] = relationship(back_populates="photos")
    instance: Mapped[Instance] = relationship(foreign_keys=[sop_uid])


class StagedClip(UploadedFile, Base):
    """A video clip accepted but not stored yet: its codec is one DICOM does not take as
    recorded (VP8/VP9 WebM…), so the worker re-encodes it to H.264 (a ``video`` row of the
    outbox, ``sop_uid`` the instance it will become) and then stores it as a :class:`Photo`,
    deleting this row in the same transaction. The bytes as received wait, fsync'd, in the
    data dir (``Intake.staged_path``). ``failure``: why re-encoding failed for good (no PHI);
    None while it is being processed."""

    __tablename__ = "staged_clip"

    session_id: Mapped[str] = mapped_column(ForeignKey("capture_session.id"), index=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    instance_number: Mapped[int]
    failure: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Instance(Base):
    """The archive's index: one row per stored SOP instance (one file)."""

    __tablename__ = "instance"

    sop_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int]
    attributes: Mapped[dict] = mapped_column(JSON, default=dict)
    stored_at: Mapped[datetime] = mapped_column(default=utcnow)
    # IHE IOCM: set when a rejection note (a KOS, ``rejected_by_kos``) rejected the instance
    # with ``rejection_code`` (its DCM Document Title code, e.g. 113001); the file is kept
    # for audit but hidden from QIDO-RS, WADO-RS, the viewer and the EMR (see ``shown``).
    rejected_at: Mapped[datetime | None]
    rejection_code: Mapped[str | None] = mapped_column(String(16))
    rejected_by_kos: Mapped[str | None] = mapped_column(String(64))
    # Retention: set when a purge deleted the file (the row stays, rejected, as the record)
    purged_at: Mapped[datetime | None]

    @classmethod
    def shown(cls) -> ColumnElement[bool]:
        """SQL: the instances every reader may see (not rejected)."""
        return cls.rejected_at.is_(None)


class LegalHold(Base):
    """A legal hold: a retention purge never touches the study (``study_uid``) or any study
    of the patient (``issuer``, ``patient_id``) while the row exists; exactly one of the two
    is set. Releasing the hold deletes the row (both are audited)."""

    __tablename__ = "legal_hold"
    __table_args__ = (UniqueConstraint("study_uid"), UniqueConstraint("issuer", "patient_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str | None] = mapped_column(String(64))
    issuer: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(256))
    set_by: Mapped[str] = mapped_column(String(128))
    set_at: Mapped[datetime] = mapped_column(default=utcnow)


class Quantity(StrEnum):
    """A measured wound quantity, with its unit: lengths in mm, areas in mm²."""

    LENGTH = "length"
    WIDTH = "width"
    AREA = "area"
    PERIMETER = "perimeter"


class WoundMeasurement(Base):
    """The index of the values a measurement SR holds: one row per measured value.

    The SR in the archive is the record; these rows are written in the same transaction and
    serve the viewer, the EMR's Observations and the healing trajectory without re-reading
    files. A region (line or polygon, numbered from 1 in the SR's order) with several values
    has one row per value, each with the region's pixel points on the photo, and the codes of
    the warnings that value carries (``app.pipeline.geometry.WARNINGS``; the SR holds them as
    qualitative evaluations of the region). Rows indexed before warnings were kept have none.
    """

    __tablename__ = "wound_measurement"
    __table_args__ = (UniqueConstraint("report_sop_uid", "region", "quantity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    report_sop_uid: Mapped[str] = mapped_column(ForeignKey("instance.sop_uid"), index=True)
    photo_sop_uid: Mapped[str] = mapped_column(String(64), index=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("capture_session.id"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    tracking_uid: Mapped[str] = mapped_column(String(64), index=True)
    wound_label: Mapped[str] = mapped_column(String(64))
    region: Mapped[int]
    quantity: Mapped[str] = mapped_column(String(16))  # a Quantity
    value: Mapped[float]
    uncertainty: Mapped[float]
    unit: Mapped[str] = mapped_column(String(8))  # UCUM: "mm" or "mm2"
    points: Mapped[list] = mapped_column(JSON)  # [[x, y], ...] in the photo's pixels
    taken_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # the photo's time
    measured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    observer: Mapped[str] = mapped_column(String(64))
    warnings: Mapped[list] = mapped_column(JSON, default=list, server_default=text("'[]'"))

    @classmethod
    def shown(cls) -> ColumnElement[bool]:
        """SQL: the measurements every reader may see, those whose report and photo were not
        rejected (IHE IOCM)."""
        rejected = select(Instance.sop_uid).where(Instance.rejected_at.is_not(None))
        return and_(cls.report_sop_uid.not_in(rejected), cls.photo_sop_uid.not_in(rejected))


# --- Batch import: photos held in staging until their patient group is confirmed -----------
# (app/workflow/batch/; README "Batch import")


class BatchStatus(StrEnum):
    """An import batch is ``open`` until it is ``discarded`` (its held photos dropped)."""

    OPEN = "open"
    DISCARDED = "discarded"


class Batch(Base):
    """A batch of photos uploaded together (a clinic's day, a migrated folder).

    Photos are held under ``<data dir>/batches/<id>/`` until their group is confirmed; nothing
    of a batch reaches the archive, the outbox or the EMR before. ``patient_id``/``issuer``
    set: every photo is for that patient (no barcode sorting).
    """

    __tablename__ = "batch"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    department: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    issuer: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.OPEN)


class GroupSource(StrEnum):
    """Where a batch group's identifier came from: a ``label`` photo in the batch, entered
    by hand (``manual``) in the review, or ``given`` for the whole batch
    (``ebiw import --patient-id``)."""

    LABEL = "label"
    MANUAL = "manual"
    GIVEN = "given"


class BatchGroup(Base):
    """The photos of one patient in a batch: from a label's identifier or entered by hand.

    ``mrn``/``issuer`` are what the label (or the user) gave (``issuer`` "" when none);
    ``lookup`` caches the patient directory's answer (``{"status", "patients", ...}``), None
    until looked up. ``session_id`` is the capture session (one study) made at confirmation.
    """

    __tablename__ = "batch_group"
    __table_args__ = (UniqueConstraint("batch_id", "mrn", "issuer"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batch.id"), index=True)
    mrn: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(64), default="")
    encounter: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(8))  # GroupSource
    lookup: Mapped[dict | None] = mapped_column(JSON)
    session_id: Mapped[str | None] = mapped_column(ForeignKey("capture_session.id"))
    confirmed_by: Mapped[str | None] = mapped_column(String(128))
    confirmed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ItemRole(StrEnum):
    """What a batch photo is: a wristband/``label`` frame, or a ``clinical`` photo."""

    LABEL = "label"
    CLINICAL = "clinical"


class ItemStatus(StrEnum):
    """A batch item is ``held`` in staging until it is ``stored`` in the archive or
    ``skipped`` (dropped, or a label photo not kept)."""

    HELD = "held"
    STORED = "stored"
    SKIPPED = "skipped"


class BatchItem(UploadedFile, Base):
    """One uploaded file of a batch, by its upload UUID (also the Photo's, once stored).

    ``role``: ``label`` (a wristband/label frame) or ``clinical``; ``identity`` the wristband
    identifiers its barcodes gave (``[{"mrn", "issuer", "encounter", ...}]``, empty: none);
    ``pinned``: ``group_id`` was set by hand (None then means "unsorted") or by storing, else
    the group follows from the capture order. ``status``: ``held``, ``stored`` or ``skipped``
    (dropped, or a label photo not kept). ``work`` describes what was staged beside the bytes.
    """

    __tablename__ = "batch_item"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batch.id"), index=True)
    file_order: Mapped[int] = mapped_column(Integer, default=0)
    role: Mapped[str] = mapped_column(String(8), default=ItemRole.CLINICAL)
    identity: Mapped[list] = mapped_column(JSON, default=list)
    label_area: Mapped[float | None]
    work: Mapped[dict] = mapped_column(JSON, default=dict)
    group_id: Mapped[str | None] = mapped_column(ForeignKey("batch_group.id"))
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)
    dropped: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(8), default=ItemStatus.HELD)
    sop_uid: Mapped[str | None] = mapped_column(String(64))
    normalized_sop_uid: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A bearer token for a device or integration; only its SHA-256 is kept."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]  # None: never expires
    last_used_at: Mapped[datetime | None]  # to the minute (one write a minute at most)


# --- EMR notification: the local FHIR store, HL7 v2 notices (app/gateways/emr) -------------


class FhirResource(Base):
    """The current version of one resource of the local FHIR store, served read-only at /fhir.

    ``identifier`` is the resource's search token (``system|value``, e.g. the Study UID's
    ``urn:dicom:uid|urn:oid:<uid>``, unique per type) and ``subject`` its ``Patient/<id>``
    reference, both indexed for searches; ``body`` is the resource JSON without ``meta``.
    """

    __tablename__ = "fhir_resource"
    __table_args__ = (UniqueConstraint("resource_type", "logical_id"),
                      UniqueConstraint("resource_type", "identifier"))

    id: Mapped[int] = mapped_column(primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(32))
    logical_id: Mapped[str] = mapped_column(String(64))
    identifier: Mapped[str | None] = mapped_column(String(160))
    subject: Mapped[str | None] = mapped_column(String(80), index=True)
    version_id: Mapped[int] = mapped_column(Integer, default=1)
    last_updated: Mapped[datetime] = mapped_column(default=utcnow)
    body: Mapped[dict] = mapped_column(JSON)


class Hl7Notice(Base):
    """The last state of a study (its instance count) an HL7 v2 receiver accepted (AA)."""

    __tablename__ = "hl7_notice"

    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    instance_count: Mapped[int] = mapped_column(Integer)
    control_id: Mapped[str] = mapped_column(String(20))
    accepted_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- Local user accounts and server-side web sessions (app/workflow/accounts.py) -----------


class User(Base):
    """A local account of the web app; only an Argon2id hash of the password is kept."""

    __tablename__ = "app_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None]


class WebSession(Base):
    """A logged-in browser. The cookie holds a random id; only its SHA-256 is stored here."""

    __tablename__ = "web_session"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"),
                                         index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    user: Mapped[User] = relationship()


# --- Audit trail of PHI access (app/workflow/audit.py) --------------------------------------


class AuditEvent(Base):
    """One access to PHI: who (``actor``, ``role``, ``client`` address), what (``action``,
    ``entities`` such as ``study:<uid>`` and ``detail``), when (``recorded_at``, UTC), where
    (``client``, ``node``) and ``outcome``.

    Append-only and hash-chained: ``seq`` is the position in the chain (1, 2, …, no gaps),
    ``hash`` the SHA-256 of the record's canonical content including ``prev_hash``, the hash of
    record ``seq - 1`` (see ``app.workflow.audit`` and ``app.pipeline.audit``).
    """

    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str | None] = mapped_column(String(16))
    client: Mapped[str | None] = mapped_column(String(64))
    node: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(64), index=True)
    entities: Mapped[list] = mapped_column(JSON, default=list)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    outcome: Mapped[str] = mapped_column(String(16))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """The one row (``id`` 1) naming the last record of the audit chain. Appends update it
    first, so its row lock serializes them across threads, processes and nodes."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    hash: Mapped[str] = mapped_column(String(64))


class AuditForward(WorkerBookkeeping, Base):
    """How far the audit trail has been forwarded to one syslog collector (``target``).

    ``seq`` is the last record the collector accepted; a forwarder holds the row while
    ``lease_token`` is its own and ``lease_until`` is in the future, so only one process sends.
    """

    __tablename__ = "audit_forward"

    target: Mapped[str] = mapped_column(String(200), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    lease_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None]


# --- Outbox: deliveries to PACS destinations and EMR notifiers (app.workflow.delivery) -------


class DeliveryKind(StrEnum):
    """What a delivery row sends: an instance to a ``pacs`` destination, or a study's notice
    to an ``emr`` notifier; or, for the ``@reencode`` queue, a ``video`` clip staged for
    re-encoding (the worker's own job, leased and retried like a delivery)."""

    PACS = "pacs"
    EMR = "emr"
    VIDEO = "video"  # a staged clip to re-encode and store (app.workflow.intake)


class DeliveryStatus(StrEnum):
    """A delivery row is ``pending`` (queued, or failed and waiting for its next attempt),
    ``sent``, ``dead`` (a permanent failure, kept until an admin retries it) or
    ``cancelled`` (its instance was rejected before it was sent: never sent, never retried)."""

    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"
    CANCELLED = "cancelled"


class Delivery(WorkerBookkeeping, Base):
    """One thing to deliver: an instance to a PACS (``kind="pacs"``), or a study's notice to
    an EMR notifier (``kind="emr"``, ``sop_uid=""``, one row per study, re-queued by
    ``version`` whenever a photo is added).

    ``status`` is ``pending`` (queued, or failed and waiting for ``next_attempt_at``),
    ``sent``, ``dead`` (a permanent failure, kept until an admin retries it) or ``cancelled``
    (a PACS row whose instance was rejected before it was sent; ``last_error`` says so). A
    worker owns a pending row while ``claim_token`` is set and ``claimed_until`` is in the
    future; after that the lease has expired and any worker may claim it again.
    ``last_error`` never holds PHI (no names, identifiers, UIDs or response bodies).
    """

    __tablename__ = "delivery"
    __table_args__ = (UniqueConstraint("destination", "study_uid", "sop_uid"),
                      Index("ix_delivery_due", "status", "next_attempt_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    destination: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))  # DeliveryKind
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_uid: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    version: Mapped[int] = mapped_column(Integer, default=1)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    claimed_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]


# --- Login lockout, rate-limit counters, OpenID Connect identities (issue 9) ---------------


class LoginThrottle(Base):
    """Failed logins of one username (known or not, so a lock tells nothing about existence).

    ``failures`` counts failures in a row, forgotten once ``last_failure_at`` is older than the
    lockout period; reaching the limit sets ``locked_until`` and starts the count again.
    """

    __tablename__ = "login_throttle"

    username: Mapped[str] = mapped_column(String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime | None]


class RateCounter(Base):
    """Requests of one client in one fixed window of one limit, shared by every worker.

    ``key`` is a SHA-256 of (limit, client, window start): no address or username is stored.
    """

    __tablename__ = "rate_counter"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class ExternalIdentity(Base):
    """The OpenID Connect subject (``issuer``, ``subject``) an account signs in as.

    Such an account has no password; its role (and optional department) are taken from the
    identity provider's claims at every sign-in.
    """

    __tablename__ = "external_identity"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"),
                                         unique=True)
    issuer: Mapped[str] = mapped_column(String(256))
    subject: Mapped[str] = mapped_column(String(256))
    department: Mapped[str | None] = mapped_column(String(64))
    last_login_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- Launch from the EMR: SMART on FHIR EHR launch (app/workflow/launch.py) -------------------


class LaunchContext(Base):
    """What the EMR handed over when it launched a web session (one row per such session).

    The session sees only this patient: ``patient_id`` and ``issuer`` are the DICOM Patient ID
    and Issuer of Patient ID resolved from the EMR's Patient resource (``fhir_patient``, its id
    at ``fhir_base``); the demographics and the encounter preselect the capture app's patient.
    ``study_uid`` is the study an ImagingStudy launch context named, if any. No token is kept.
    """

    __tablename__ = "launch_context"

    session_hash: Mapped[str] = mapped_column(
        ForeignKey("web_session.id_hash", ondelete="CASCADE"), primary_key=True)
    fhir_base: Mapped[str] = mapped_column(String(256))
    fhir_patient: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(64))
    family: Mapped[str] = mapped_column(String(128), default="")
    given: Mapped[str] = mapped_column(String(128), default="")
    birth_date: Mapped[date | None] = mapped_column(Date)
    sex: Mapped[str | None] = mapped_column(String(1))
    encounter: Mapped[str | None] = mapped_column(String(64))  # the DICOM Admission ID
    department: Mapped[str | None] = mapped_column(String(64))
    study_uid: Mapped[str | None] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(16), default="viewer")  # viewer or capture
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
