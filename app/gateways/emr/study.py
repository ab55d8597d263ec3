"""The current state of a study as the database knows it, for every EMR notifier."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import CaptureSession, Instance, Photo, WoundMeasurement, as_utc
from app.gateways.errors import PermanentError
from app.pipeline.dicom.codes import body_site
from app.pipeline.dicom.kos import KOS_SOP_CLASS_UID
from app.pipeline.fhir import InstanceFacts, SeriesFacts, StudyFacts
from app.pipeline.fhir_observation import ENTERED_IN_ERROR, FINAL, MeasuredValue

DEFAULT_MODALITY = "XC"


@dataclass(frozen=True)
class StudyRecord:
    """A study's facts plus the patient and encounter context of its capture session."""

    facts: StudyFacts
    session_id: str
    mrn: str
    issuer: str
    encounter: str | None
    patient_name: str | None
    birth_date: date | None
    sex: str | None
    department: str | None
    measurements: tuple[MeasuredValue, ...] = ()
    """The values of the study's measurement SRs, oldest SR first, then by region and
    quantity; times in the session's UTC offset. A value whose SR or measured photo was
    rejected (IHE IOCM) stays, with status ``entered-in-error``."""


def load_study(db: Session, study_uid: str) -> StudyRecord:
    """Read the session and every indexed instance of ``study_uid``.

    Rejection notes are left out, and so are rejected instances (IHE IOCM); when every
    instance is rejected the facts list them all with status ``entered-in-error``.
    Series are ordered by when their first instance was stored (the originals first); a
    series or instance number comes from the instance's indexed attributes (``SeriesNumber``,
    ``InstanceNumber``), the photo's instance number, or else its position. Raises
    :class:`PermanentError` for an unknown study or one without instances.
    """
    session = db.scalar(select(CaptureSession).where(CaptureSession.study_uid == study_uid))
    if session is None:
        raise PermanentError("no capture session has this Study Instance UID")
    every = db.scalars(select(Instance).where(Instance.study_uid == study_uid,
                                              Instance.sop_class_uid != KOS_SOP_CLASS_UID)
                       .order_by(Instance.stored_at, Instance.sop_uid)).all()
    if not every:
        raise PermanentError("the study has no stored instance yet")
    rows = [r for r in every if r.rejected_at is None]
    rejected = len(every) - len(rows)
    status = "available"
    if not rows:  # everything rejected: the study as it was, marked entered-in-error
        rows, status = list(every), "entered-in-error"
    photo_numbers: dict[str, int] = {sop_uid: number for sop_uid, number in db.execute(
        select(Photo.sop_uid, Photo.instance_number).where(Photo.session_id == session.id))}
    by_series: dict[str, list[Instance]] = {}
    for row in rows:
        by_series.setdefault(row.series_uid, []).append(row)
    series = []
    for position, (series_uid, instances) in enumerate(by_series.items(), start=1):
        numbered = sorted(
            (InstanceFacts(uid=i.sop_uid, sop_class_uid=i.sop_class_uid,
                           number=int(photo_numbers.get(i.sop_uid)
                                      or (i.attributes or {}).get("InstanceNumber") or n))
             for n, i in enumerate(instances, start=1)),
            key=lambda i: (i.number, i.uid))
        first = instances[0].attributes or {}
        series.append(SeriesFacts(uid=series_uid,
                                  number=int(first.get("SeriesNumber") or position),
                                  modality=str(first.get("Modality") or DEFAULT_MODALITY),
                                  instances=tuple(numbered)))
    created = session.created_at
    created = created.replace(tzinfo=UTC) if created.tzinfo is None else created
    zone = timezone(timedelta(minutes=session.utc_offset_minutes))
    started = created.astimezone(zone)
    facts = StudyFacts(uid=study_uid, started=started, series=tuple(series),
                       body_site=body_site(session.body_site) if session.body_site else None,
                       laterality=session.laterality,
                       accession_number=session.accession_number or "", status=status,
                       rejected_count=rejected)
    return StudyRecord(facts=facts, session_id=session.id, mrn=session.patient_id,
                       issuer=session.issuer, encounter=session.encounter,
                       patient_name=session.patient_name, birth_date=session.birth_date,
                       sex=session.sex, department=session.department,
                       measurements=_measurements(db, study_uid, zone))


def _measurements(db: Session, study_uid: str, zone: timezone) -> tuple[MeasuredValue, ...]:
    """Every value measured in the study; ``entered-in-error`` when its SR or its measured
    photo was rejected (a photo and its normalized version are rejected together)."""
    rows = db.scalars(select(WoundMeasurement).where(WoundMeasurement.study_uid == study_uid)
                      .order_by(WoundMeasurement.measured_at, WoundMeasurement.report_sop_uid,
                                WoundMeasurement.region, WoundMeasurement.quantity)).all()
    rejected = set(db.scalars(select(Instance.sop_uid).where(
        Instance.study_uid == study_uid, Instance.rejected_at.is_not(None))))
    return tuple(MeasuredValue(
        report_uid=r.report_sop_uid, region=r.region, quantity=r.quantity, value=r.value,
        uncertainty=r.uncertainty, unit=r.unit, taken_at=as_utc(r.taken_at).astimezone(zone),
        measured_at=as_utc(r.measured_at).astimezone(zone), tracking_uid=r.tracking_uid,
        wound_label=r.wound_label, warnings=tuple(r.warnings),
        status=ENTERED_IN_ERROR if {r.report_sop_uid, r.photo_sop_uid} & rejected else FINAL)
        for r in rows)
