"""De-identified export of studies for research (``ebiw export-deid``, the admin action).

Every instance of the requested studies is read from the local archive (checked against its
index hash), screened, de-identified by ``app.pipeline.dicom.deid`` under a secret drawn for
this export alone and written to ``<out>/<study>/<series>/<instance>.dcm`` under pseudonymous
UIDs. The secret is never stored or shown: within the export one patient or study always gets
the same pseudonym; across exports nothing links; nobody can map a pseudonym back.

Images with Burned In Annotation (wristband or label photos; also images that do not say) are
left out unless ``include_burned_in`` — then they are exported and flagged for review, like
images with Recognizable Visual Features (faces). The report ``deid-report.json`` holds counts,
exclusions with their reason (by the study's position in the request, series and instance
number) and the files with their flags — never an original identifier or the mapping.
The export is recorded in the audit trail (``export.deid``) with the patients and studies.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from app.db.models import CaptureSession, Instance
from app.db.session import Database
from app.durable import write_durably
from app.gateways.archive import Archive
from app.pipeline.dicom.deid import (
    BASIC_PROFILE,
    FULL_DATES,
    MODIFIED_DATES,
    NotDeidentifiable,
    Pseudonyms,
    deidentify,
    inspect,
)
from app.workflow import audit

REPORT_NAME = "deid-report.json"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class ExportError(ValueError):
    """The export cannot start as asked; the message names no PHI."""


@dataclass
class ExportReport:
    """What an export did (the content of ``deid-report.json``)."""

    retain_dates: bool
    include_burned_in: bool
    studies_requested: int
    studies_found: int = 0
    patients: int = 0
    files: list[dict[str, Any]] = field(default_factory=list)
    exclusions: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        option = FULL_DATES if self.retain_dates else MODIFIED_DATES
        review = [f for f in self.files if f["flags"]]
        return {
            "profile": {"code": BASIC_PROFILE[0], "meaning": BASIC_PROFILE[1],
                        "options": [{"code": option[0], "meaning": option[1]}]},
            "dates": "full" if self.retain_dates else "modified",
            "burned_in_annotation": "included, flagged for review" if self.include_burned_in
            else "excluded",
            "studies": {"requested": self.studies_requested, "found": self.studies_found},
            "patients": self.patients,
            "instances": {"exported": len(self.files), "excluded": len(self.exclusions),
                          "flagged_for_review": len(review)},
            "exclusions": self.exclusions,
            "files": self.files,
        }


@dataclass(frozen=True)
class ExportPlan:
    """What an export of the requested studies would take, counted before anything is
    written: studies asked for and found here, their patients and DICOM instances."""

    studies_requested: int
    studies_found: int
    patients: int
    instances: int


def _study_uids(study_uids: Sequence[str]) -> list[str]:
    """The distinct UIDs in request order; :class:`ExportError` unless each is a UID."""
    uids = list(dict.fromkeys(study_uids))
    if not uids:
        raise ExportError("name at least one study")
    bad = [n for n, u in enumerate(uids, start=1) if not (len(u) <= 64 and _UID.match(u))]
    if bad:
        raise ExportError("every study must be a Study Instance UID (digits and dots); "
                          f"not one: study {', '.join(map(str, bad))} of the list")
    return uids


def plan_export(database: Database, study_uids: Sequence[str]) -> ExportPlan:
    """Count what exporting ``study_uids`` would take, reading the index only.

    Raises :class:`ExportError` when a UID is malformed or none of the studies is here, so
    a plan always has something to export.
    """
    uids = _study_uids(study_uids)
    with database.session() as db:
        counts = {uid: n for uid, n in db.execute(
            select(Instance.study_uid, func.count()).where(Instance.study_uid.in_(uids))
            .group_by(Instance.study_uid))}
        patients = db.execute(select(CaptureSession.issuer, CaptureSession.patient_id)
                              .where(CaptureSession.study_uid.in_(list(counts)))
                              .distinct()).all()
    if not counts:
        raise ExportError(f"none of the {len(uids)} studies named is in the archive here"
                          if len(uids) > 1 else "the study named is not in the archive here")
    return ExportPlan(len(uids), len(counts), len(patients), sum(counts.values()))


def _checked(study_uids: Sequence[str], out_dir: Path) -> list[str]:
    uids = _study_uids(study_uids)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError("the output directory must be new or empty")
    return uids


def _order(row: Instance) -> tuple[int, int, str]:
    attributes = row.attributes or {}
    return (int(attributes.get("SeriesNumber") or 0), int(attributes.get("InstanceNumber") or 0),
            row.sop_uid)


def export_deidentified(database: Database, archive: Archive, study_uids: Sequence[str],
                        out_dir: Path, *, retain_dates: bool, include_burned_in: bool,
                        actor: str, role: str | None = None, client: str | None = None,
                        node: str | None = None, export_id: str | None = None) -> ExportReport:
    """Export the studies de-identified into ``out_dir`` (new or empty) and audit it (with
    ``export_id`` when given, so that later downloads of it can be traced to its studies).

    Guarantees: no file under ``out_dir`` holds an original patient identifier, name, birth
    date, accession or admission number, institution or original UID; pixel data is copied
    byte for byte; the report is written last. Raises :class:`ExportError` before anything is
    written when the request is unusable. When a write fails (``OSError``: a full disk, a
    folder that cannot be made) nothing of the export is left in ``out_dir``, the attempt is
    audited as failed (``"error": "write failed"``) and the error raised.
    """
    uids = _checked(study_uids, out_dir)
    pseudonyms = Pseudonyms(secrets.token_bytes(32))
    report = ExportReport(retain_dates, include_burned_in, len(uids))
    patients: set[str] = set()
    entities: list[str] = []

    def record(outcome: str, **extra: str) -> None:
        summary = report.as_json()
        audit.append(database, actor, "export.deid", *sorted(patients), *entities,
                     outcome=outcome, role=role, client=client, node=node,
                     detail={"dates": summary["dates"], **summary["instances"],
                             **({"export": export_id} if export_id else {}), **extra})

    existed = out_dir.exists()
    try:
        for number, study_uid in enumerate(uids, start=1):
            with database.session() as db:
                rows = sorted(db.scalars(select(Instance)
                                         .where(Instance.study_uid == study_uid)), key=_order)
                session = db.scalar(select(CaptureSession)
                                    .where(CaptureSession.study_uid == study_uid))
            if not rows:
                report.exclusions.append({"study": number, "reason": "study not found"})
                continue
            report.studies_found += 1
            if session is not None:
                patients.add(audit.patient_ref(session.patient_id, session.issuer))
            entities.append(audit.study_ref(study_uid))
            for row in rows:
                _export_one(archive, row, number, out_dir, pseudonyms, report)
        report.patients = len(patients)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_durably(out_dir / REPORT_NAME, json.dumps(report.as_json(), indent=1).encode())
    except OSError:
        _discard(out_dir, keep_folder=existed)
        record(audit.FAILED, error="write failed")
        raise
    record(audit.SUCCESS if report.files else audit.FAILED)
    return report


def _discard(out_dir: Path, *, keep_folder: bool) -> None:
    """Remove what an export wrote into ``out_dir`` (which was new or empty): its content,
    and the folder itself unless it was there before."""
    if not keep_folder:
        shutil.rmtree(out_dir, ignore_errors=True)
    elif out_dir.is_dir():
        for child in out_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _export_one(archive: Archive, row: Instance, study_number: int, out_dir: Path,
                pseudonyms: Pseudonyms, report: ExportReport) -> None:
    """De-identify one archived instance into the export, or record why it was left out."""
    attributes = row.attributes or {}
    where = {"study": study_number, "series_number": attributes.get("SeriesNumber"),
             "instance_number": attributes.get("InstanceNumber")}
    try:
        data = archive.read(row)
    except OSError:
        report.exclusions.append({**where, "reason": "archived file unreadable"})
        return
    if hashlib.sha256(data).hexdigest() != row.sha256:
        report.exclusions.append({**where, "reason": "archived file does not match its index"})
        return
    try:
        screening = inspect(data)
        if screening.may_show_text and not report.include_burned_in:
            report.exclusions.append({**where, "reason": "burned-in annotation"})
            return
        result = deidentify(data, pseudonyms, retain_dates=report.retain_dates)
    except NotDeidentifiable:
        report.exclusions.append({**where, "reason": "not a de-identifiable image"})
        return
    relative = Path(result.study_uid, result.series_uid, f"{result.sop_uid}.dcm")
    write_durably(out_dir / relative, result.data)
    flags = [flag for flag, present in (("burned-in annotation", screening.may_show_text),
                                        ("recognizable visual features",
                                         screening.may_show_face)) if present]
    report.files.append({"file": relative.as_posix(),
                         "sha256": hashlib.sha256(result.data).hexdigest(), "flags": flags})
