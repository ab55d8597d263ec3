"""Corrections as IHE IOCM describes them: reject instances, move a study to the right patient.

One path does every rejection (:func:`reject_rows`): a Key Object Selection rejection note
(`app.pipeline.dicom.kos`) with the reason's Document Title is stored in a new series of the
study, the rejected instances are marked (``instance.rejected_at``, ``rejection_code``,
``rejected_by_kos``: hidden from QIDO-RS, WADO-RS, the viewer and the EMR, kept on disk for
audit), their PACS deliveries not sent yet are cancelled (a PACS that has them already learns
of the rejection from the note), the note is queued to every PACS destination and the study's
EMR notices re-queued
(the ImagingStudy then lists the study without them, or is ``entered-in-error`` when nothing
is left), and the rejection is audited. :func:`reject`, :func:`withdraw_report` and
:func:`move_to_patient` call it, a retention purge (`app.workflow.retention`) with 113039; a
patient merge (`app.workflow.merge`) moves studies through :func:`move_to_patient`.

:func:`plan_reject` and :func:`plan_move` say what :func:`reject` and :func:`move_to_patient`
would do, checked as they check, changing nothing: what a person confirms before correcting.

Each correction is one database transaction: the files it writes (the note, the corrected
copies) are written durably before the commit, as the intake does, so a crash leaves either
nothing (unreferenced files at most) or everything indexed and queued.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.db.models import (
    CaptureSession,
    Delivery,
    Instance,
    Photo,
    SessionIdentification,
    SessionStatus,
    StagedClip,
    WoundMeasurement,
    as_utc,
    utcnow,
)
from app.db.session import affected_rows
from app.gateways.archive import InstanceKey
from app.gateways.patients import PatientRecord, build_directories
from app.pipeline.dicom.builder import PatientInfo
from app.pipeline.dicom.kos import (
    KOS_SOP_CLASS_UID,
    RejectionInfo,
    RejectionReason,
    build_rejection_note,
)
from app.pipeline.dicom.read import UnreadableDicomError, read_part10
from app.pipeline.dicom.relabel import corrected_copy
from app.pipeline.dicom.sr import SR_SOP_CLASS_UID
from app.pipeline.dicom.uids import IMPLEMENTATION_CLASS_UID, derived_uuid, uid_from_uuid
from app.workflow import audit
from app.workflow.delivery import REENCODE_QUEUE
from app.workflow.intake import REJECTION_SERIES_NUMBER
from app.workflow.measurements import presentation_rows, presentation_uid, tracking_uid
from app.workflow.services import Services

T = TypeVar("T")
SERIES_ROLES = ("series:original", "series:normalized", "series:labels", "series:measurements",
                "series:presentations", "series:video")
"""The roles whose series UIDs the intake derives from a session id; a corrected copy keeps
its series' role in the new session."""
CORRECTION_METHOD = "correction"  # SessionIdentification.method of a corrected copy's session


class CorrectionError(Exception):
    """The correction cannot be made (unknown UID, rejected already, no such patient, the same
    patient...); nothing was changed. The message names UIDs at most, never PHI."""


class UnknownInstance(CorrectionError):
    """No instance of ours matches the UIDs given."""


class DirectoryDown(CorrectionError):
    """The patient directory could not answer for the target patient: try again later."""


class NotAllowed(CorrectionError):
    """The actor may not correct this study: not an admin, and not its capturing clinician
    within the correction window."""


@dataclass(frozen=True)
class Rejection:
    """What one rejection note rejected."""

    study_uid: str
    rejected: tuple[str, ...]
    kos_sop_uid: str
    reason: RejectionReason
    cancelled_deliveries: int = 0
    """PACS deliveries of the rejected instances that were not sent yet, now cancelled."""


@dataclass(frozen=True)
class PatientMove:
    """A study moved to another patient: its copies (old SOP UID → new) in a new study, and
    the rejection of the originals."""

    old_study_uid: str
    new_study_uid: str
    new_session_id: str
    copies: dict[str, str]
    rejection: Rejection


@dataclass(frozen=True)
class PatientSummary:
    """A patient as whoever confirms a correction recognises them."""

    name: str
    """Patient's Name as a DICOM PN (``FAMILY^GIVEN``), empty when unknown."""
    patient_id: str
    issuer: str
    birth_date: date | None

    @property
    def readable_name(self) -> str:
        """The name as a person reads it, ``FAMILY, GIVEN``; empty when unknown."""
        return ", ".join(part for part in self.name.split("^")[:2] if part)


@dataclass(frozen=True)
class MovePlan:
    """What :func:`move_to_patient` would move now, from whom to whom."""

    study_uid: str
    captured_at: datetime
    photos: int
    instances: int
    """The DICOM instances copied: the photos, their normalized versions, measurements."""
    source: PatientSummary
    target: PatientSummary


@dataclass(frozen=True)
class RejectPlan:
    """What :func:`reject` would reject now: the instance named, of whom."""

    study_uid: str
    series_uid: str
    sop_uid: str
    photo_number: int | None
    """The photo's number in its study; None when the instance is no photo."""
    series_number: int | None
    instances: int
    """The DICOM instances the rejection note would reject (a photo with its normalized
    version, a measurement report with the presentation state that draws it)."""
    captured_at: datetime
    patient: PatientSummary


def reject(services: Services, sop_uid: str, reason: RejectionReason, *, actor: str,
           own_within: timedelta | None = None) -> Rejection:
    """Reject the stored instance ``sop_uid`` for ``reason``.

    A photo and its colour-normalized version are one photo: naming either rejects both
    (those not rejected yet); a measurement report is rejected with the presentation state
    that draws it. Guarantees: on return one rejection note is stored, indexed and
    queued, the instances are marked and the rejection audited, in one transaction. Raises
    :class:`CorrectionError`, changing nothing, for an unknown UID, an instance already
    rejected, or a rejection note itself. With ``own_within`` (a clinician, not an admin)
    ``actor`` must have captured the study no longer ago than that (:class:`NotAllowed`).
    """
    with services.db.session() as db:
        session, _, _, rows = _rejectable(db, sop_uid, actor, own_within)
        return reject_rows(services, db, session, rows, reason, actor=actor)


def plan_reject(services: Services, sop_uid: str, *, actor: str,
                own_within: timedelta | None = None) -> RejectPlan:
    """What :func:`reject` of ``sop_uid`` by ``actor`` would reject now. Raises what it would
    raise, before anything is done; changes nothing."""
    with services.db.session() as db:
        session, row, photo, rows = _rejectable(db, sop_uid, actor, own_within)
        return RejectPlan(
            study_uid=row.study_uid, series_uid=row.series_uid, sop_uid=row.sop_uid,
            photo_number=photo.instance_number if photo else None,
            series_number=(row.attributes or {}).get("SeriesNumber"),
            instances=len(_with_presentations(db, rows, services.settings.uid_prefix)),
            captured_at=as_utc(session.created_at), patient=patient_summary(session))


def _rejectable(db: Session, sop_uid: str, actor: str, own_within: timedelta | None
                ) -> tuple[CaptureSession, Instance, Photo | None, list[Instance]]:
    """(the session of ``sop_uid``'s study, its row, the photo it is or is a version of, the
    rows :func:`reject` rejects with it), checked as :func:`reject` documents."""
    row = db.get(Instance, sop_uid)
    if row is None:
        raise CorrectionError(f"no archived instance has SOP Instance UID {sop_uid}")
    if row.rejected_at is not None:
        raise CorrectionError(f"instance {sop_uid} was already rejected "
                              f"(rejection note {row.rejected_by_kos})")
    if row.sop_class_uid == KOS_SOP_CLASS_UID:
        raise CorrectionError("a rejection note cannot be rejected")
    session = _session(db, row.study_uid)
    _check_allowed(session, actor, own_within)
    pair = db.scalar(select(Photo).where(
        or_(Photo.sop_uid == sop_uid, Photo.normalized_sop_uid == sop_uid)))
    uids = {sop_uid} if pair is None else \
        {u for u in (pair.sop_uid, pair.normalized_sop_uid) if u}
    rows = db.scalars(select(Instance).where(Instance.sop_uid.in_(uids), Instance.shown())
                      .order_by(Instance.stored_at, Instance.sop_uid)).all()
    return session, row, pair, list(rows)


def withdraw_report(services: Services, study_uid: str, sop_uid: str, *, actor: str,
                    admin: bool) -> Rejection:
    """Withdraw the measurement report (SR) ``sop_uid`` of ``study_uid``: rejected, with the
    presentation state drawing it, for quality reasons through the one rejection path, so its
    values leave the viewer, the healing trajectory and the EMR (their Observations
    ``entered-in-error``), and every PACS gets the rejection note. An admin may withdraw any
    report; anyone else only those they stored.

    Raises, changing nothing, :class:`UnknownInstance` when ``sop_uid`` is no measurement
    report of ``study_uid``, :class:`CorrectionError` when it was withdrawn already, and
    :class:`NotAllowed` for another user's report.
    """
    with services.db.session() as db:
        row = db.get(Instance, sop_uid)
        if row is None or row.study_uid != study_uid or row.sop_class_uid != SR_SOP_CLASS_UID:
            raise UnknownInstance(f"study {study_uid} has no measurement report {sop_uid}")
        if row.rejected_at is not None:
            raise CorrectionError(f"the measurement report {sop_uid} was withdrawn already")
        observers = set(db.scalars(select(WoundMeasurement.observer).where(
            WoundMeasurement.report_sop_uid == sop_uid)))
        if not admin and observers != {actor}:
            raise NotAllowed("only an admin or the user who saved a measurement report may "
                             "withdraw it")
        return reject_rows(services, db, _session(db, study_uid), [row],
                           RejectionReason.QUALITY, actor=actor,
                           detail={"withdrawn_report": sop_uid})


def move_to_patient(services: Services, study_uid: str, patient_id: str, issuer: str,
                    reason: str, *, actor: str, own_within: timedelta | None = None,
                    detail: Mapping[str, object] | None = None) -> PatientMove:
    """Move every shown instance of ``study_uid`` to the patient (``issuer``, ``patient_id``)
    of the patient directory.

    Guarantees, in one transaction: a new capture session (one new study, complete) holds
    corrected copies of the instances (new SOP Instance, Series and Study UIDs, the right
    patient's Patient Module, no Admission ID or Accession Number of the wrong one, the photo
    and measurement rows that index them), each queued to every PACS destination; one
    rejection note (Rejected for Patient Safety Reasons) rejects the originals; both studies'
    EMR notices are queued (the old ImagingStudy becomes ``entered-in-error``); the move and a
    notice addressed to the capturing clinician are audited. Raises :class:`CorrectionError`,
    changing nothing, for an empty reason, an unknown study or one with nothing left to move,
    a patient the directory does not know (or cannot answer for), or the same patient;
    ``own_within`` as for :func:`reject`; ``detail`` is added to the ``correction.patient``
    audit record (a patient merge's message control ID, say).
    """
    target = _move_target(services, study_uid, patient_id, issuer, reason, actor, own_within)
    prefix = services.settings.uid_prefix
    with services.db.session() as db:
        old = _session(db, study_uid)
        rows = _movable(db, study_uid)
        new = _copied_session(old, target, prefix, actor)
        db.add(new)
        uids = _uid_map(db, old, new, rows, prefix)
        patient = PatientInfo(id=target.mrn, issuer=target.issuer,
                              name=target.dicom_name or None, birth_date=target.birth_date,
                              sex=target.sex)
        db.flush()
        for row in rows:
            copy = _from_archive(services, row,
                                 lambda data: corrected_copy(data, uids, patient))
            attributes = {k: v for k, v in (row.attributes or {}).items()
                          if k in ("SeriesNumber", "InstanceNumber", "Modality")}
            stored = services.archive.store(db, InstanceKey(
                new.study_uid, uids[row.series_uid], uids[row.sop_uid], row.sop_class_uid),
                copy, attributes)
            services.intake.outbox.enqueue_photo(db, new, stored)
        new.photo_count = _copy_index_rows(db, old, new, uids)
        staged = _take_staged_clips(db, old, new)
        rejection = reject_rows(services, db, old, rows, RejectionReason.PATIENT_SAFETY,
                            actor=actor, detail={"moved_to_study": new.study_uid})
        copies = {r.sop_uid: uids[r.sop_uid] for r in rows}
        entities = (audit.patient_ref(old.patient_id, old.issuer),
                    audit.patient_ref(new.patient_id, new.issuer),
                    audit.study_ref(old.study_uid), audit.study_ref(new.study_uid))
        audit.record(db, actor, "correction.patient", *entities,
                     *(audit.instance_ref(u) for u in copies.values()),
                     outcome=audit.SUCCESS, node=services.settings.node,
                     detail={"reason": reason.strip(), "copies": copies,
                             "kos": rejection.kos_sop_uid, "new_session": new.id,
                             "staged_clips": staged, **(detail or {})})
        audit.record(db, actor, "correction.notice", f"user:{old.created_by}", *entities,
                     outcome=audit.SUCCESS, node=services.settings.node,
                     detail={"to": old.created_by, "kos": rejection.kos_sop_uid,
                             "message": "photos you captured were moved to another patient"})
        return PatientMove(old_study_uid=study_uid, new_study_uid=new.study_uid,
                           new_session_id=new.id, copies=copies, rejection=rejection)


def plan_move(services: Services, study_uid: str, patient_id: str, issuer: str, reason: str,
              *, actor: str, own_within: timedelta | None = None) -> MovePlan:
    """What :func:`move_to_patient` with these arguments would move now, and from whom to
    whom (the directory's record of the target). Raises what it would raise, before anything
    is done; changes nothing."""
    target = _move_target(services, study_uid, patient_id, issuer, reason, actor, own_within)
    with services.db.session() as db:
        old = _session(db, study_uid)
        uids = [row.sop_uid for row in _movable(db, study_uid)]
        photos = db.scalar(select(func.count()).select_from(Photo).where(
            Photo.session_id == old.id, Photo.sop_uid.in_(uids))) or 0
        return MovePlan(study_uid=study_uid, captured_at=as_utc(old.created_at),
                        photos=photos, instances=len(uids), source=patient_summary(old),
                        target=PatientSummary(target.dicom_name, target.mrn, target.issuer,
                                              target.birth_date))


def study_patient(services: Services, study_uid: str) -> PatientSummary:
    """The patient ``study_uid`` belongs to; :class:`CorrectionError` for an unknown study."""
    with services.db.session() as db:
        return patient_summary(_session(db, study_uid))


def _move_target(services: Services, study_uid: str, patient_id: str, issuer: str,
                 reason: str, actor: str, own_within: timedelta | None) -> PatientRecord:
    """The directory's record of the patient a move of ``study_uid`` goes to, after the
    checks :func:`move_to_patient` documents but that of something left to move."""
    if not reason.strip():
        raise CorrectionError("give the reason of the correction")
    with services.db.session() as db:
        old = _session(db, study_uid)
        _check_allowed(old, actor, own_within)
        if (old.issuer, old.patient_id) == (issuer, patient_id):
            raise CorrectionError("the study already belongs to this patient")
    return directory_patient(services, patient_id, issuer)


def _movable(db: Session, study_uid: str) -> list[Instance]:
    """The instances a move of ``study_uid`` copies: those shown, but rejection notes;
    :class:`CorrectionError` when there is none."""
    rows = db.scalars(select(Instance).where(
        Instance.study_uid == study_uid, Instance.shown(),
        Instance.sop_class_uid != KOS_SOP_CLASS_UID)
        .order_by(Instance.stored_at, Instance.sop_uid)).all()
    if not rows:
        raise CorrectionError("the study has no instance left to move")
    return list(rows)


def _take_staged_clips(db: Session, old: CaptureSession, new: CaptureSession) -> list[str]:
    """Clips of ``old`` accepted but still waiting for their re-encode now belong to ``new``,
    and their jobs name its study: the worker stores them in the right patient's study, never
    in the wrong one (a worker re-encoding one right now finds it moved and retries). The SOP
    Instance UIDs they will have."""
    uids = list(db.scalars(select(StagedClip.sop_uid).where(StagedClip.session_id == old.id)
                           .order_by(StagedClip.sop_uid)))
    if uids:
        db.execute(update(StagedClip).where(StagedClip.sop_uid.in_(uids))
                   .values(session_id=new.id))
        db.execute(update(Delivery).where(Delivery.destination == REENCODE_QUEUE,
                                          Delivery.sop_uid.in_(uids))
                   .values(study_uid=new.study_uid))
    return uids


def rejected_photos(db: Session, study_uids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Per study of ``study_uids`` that has any: its rejected photos (originals, not their
    derived versions) by rejection reason, ``[{"code", "meaning", "photos"}]`` ordered by code.
    This is how the clinician who captured a study learns of its correction."""
    meanings = {r.document_title.value: r.document_title.meaning for r in RejectionReason}
    found: dict[str, list[dict[str, Any]]] = {}
    for study_uid, code, count in db.execute(
            select(Instance.study_uid, Instance.rejection_code, func.count())
            .join(Photo, Photo.sop_uid == Instance.sop_uid)
            .where(Instance.study_uid.in_(study_uids), Instance.rejected_at.is_not(None))
            .group_by(Instance.study_uid, Instance.rejection_code)
            .order_by(Instance.rejection_code)):
        found.setdefault(study_uid, []).append(
            {"code": code, "meaning": meanings.get(code or "", code), "photos": count})
    return found


@dataclass(frozen=True)
class CorrectablePhoto:
    """A photo of a study that may still be corrected: where to find its thumbnail."""

    number: int
    series_uid: str
    sop_uid: str


@dataclass(frozen=True)
class CorrectableStudy:
    """A study and its photos not rejected yet, correctable until ``until`` (UTC; None for an
    admin, who may correct any study at any time)."""

    study_uid: str
    captured_at: datetime
    until: datetime | None
    photos: tuple[CorrectablePhoto, ...]
    patient: PatientSummary


def own_correctable(db: Session, actor: str, own_within: timedelta) -> list[CorrectableStudy]:
    """The studies ``actor`` captured no longer ago than ``own_within``, newest first, each
    with its photos not rejected yet (originals, by instance number): exactly the studies
    :func:`reject` and :func:`move_to_patient` let this clinician correct now."""
    since = utcnow() - own_within
    return [_correctable(db, session, as_utc(session.created_at) + own_within)
            for session in db.scalars(select(CaptureSession).where(
                CaptureSession.created_by == actor, CaptureSession.created_at >= since)
                .order_by(CaptureSession.created_at.desc()))
            if _may_correct(session, actor, own_within)]


def study_correctable(db: Session, study_uid: str) -> CorrectableStudy:
    """The study ``study_uid`` as an admin corrects it (no time limit), with its photos not
    rejected yet; :class:`CorrectionError` for a study that is not ours."""
    return _correctable(db, _session(db, study_uid), None)


def _correctable(db: Session, session: CaptureSession,
                 until: datetime | None) -> CorrectableStudy:
    photos = tuple(CorrectablePhoto(photo.instance_number, instance.series_uid, instance.sop_uid)
                   for photo, instance in db.execute(
                       select(Photo, Instance).join(Instance, Photo.sop_uid == Instance.sop_uid)
                       .where(Photo.session_id == session.id, Instance.shown())
                       .order_by(Photo.instance_number)))
    return CorrectableStudy(session.study_uid, as_utc(session.created_at), until, photos,
                            patient_summary(session))


# --- the one rejection path ------------------------------------------------------------------


def reject_rows(services: Services, db: Session, session: CaptureSession,
                rows: Sequence[Instance], reason: RejectionReason, *, actor: str,
                detail: dict[str, object] | None = None) -> Rejection:
    """In ``db``'s transaction: store the rejection note of ``rows`` (instances of
    ``session``'s study) and of the presentation states drawing the measurement reports among
    them (each instance once), mark them, cancel their PACS deliveries not sent yet, queue the
    note and the study's EMR notices, audit.

    Raises :class:`CorrectionError` when another transaction rejected one of them meanwhile
    (the caller's transaction then rolls back).
    """
    if not rows:
        raise CorrectionError("nothing to reject")
    prefix = services.settings.uid_prefix
    rows = _with_presentations(db, rows, prefix)
    headers = [_from_archive(services, r, partial(read_part10, stop_before_pixels=True))
               for r in rows]
    kos_uid = uid_from_uuid(uuid.uuid4(), prefix)
    series_uid = uid_from_uuid(uuid.uuid4(), prefix)
    now = datetime.now(timezone(timedelta(minutes=session.utc_offset_minutes)))
    data = build_rejection_note(headers, reason, RejectionInfo(
        series_uid=series_uid, series_number=REJECTION_SERIES_NUMBER, sop_uid=kos_uid,
        observer=actor, device_uid=IMPLEMENTATION_CLASS_UID, content_datetime=now))
    note = services.archive.store(
        db, InstanceKey(session.study_uid, series_uid, kos_uid, KOS_SOP_CLASS_UID), data,
        {"SeriesNumber": REJECTION_SERIES_NUMBER, "InstanceNumber": 1, "Modality": "KO"})
    uids = [r.sop_uid for r in rows]
    marked = db.execute(update(Instance).where(Instance.sop_uid.in_(uids), Instance.shown())
                        .values(rejected_at=utcnow(),
                                rejection_code=reason.document_title.value,
                                rejected_by_kos=kos_uid)
                        .execution_options(synchronize_session="fetch"))
    if affected_rows(marked) != len(uids):
        raise CorrectionError("another correction rejected these instances meanwhile")
    cancelled = services.intake.outbox.cancel(
        db, uids, f"cancelled: the instance was rejected ({reason.document_title.meaning})")
    services.intake.outbox.enqueue_photo(db, session, note)
    audit.record(db, actor, "correction.reject",
                 audit.patient_ref(session.patient_id, session.issuer),
                 audit.study_ref(session.study_uid), *(audit.instance_ref(u) for u in uids),
                 audit.instance_ref(kos_uid), outcome=audit.SUCCESS,
                 node=services.settings.node,
                 detail={"reason": reason.value, "code": reason.document_title.value,
                         "kos": kos_uid, "rejected": uids, "cancelled_deliveries": cancelled,
                         **(detail or {})})
    return Rejection(session.study_uid, tuple(uids), kos_uid, reason, cancelled)


# --- helpers ---------------------------------------------------------------------------------


def _with_presentations(db: Session, rows: Sequence[Instance], prefix: str) -> list[Instance]:
    """``rows`` and the presentation states drawing the measurement reports among them, each
    instance once."""
    return list({r.sop_uid: r for r in [*rows, *presentation_rows(db, rows, prefix)]}.values())


def patient_summary(session: CaptureSession) -> PatientSummary:
    """The patient of ``session``, as it names them (PHI: for a page, never a log)."""
    return PatientSummary(session.patient_name or "", session.patient_id, session.issuer,
                          session.birth_date)


def _may_correct(session: CaptureSession, actor: str, own_within: timedelta) -> bool:
    """Whether ``actor`` captured ``session`` no longer ago than ``own_within``."""
    return session.created_by == actor and utcnow() - as_utc(session.created_at) <= own_within


def _check_allowed(session: CaptureSession, actor: str, own_within: timedelta | None) -> None:
    """Raise :class:`NotAllowed` unless ``own_within`` is None (an admin) or ``actor``
    captured ``session`` no longer ago than ``own_within``."""
    if own_within is None:
        return
    if not _may_correct(session, actor, own_within):
        minutes = int(own_within.total_seconds() // 60)
        raise NotAllowed("only an admin may correct this study (a clinician may correct their "
                         f"own captures for {minutes} minutes)")


def _session(db: Session, study_uid: str) -> CaptureSession:
    session = db.scalar(select(CaptureSession).where(CaptureSession.study_uid == study_uid))
    if session is None:
        raise CorrectionError(f"no study of ours has Study Instance UID {study_uid}")
    return session


def _from_archive(services: Services, row: Instance, parse: Callable[[bytes], T]) -> T:
    """``parse`` of the stored bytes of ``row``; CorrectionError when the archive cannot read
    them or they are not DICOM."""
    try:
        return parse(services.archive.read(row))
    except (OSError, UnreadableDicomError) as exc:
        raise CorrectionError(f"the archived file of instance {row.sop_uid} cannot be read "
                              f"({type(exc).__name__}); nothing was changed") from exc


def directory_patient(services: Services, patient_id: str, issuer: str) -> PatientRecord:
    """The patient directory's record of (issuer, MRN), exactly. Raises
    :class:`DirectoryDown` when a directory cannot answer and none returned the patient,
    :class:`CorrectionError` when no directory knows them."""
    lookup = build_directories(services.settings, services.db).find(patient_id, issuer)
    for record in lookup.patients:
        if record.key == (issuer, patient_id):
            return record
    if lookup.unavailable:
        raise DirectoryDown("the patient directory cannot answer now ("
                              + "; ".join(lookup.unavailable.values()) + "); nothing changed")
    raise CorrectionError("the patient directory has no patient with this ID and issuer")


def _copied_session(old: CaptureSession, target: PatientRecord, prefix: str, actor: str
                    ) -> CaptureSession:
    """A complete session for ``target`` with the old one's clinical context (body site,
    side, department, view, consent, who captured and when) but not its encounter."""
    session_id = str(uuid.uuid4())
    now = utcnow()
    return CaptureSession(
        id=session_id, study_uid=uid_from_uuid(session_id, prefix),
        patient_id=target.mrn, issuer=target.issuer, patient_name=target.dicom_name or None,
        birth_date=target.birth_date, sex=target.sex, encounter=None, accession_number="",
        body_site=old.body_site, laterality=old.laterality, department=old.department,
        source=old.source, consent=old.consent, sensitive=old.sensitive,
        description=old.description, status=SessionStatus.COMPLETE, photo_count=0,
        created_by=old.created_by, created_at=old.created_at,
        utc_offset_minutes=old.utc_offset_minutes, completed_at=now,
        identification=SessionIdentification(
            session_id=session_id, method=CORRECTION_METHOD,
            evidence={"corrected_from": old.study_uid, "by": actor}))


def _uid_map(db: Session, old: CaptureSession, new: CaptureSession, rows: Sequence[Instance],
             prefix: str) -> dict[str, str]:
    """Old UID → new UID for the study, every series (by intake role when it has one), every
    instance (a report's presentation state to the one derived from the copied report's UID)
    and every wound tracking UID of the moved study."""
    uids = {old.study_uid: new.study_uid}
    roles = {uid_from_uuid(derived_uuid(old.id, role), prefix):
             uid_from_uuid(derived_uuid(new.id, role), prefix) for role in SERIES_ROLES}
    for row in rows:
        uids.setdefault(row.series_uid, roles.get(row.series_uid) or uid_from_uuid(
            derived_uuid(new.id, f"series:copy:{row.series_uid}"), prefix))
        uids.setdefault(row.sop_uid, uid_from_uuid(uuid.uuid4(), prefix))
        if row.sop_class_uid == SR_SOP_CLASS_UID:
            uids[presentation_uid(row.sop_uid, prefix)] = presentation_uid(uids[row.sop_uid],
                                                                           prefix)
    for old_tracking, label in db.execute(
            select(WoundMeasurement.tracking_uid, WoundMeasurement.wound_label)
            .where(WoundMeasurement.study_uid == old.study_uid).distinct()):
        uids[old_tracking] = tracking_uid(new.issuer, new.patient_id, label, prefix)
    return uids


def _copy_index_rows(db: Session, old: CaptureSession, new: CaptureSession,
                     uids: dict[str, str]) -> int:
    """Copy the photo and wound-measurement rows of the moved instances into ``new``;
    return the number of photos copied."""
    photos = [p for p in db.scalars(select(Photo).where(Photo.session_id == old.id))
              if p.sop_uid in uids]
    for p in photos:
        db.add(Photo(upload_uuid=str(derived_uuid(new.id, p.upload_uuid)), sha256=p.sha256,
                     size=p.size, media_type=p.media_type, width=p.width, height=p.height,
                     acquired_at=p.acquired_at, session_id=new.id, passthrough=p.passthrough,
                     instance_number=p.instance_number, sop_uid=uids[p.sop_uid],
                     color=p.color, pixel_spacing_mm=p.pixel_spacing_mm, quality=p.quality,
                     normalized_sop_uid=uids.get(p.normalized_sop_uid or ""),
                     created_at=p.created_at))
    for m in db.scalars(select(WoundMeasurement).where(
            WoundMeasurement.study_uid == old.study_uid)):
        if m.report_sop_uid not in uids:
            continue
        db.add(WoundMeasurement(
            report_sop_uid=uids[m.report_sop_uid],
            photo_sop_uid=uids.get(m.photo_sop_uid, m.photo_sop_uid), session_id=new.id,
            study_uid=new.study_uid, tracking_uid=uids[m.tracking_uid],
            wound_label=m.wound_label, region=m.region, quantity=m.quantity, value=m.value,
            uncertainty=m.uncertainty, unit=m.unit, points=m.points, taken_at=m.taken_at,
            measured_at=m.measured_at, observer=m.observer, warnings=list(m.warnings)))
    db.flush()
    return len(photos)
