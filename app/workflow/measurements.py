"""Wound measurements on an archived photo, stored as a DICOM SR in the photo's study.

:func:`archived_photo` reads a stored photo instance (its header and its JPEG, the pixels
as stored: upright, no EXIF); the caller measures on them (`app.pipeline.geometry`);
:func:`store_report` builds the TID 1500 report (`app.pipeline.dicom.sr`), stores and indexes
it like any instance, queues its deliveries to every PACS destination and audits the write,
all in one transaction.

The tracking UID of a wound is derived, not looked up: a UUID-5 of the patient (issuer and
ID) and the wound's label (case and surrounding space ignored), so the same label on the same
patient gives the same UID at every visit, with no state to keep or race on.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pydicom import Dataset
from pydicom.valuerep import DT
from sqlalchemy import func, or_, select

from app.db.models import CaptureSession, Instance, Photo, Quantity, WoundMeasurement
from app.gateways.archive import InstanceKey
from app.pipeline.dicom.read import UnreadableDicomError, read_part10
from app.pipeline.dicom.sr import (
    SR_SOP_CLASS_UID,
    MeasuredLine,
    MeasuredPolygon,
    ReportInfo,
    build_measurement_report,
)
from app.pipeline.dicom.uids import IMPLEMENTATION_CLASS_UID, derived_uuid, uid_from_uuid
from app.pipeline.geometry import Calibration
from app.pipeline.render import stored_frame
from app.workflow import audit
from app.workflow.intake import MEASUREMENT_SERIES_NUMBER
from app.workflow.services import Services

TRACKING_NAMESPACE = uuid.UUID("3c1f9d52-7a0e-4b8e-9f43-2d6a51c0b7e4")
"""The UUID-5 namespace of wound tracking UIDs (drawn once for this purpose)."""


class MeasurementError(Exception):
    """The instance cannot be measured (unknown, or not one of our photos); the message says
    which, without PHI."""


@dataclass(frozen=True)
class ArchivedPhoto:
    """A stored photo to measure: its header (no pixel data), its JPEG and its session."""

    sop_uid: str
    header: Dataset
    jpeg: bytes
    session_id: str


def archived_photo(services: Services, sop_uid: str) -> ArchivedPhoto:
    """The archived photo instance ``sop_uid`` (an original or its colour-normalized version).

    Raises `MeasurementError` when no photo has that SOP Instance UID or its stored file
    cannot be read or is damaged.
    """
    with services.db.session() as db:
        photo = db.scalar(select(Photo).where(
            or_(Photo.sop_uid == sop_uid, Photo.normalized_sop_uid == sop_uid)))
        row = db.get(Instance, sop_uid)
        if photo is None or row is None or photo.media_type.startswith("video/"):
            raise MeasurementError(f"no archived photo has SOP Instance UID {sop_uid}")
        session_id = photo.session_id
        try:
            data = services.archive.read(row)
        except OSError as exc:
            raise MeasurementError("the archived file of this instance cannot be read now"
                                   ) from exc
    try:
        header = read_part10(data, stop_before_pixels=True)
        jpeg = stored_frame(data).frame
    except UnreadableDicomError as exc:
        raise MeasurementError(f"the archived file of this instance is damaged: {exc}") from exc
    return ArchivedPhoto(sop_uid, header, jpeg, session_id)


def tracking_uid(issuer: str, patient_id: str, wound_label: str, root: str) -> str:
    """The Tracking Unique Identifier of a patient's wound: the same for the same patient and
    label (case and surrounding space ignored), distinct otherwise."""
    key = f"{issuer}|{patient_id}|{wound_label.strip().casefold()}"
    return uid_from_uuid(uuid.uuid5(TRACKING_NAMESPACE, key), root)


def method_parameters(calibration: Calibration) -> tuple[str, ...]:
    """The calibration's figures as the SR records them with the algorithm."""
    return (f"chart_type={calibration.chart_type}",
            f"pitch_mm={calibration.pitch_mm:g}",
            f"fit_points={calibration.fit_points}",
            f"rms_residual_mm={calibration.rms_residual_mm:.3f}",
            f"tilt_deg={calibration.tilt_deg:.1f}",
            "uncertainty=one standard uncertainty (fit, pixel quantisation, model)")


@dataclass(frozen=True)
class StoredReport:
    """What :func:`store_report` stored."""

    sop_uid: str
    series_uid: str
    study_uid: str
    tracking_uid: str


def store_report(services: Services, photo: ArchivedPhoto, lines: Sequence[MeasuredLine],
                 polygons: Sequence[MeasuredPolygon], *, calibration: Calibration,
                 wound_label: str, observer: str, actor: str) -> StoredReport:
    """Store the measurement report of ``lines`` and ``polygons`` measured on ``photo``.

    Guarantees: on return the SR is in the archive and indexed (Modality SR, series number
    `MEASUREMENT_SERIES_NUMBER`, one series per session), its values are in
    ``wound_measurement`` (one row per value), one delivery is queued per PACS destination
    that takes the study, and a ``measurement.store`` audit record is written, in one
    transaction. Each call stores a new SR instance. Raises ValueError (from the builder)
    for nothing measured or a bad label, before anything is stored.
    """
    prefix = services.settings.uid_prefix
    with services.db.session() as db:
        session = db.get(CaptureSession, photo.session_id)
        if session is None:  # a photo row always has its session (foreign key)
            raise MeasurementError("the photo's capture session is gone")
        series_uid = uid_from_uuid(derived_uuid(session.id, "series:measurements"), prefix)
        number = 1 + (db.scalar(select(func.count()).select_from(Instance)
                                .where(Instance.series_uid == series_uid)) or 0)
        tracking = tracking_uid(session.issuer, session.patient_id, wound_label, prefix)
        sop_uid = uid_from_uuid(uuid.uuid4(), prefix)
        offset = timezone(timedelta(minutes=session.utc_offset_minutes))
        data = build_measurement_report(photo.header, lines, polygons, ReportInfo(
            series_uid=series_uid, series_number=MEASUREMENT_SERIES_NUMBER, sop_uid=sop_uid,
            instance_number=number, wound_label=wound_label, tracking_uid=tracking,
            observer=observer, device_uid=IMPLEMENTATION_CLASS_UID,
            content_datetime=datetime.now(offset),
            method_parameters=method_parameters(calibration)))
        key = InstanceKey(session.study_uid, series_uid, sop_uid, SR_SOP_CLASS_UID)
        instance = services.archive.store(db, key, data, {
            "SeriesNumber": MEASUREMENT_SERIES_NUMBER, "InstanceNumber": number,
            "Modality": "SR"})
        services.intake.outbox.enqueue_photo(db, session, instance)
        taken = taken_at(photo.header, offset) or datetime.now(offset)
        db.add_all(_index_rows(session, photo.sop_uid, sop_uid, tracking, wound_label.strip(),
                               lines, polygons, taken=taken, observer=observer))
        audit.record(db, actor, "measurement.store",
                     audit.patient_ref(session.patient_id, session.issuer),
                     audit.study_ref(session.study_uid), audit.instance_ref(photo.sop_uid),
                     audit.instance_ref(sop_uid), outcome=audit.SUCCESS,
                     node=services.settings.node)
        return StoredReport(sop_uid, series_uid, session.study_uid, tracking)


def taken_at(header: Dataset, offset: timezone) -> datetime | None:
    """When the photo was taken: its Acquisition DateTime, else its Content Date and Time (the
    photo's own time, or its study's when the photo did not say), in ``offset`` when the value
    has no offset of its own; None when the header holds neither in a readable form."""
    value = str(header.get("AcquisitionDateTime") or "")
    if not value and header.get("ContentDate"):
        value = f"{header.ContentDate}{header.get('ContentTime') or ''}"
        tz = str(header.get("TimezoneOffsetFromUTC") or "")
        value += tz if tz[:1] in "+-" and tz else ""
    if not value:
        return None
    try:
        stamp = DT(value)
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=offset)


def _index_rows(session: CaptureSession, photo_sop_uid: str, report_sop_uid: str,
                tracking: str, label: str, lines: Sequence[MeasuredLine],
                polygons: Sequence[MeasuredPolygon], *, taken: datetime, observer: str
                ) -> list[WoundMeasurement]:
    """The ``wound_measurement`` rows of one report: regions numbered as the SR orders them
    (lines, then polygons)."""
    def row(region: int, quantity: Quantity, unit: str, value: float, uncertainty: float,
            points: Sequence[tuple[float, float]]) -> WoundMeasurement:
        return WoundMeasurement(
            report_sop_uid=report_sop_uid, photo_sop_uid=photo_sop_uid, session_id=session.id,
            study_uid=session.study_uid, tracking_uid=tracking, wound_label=label,
            region=region, quantity=quantity.value, unit=unit, value=value,
            uncertainty=uncertainty, points=[[float(x), float(y)] for x, y in points],
            taken_at=taken, observer=observer[:64])

    rows = [row(n, Quantity.LENGTH, "mm", line.length.value, line.length.uncertainty,
                line.points) for n, line in enumerate(lines, start=1)]
    for n, poly in enumerate(polygons, start=len(lines) + 1):
        rows.append(row(n, Quantity.AREA, "mm2", poly.area.value, poly.area.uncertainty,
                        poly.points))
        rows.append(row(n, Quantity.PERIMETER, "mm", poly.perimeter.value,
                        poly.perimeter.uncertainty, poly.points))
    return rows
