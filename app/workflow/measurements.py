"""Wound measurements on an archived photo, stored as a DICOM SR in the photo's study.

:func:`archived_photo` reads a stored photo instance (its header and its JPEG, the pixels
as stored: upright, no EXIF); :func:`calibrate_archived` and :func:`measure_regions` measure on
them (`app.pipeline.geometry`), for ``ebiw measure --instance`` and the API alike;
:func:`store_report` builds the TID 1500 report (`app.pipeline.dicom.sr`) and the Color
Softcopy Presentation State drawing the same regions (`app.pipeline.dicom.pr`), stores and
indexes both like any instance, queues their deliveries to every PACS destination and audits
the write, all in one transaction. :func:`study_measurements` reads the index back for the
viewer, and :func:`outline_archived` proposes a wound's outline on a stored photo.

The presentation state of a report is derived, not looked up either: its SOP Instance UID is a
UUID-5 of the report's (:func:`presentation_uid`), so a withdrawal or rejection of the report
finds it, and a patient move maps it to the copied report's.

The tracking UID of a wound is derived, not looked up: a UUID-5 of the patient (issuer and
ID) and the wound's label (case and surrounding space ignored), so the same label on the same
patient gives the same UID at every visit, with no state to keep or race on.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import NamedTuple

from pydicom import Dataset
from pydicom.valuerep import DT
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.db.models import (
    CaptureSession,
    Instance,
    Photo,
    Quantity,
    WoundMeasurement,
    as_utc,
)
from app.gateways.archive import InstanceKey
from app.pipeline.dicom.pr import PR_SOP_CLASS_UID, build_presentation_state
from app.pipeline.dicom.read import UnreadableDicomError, read_part10
from app.pipeline.dicom.sr import (
    SR_SOP_CLASS_UID,
    MeasuredLine,
    MeasuredPolygon,
    ReportInfo,
    build_measurement_report,
)
from app.pipeline.dicom.uids import IMPLEMENTATION_CLASS_UID, derived_uuid, uid_from_uuid
from app.pipeline.geometry import (
    WARNINGS,
    Calibration,
    GeometryError,
    Measurement,
    Point,
    calibrate_photo,
)
from app.pipeline.outline import Polygon, SeedOutsideImageError, outline_photo
from app.pipeline.render import stored_frame
from app.workflow import audit
from app.workflow.intake import MEASUREMENT_SERIES_NUMBER, PRESENTATION_SERIES_NUMBER
from app.workflow.services import Services

TRACKING_NAMESPACE = uuid.UUID("3c1f9d52-7a0e-4b8e-9f43-2d6a51c0b7e4")
"""The UUID-5 namespace of wound tracking UIDs (drawn once for this purpose)."""


class MeasurementError(Exception):
    """The instance cannot be measured (unknown, or not one of our photos); the message says
    which, without PHI."""


class RegionError(GeometryError):
    """One region of a request cannot be measured; ``field`` names it as the API's JSON does
    (``lines[0]``, ``polygons[1]``), the message as the CLI does (``line 1: ...``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ArchivedPhoto:
    """A stored photo to measure: its header (no pixel data), its JPEG and its session;
    ``normalized_sop_uid`` is its colour-normalized version when this is an original that
    has one."""

    sop_uid: str
    header: Dataset
    jpeg: bytes
    session_id: str
    normalized_sop_uid: str | None = None


def archived_photo(services: Services, sop_uid: str) -> ArchivedPhoto:
    """The archived photo instance ``sop_uid`` (an original or its colour-normalized version).

    Raises `MeasurementError` when no photo has that SOP Instance UID or its stored file
    cannot be read or is damaged.
    """
    with services.db.session() as db:
        photo = db.scalar(select(Photo).where(
            or_(Photo.sop_uid == sop_uid, Photo.normalized_sop_uid == sop_uid)))
        row = db.get(Instance, sop_uid)
        if (photo is None or row is None or row.rejected_at is not None
                or photo.media_type.startswith("video/")):
            raise MeasurementError(f"no archived photo has SOP Instance UID {sop_uid}")
        session_id = photo.session_id
        normalized = photo.normalized_sop_uid if photo.sop_uid == sop_uid else None
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
    return ArchivedPhoto(sop_uid, header, jpeg, session_id, normalized)


def calibrate_archived(services: Services, photo: ArchivedPhoto) -> Calibration:
    """The chart-plane calibration of an archived photo, on its stored pixels (whose frame is
    the one its SR's SCOORD uses). Raises `GeometryError` when it has no usable chart."""
    return calibrate_photo(photo.jpeg, max_pixels=services.settings.max_pixels)


class LineInput(NamedTuple):
    """A line to measure: its two ends (image pixels) and what it measures (a key of
    `app.pipeline.dicom.sr.LINE_QUANTITIES`)."""

    start: Point
    end: Point
    quantity: str = "length"


@dataclass(frozen=True)
class Measured:
    """Regions measured on one photo, in the order given, and the warnings raised by any of
    them beyond those of the whole calibration (``measurement``, ``code``, ``message``)."""

    lines: list[MeasuredLine]
    polygons: list[MeasuredPolygon]
    warnings: list[dict[str, str]]

    def summary(self) -> dict[str, object]:
        """The values as ``ebiw measure`` prints them (rounded, in the order given)."""
        return {
            "lines_mm": [round(m.length.value, 2) for m in self.lines],
            "areas_mm2": [round(m.area.value, 1) for m in self.polygons],
            "lines_uncertainty_mm": [round(m.length.uncertainty, 2) for m in self.lines],
            "areas_uncertainty_mm2": [round(m.area.uncertainty, 1) for m in self.polygons],
            "perimeters_mm": [round(m.perimeter.value, 2) for m in self.polygons],
            "warnings": self.warnings,
        }


def measure_regions(calibration: Calibration, lines: Sequence[LineInput],
                    polygons: Sequence[Sequence[Point]]) -> Measured:
    """Measure ``lines`` and ``polygons`` (image pixels) on the calibration's plane.

    Raises `RegionError` naming the first region that cannot be measured (a point outside
    the image or beyond the horizon, a degenerate line or polygon).
    """
    warnings: list[dict[str, str]] = []

    def take(field: str, name: str, measure: Callable[[], Measurement]) -> Measurement:
        try:
            result = measure()
        except GeometryError as exc:
            raise RegionError(field, f"{name}: {exc}") from None
        warnings.extend({"measurement": name, "code": code, "message": WARNINGS[code]}
                        for code in result.warnings if code not in calibration.warnings)
        return result

    segments = [MeasuredLine((line.start, line.end),
                             take(f"lines[{i - 1}]", f"line {i}",
                                  partial(calibration.length_mm, line.start, line.end)),
                             line.quantity)
                for i, line in enumerate(lines, start=1)]
    regions = [MeasuredPolygon(
        poly, take(f"polygons[{i - 1}]", f"polygon {i}",
                   partial(calibration.area_mm2, poly)),
        calibration.perimeter_mm(poly)) for i, poly in enumerate(polygons, start=1)]
    return Measured(segments, regions, warnings)


def outline_archived(services: Services, photo: ArchivedPhoto, seed: tuple[float, float]
                     ) -> Polygon:
    """The proposed outline of the wound under ``seed`` in ``photo`` (`outline_photo`), both
    in the photo's stored pixel frame. It is found on the colour-normalized version when the
    photo has one (scaled between the two frames when that version is smaller).

    Raises `SeedOutsideImageError` for a seed outside the photo, `MeasurementError` when the
    normalized version cannot be read.
    """
    width, height = int(photo.header.Columns), int(photo.header.Rows)
    x, y = seed
    if not (0 <= x < width and 0 <= y < height):
        raise SeedOutsideImageError(f"the seed ({x:g}, {y:g}) is outside the {width} x "
                                    f"{height} image")
    source = photo if photo.normalized_sop_uid is None \
        else archived_photo(services, photo.normalized_sop_uid)
    sx, sy = int(source.header.Columns) / width, int(source.header.Rows) / height
    found = outline_photo(source.jpeg, (int(x * sx), int(y * sy)), services.settings.max_pixels)
    if (sx, sy) == (1, 1):
        return found
    return [(round(px / sx), round(py / sy)) for px, py in found]


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
    presentation_sop_uid: str


def presentation_uid(report_sop_uid: str, root: str) -> str:
    """The SOP Instance UID, under ``root``, of the presentation state stored with the report
    ``report_sop_uid``: the same for the same report, distinct for distinct reports (the
    report's UID is an OID, its UUID-5 in the OID namespace the parent of the derivation)."""
    return uid_from_uuid(derived_uuid(uuid.uuid5(uuid.NAMESPACE_OID, report_sop_uid),
                                      "presentation"), root)


def presentation_rows(db: Session, reports: Sequence[Instance], root: str) -> list[Instance]:
    """The presentation states not rejected yet that were stored with those of ``reports``
    that are measurement reports, their UIDs derived under ``root`` (the UID prefix)."""
    uids = [presentation_uid(r.sop_uid, root) for r in reports
            if r.sop_class_uid == SR_SOP_CLASS_UID]
    return list(db.scalars(select(Instance).where(
        Instance.sop_uid.in_(uids), Instance.sop_class_uid == PR_SOP_CLASS_UID,
        Instance.shown()).order_by(Instance.sop_uid))) if uids else []


def store_report(services: Services, photo: ArchivedPhoto, lines: Sequence[MeasuredLine],
                 polygons: Sequence[MeasuredPolygon], *, calibration: Calibration,
                 wound_label: str, observer: str, actor: str) -> StoredReport:
    """Store the measurement report of ``lines`` and ``polygons`` measured on ``photo``, and
    the presentation state drawing them.

    Guarantees: on return the SR (Modality SR, series number `MEASUREMENT_SERIES_NUMBER`) and
    its presentation state (Modality PR, series number `PRESENTATION_SERIES_NUMBER`, SOP
    Instance UID :func:`presentation_uid` of the SR's), each in one series per session, are in
    the archive and indexed, the values are in ``wound_measurement`` (one row per value), one
    delivery per instance is queued per PACS destination that takes the study, and a
    ``measurement.store`` audit record is written, in one transaction. Each call stores new
    instances. Raises ValueError (from the builders) for nothing measured or a bad label,
    before anything is stored.
    """
    prefix = services.settings.uid_prefix
    with services.db.session() as db:
        session = db.get(CaptureSession, photo.session_id)
        if session is None:  # a photo row always has its session (foreign key)
            raise MeasurementError("the photo's capture session is gone")
        offset = timezone(timedelta(minutes=session.utc_offset_minutes))
        tracking = tracking_uid(session.issuer, session.patient_id, wound_label, prefix)
        sop_uid = uid_from_uuid(uuid.uuid4(), prefix)
        report = _next_in_series(db, session, "series:measurements",
                                 MEASUREMENT_SERIES_NUMBER, sop_uid, prefix)
        info = ReportInfo(
            series_uid=report.series_uid, series_number=report.series_number,
            sop_uid=sop_uid, instance_number=report.instance_number, wound_label=wound_label,
            tracking_uid=tracking, observer=observer, device_uid=IMPLEMENTATION_CLASS_UID,
            content_datetime=datetime.now(offset),
            method_parameters=method_parameters(calibration))
        graphics = _next_in_series(db, session, "series:presentations",
                                   PRESENTATION_SERIES_NUMBER,
                                   presentation_uid(sop_uid, prefix), prefix)
        built = [(report, SR_SOP_CLASS_UID, "SR",
                  build_measurement_report(photo.header, lines, polygons, info)),
                 (graphics, PR_SOP_CLASS_UID, "PR", build_presentation_state(
                     photo.header, lines, polygons, replace(info, **graphics._asdict())))]
        for place, sop_class, modality, data in built:
            instance = services.archive.store(
                db, InstanceKey(session.study_uid, place.series_uid, place.sop_uid, sop_class),
                data, {"SeriesNumber": place.series_number,
                       "InstanceNumber": place.instance_number, "Modality": modality})
            services.intake.outbox.enqueue_photo(db, session, instance)
        taken = taken_at(photo.header, offset) or datetime.now(offset)
        db.add_all(_index_rows(session, photo.sop_uid, sop_uid, tracking, wound_label.strip(),
                               lines, polygons, taken=taken, observer=observer))
        audit.record(db, actor, "measurement.store",
                     audit.patient_ref(session.patient_id, session.issuer),
                     audit.study_ref(session.study_uid), audit.instance_ref(photo.sop_uid),
                     audit.instance_ref(sop_uid), audit.instance_ref(graphics.sop_uid),
                     outcome=audit.SUCCESS, node=services.settings.node)
        return StoredReport(sop_uid, report.series_uid, session.study_uid, tracking,
                            graphics.sop_uid)


class _Place(NamedTuple):
    """Where a new instance goes: its series (UID and number) and its own UID and number;
    the field names are those of `ReportInfo`."""

    series_uid: str
    series_number: int
    sop_uid: str
    instance_number: int


def _next_in_series(db: Session, session: CaptureSession, role: str, series_number: int,
                    sop_uid: str, prefix: str) -> _Place:
    """The place of instance ``sop_uid`` in ``session``'s series of ``role`` (its UID derived
    from the session's id): the instance number after those stored in it."""
    series_uid = uid_from_uuid(derived_uuid(session.id, role), prefix)
    number = 1 + (db.scalar(select(func.count()).select_from(Instance)
                            .where(Instance.series_uid == series_uid)) or 0)
    return _Place(series_uid, series_number, sop_uid, number)


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
    (lines, then polygons), each value with its warning codes. ``taken_at`` is stored in
    UTC: SQLite keeps an aware time's wall clock without its offset, and every reader takes
    a stored naive time as UTC."""
    def row(region: int, quantity: Quantity, unit: str, measured: Measurement,
            points: Sequence[tuple[float, float]]) -> WoundMeasurement:
        return WoundMeasurement(
            report_sop_uid=report_sop_uid, photo_sop_uid=photo_sop_uid, session_id=session.id,
            study_uid=session.study_uid, tracking_uid=tracking, wound_label=label,
            region=region, quantity=quantity.value, unit=unit, value=measured.value,
            uncertainty=measured.uncertainty, warnings=list(measured.warnings),
            points=[[float(x), float(y)] for x, y in points],
            taken_at=taken.astimezone(UTC), observer=observer[:64])

    rows = [row(n, Quantity(line.quantity), "mm", line.length, line.points)
            for n, line in enumerate(lines, start=1)]
    for n, poly in enumerate(polygons, start=len(lines) + 1):
        rows.append(row(n, Quantity.AREA, "mm2", poly.area, poly.points))
        rows.append(row(n, Quantity.PERIMETER, "mm", poly.perimeter, poly.points))
    return rows


def study_measurements(services: Services, study_uid: str) -> list[dict[str, object]]:
    """The measurements stored in ``study_uid`` as the viewer draws them back: one item per
    region of each report (oldest report first, regions in the SR's order), with its kind
    (``length``, ``width`` or ``polygon``), its points on the photo, its values by quantity
    (value, standard uncertainty, unit), its warnings (``code`` and ``message``: those of any
    of its values, each once), the wound, its tracking UID, observer and times.
    Reports withdrawn or rejected, and those on rejected photos, are left out."""
    with services.db.session() as db:
        rows = db.scalars(select(WoundMeasurement)
                          .where(WoundMeasurement.study_uid == study_uid,
                                 WoundMeasurement.shown())
                          .order_by(WoundMeasurement.measured_at, WoundMeasurement.report_sop_uid,
                                    WoundMeasurement.region, WoundMeasurement.id)).all()
    regions: dict[tuple[str, int], dict[str, object]] = {}
    values: dict[tuple[str, int], dict[str, dict[str, object]]] = {}
    warnings: dict[tuple[str, int], dict[str, None]] = {}
    for row in rows:
        key = (row.report_sop_uid, row.region)
        if key not in regions:
            values[key], warnings[key] = {}, {}
            regions[key] = {
                "report_sop_instance_uid": row.report_sop_uid,
                "photo_sop_instance_uid": row.photo_sop_uid, "region": row.region,
                "kind": row.quantity if row.quantity in (Quantity.LENGTH, Quantity.WIDTH)
                else "polygon",
                "points": row.points, "values": values[key], "wound": row.wound_label,
                "tracking_uid": row.tracking_uid, "observer": row.observer,
                "taken_at": as_utc(row.taken_at).isoformat(),
                "measured_at": as_utc(row.measured_at).isoformat()}
        values[key][row.quantity] = {"value": row.value, "uncertainty": row.uncertainty,
                                     "unit": row.unit}
        warnings[key].update(dict.fromkeys(row.warnings))
    for key, region in regions.items():
        region["warnings"] = [{"code": code, "message": WARNINGS[code]}
                              for code in warnings[key]]
    return list(regions.values())
