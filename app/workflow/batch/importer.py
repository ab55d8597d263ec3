"""The command line's import (``ebiw import``): files held as a batch, sorted, and each group
the directories resolve confirmed; a report of what happened to every file."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.db.models import CaptureSession, GroupSource, ItemStatus, Photo
from app.db.session import Database
from app.durable import disk_full, write_durably
from app.workflow.batch.common import NAMESPACE, ImportStatus
from app.workflow.batch.views import GroupView, ItemView
from app.workflow.identification import LookupStatus
from app.workflow.intake import (
    BodySiteRequired,
    ClipTooLong,
    Conflict,
    UnreadablePhoto,
    UnreadableVideo,
    UnsupportedVideo,
)

REFUSED = (UnreadablePhoto, UnreadableVideo, UnsupportedVideo, ClipTooLong)
"""What the intake refuses in a file, with a message to report."""

if TYPE_CHECKING:
    from app.workflow.batch import Batches

IMPORT_STORAGE_FULL = ("the storage is full: nothing more was stored; free space and run "
                       "the same import again (it resumes)")
"""Why a file, or the whole import, stopped on a full disk (:func:`app.durable.disk_full`)."""


@dataclass
class ImportReport:
    """What ``ebiw import`` did with every file (see :func:`import_files`)."""

    batch_id: str
    target: str
    files: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for record in self.files:
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        return {"batch_id": self.batch_id, "target": self.target, "counts": counts,
                "files": self.files}

    @property
    def ok(self) -> bool:
        return all(f["status"] in (ImportStatus.STORED, ImportStatus.SKIPPED,
                                   ImportStatus.DUPLICATE) for f in self.files)


def import_uuid(target: str, sha256: str) -> str:
    """The upload UUID of a file imported for ``target``: the same file for the same target
    gets the same UUID whatever folder or run it comes from, so nothing is stored twice."""
    return str(uuid.uuid5(NAMESPACE, f"import:{target}:{sha256}"))


def import_files(batches: Batches, files: Sequence[Path], *, user: str,
                 patient: tuple[str, str] | None = None, department: str | None = None,
                 body_site: str | None = None, laterality: str | None = None,
                 progress: Callable[[dict[str, Any]], None] = lambda _record: None,
                 ) -> ImportReport:
    """Import files as a batch: held, sorted by labels (unless ``patient`` is given), and each
    group whose identifier the directories resolve to exactly one patient confirmed, with
    ``body_site`` and ``laterality`` as the batch review confirms a group (valid as
    :func:`app.workflow.intake.site_and_side` takes them, or the first confirmation raises
    :class:`app.workflow.intake.InvalidRequest`, nothing stored). Without a body site, a group
    holding a video clip, which needs one, stays held for the batch review, its files
    ``unsorted`` with that reason. A group confirmed by an earlier run keeps that run's site.

    The batch id is derived from the target and the set of file contents, and each upload UUID
    from the target and the file's content (:func:`import_uuid`): re-running on the same files
    resumes the same batch and stores nothing twice. ``progress`` gets a record when each file
    has been read and held. The report names, for every file, its status (``stored``,
    ``skipped``, ``unsorted``, ``duplicate`` or ``failed``), the patient by MRN and issuer, the
    SOP Instance UIDs, or the reason. Records carry no names.
    """
    target = f"patient:{patient[1]}|{patient[0]}" if patient else "labels"
    entries: list[tuple[Path, str | None, str | None]] = []  # path, digest, error
    for path in files:
        try:
            entries.append((path, hashlib.sha256(path.read_bytes()).hexdigest(), None))
        except OSError as exc:
            entries.append((path, None, f"cannot read the file ({exc.strerror})"))
    fields = {key: value for key, value in (("body_site", body_site),
                                            ("laterality", laterality)) if value}
    digests = sorted({d for _, d, _ in entries if d})
    batch_id = str(uuid.uuid5(NAMESPACE, f"import:{target}:" + ",".join(digests)))
    batches.open_batch(batch_id, user, department=department, patient=patient)
    report = ImportReport(batch_id, target)
    records: dict[str, dict[str, Any]] = {}  # by upload UUID: the file's record
    first_of: dict[str, str] = {}
    for order, (path, digest, error) in enumerate(entries):
        record: dict[str, Any] = {"file": str(path), "sha256": digest}
        report.files.append(record)
        if digest is None:
            record.update(status=ImportStatus.FAILED, reason=error)
            progress(record)
            continue
        upload_uuid = import_uuid(target, digest)
        record["upload_uuid"] = upload_uuid
        if upload_uuid in first_of:
            record.update(status=ImportStatus.DUPLICATE,
                          reason=f"same content as {first_of[upload_uuid]}")
            progress(record)
            continue
        first_of[upload_uuid] = str(path)
        try:
            batches.add_item(batch_id, upload_uuid, path.read_bytes(), order, owner=None)
        except (*REFUSED, OSError) as exc:
            record.update(status=ImportStatus.FAILED, reason=exc.message if isinstance(
                exc, REFUSED) else IMPORT_STORAGE_FULL if disk_full(exc)
                else f"cannot read the file ({exc.strerror})")
            progress(record)
            continue
        except Conflict:
            record.update(_stored_elsewhere(batches.db, upload_uuid))
            progress(record)
            continue
        records[upload_uuid] = record
        progress({**record, "status": ImportStatus.HELD})
    view = batches.view(batch_id, owner=None)
    held_before = {i.row.upload_uuid for i in view.items if i.row.status == ItemStatus.HELD}
    for group in view.groups:
        status = (group.row.lookup or {}).get("status")
        held_why = None
        if group.held and (status == LookupStatus.MATCHED or (group.row.source == GroupSource.GIVEN
                                                   and status == LookupStatus.NOT_FOUND)):
            try:
                group = batches.confirm(batch_id, group.row.id, fields, user=user, owner=None)
            except BodySiteRequired as exc:  # held for the batch review, where a site is chosen
                held_why = exc.message
        for item in group.items:
            if item.row.upload_uuid in records:
                outcome = _item_outcome(item, group, held_why)
                if outcome["status"] == ImportStatus.STORED:  # in this run, or by an earlier one
                    outcome["new"] = item.row.upload_uuid in held_before
                records[item.row.upload_uuid].update(outcome)
    for item in view.unsorted:
        if item.row.upload_uuid in records:
            records[item.row.upload_uuid].update(
                status=ImportStatus.UNSORTED, role=item.row.role,
                reason="no label before this photo in capture order")
    for record in report.files:
        if "upload_uuid" in record and "status" not in record:
            record.update(status=ImportStatus.UNSORTED, reason="not sorted")
    for record in report.files:
        record.pop("upload_uuid", None)
    return report


def _stored_elsewhere(db: Database, upload_uuid: str) -> dict[str, Any]:
    """The outcome of a file whose UUID was already used by another batch's photo."""
    with db.session() as session:
        photo = session.get(Photo, upload_uuid)
        if photo is None:
            return {"status": ImportStatus.UNSORTED, "reason": "held in another import batch"}
        owner = session.get(CaptureSession, photo.session_id)
        return {"status": ImportStatus.STORED, "new": False,
                "patient": {"mrn": owner.patient_id, "issuer": owner.issuer} if owner else None,
                "study_instance_uid": owner.study_uid if owner else None,
                "sop_instance_uid": photo.sop_uid,
                "normalized_sop_instance_uid": photo.normalized_sop_uid}


def _item_outcome(item: ItemView, group: GroupView,
                  held_why: str | None = None) -> dict[str, Any]:
    """A file's outcome in the import report: by MRN and issuer, never a name. ``held_why``:
    why the group's confirmation was refused, if it was."""
    row = item.row
    answer = group.row.lookup or {}
    session = group.session
    patient = {"mrn": session.patient_id, "issuer": session.issuer} if session else None
    if row.status == ItemStatus.HELD:
        label = {"mrn": group.row.mrn, "issuer": group.row.issuer or None}
        reasons = {LookupStatus.NOT_FOUND: "the label's identifier matched no patient",
                   LookupStatus.AMBIGUOUS: "the label's identifier matched several patients",
                   LookupStatus.UNAVAILABLE: "the patient directory did not answer"}
        return {"status": ImportStatus.UNSORTED, "role": row.role, "label": label,
                "reason": held_why or reasons.get(answer.get("status", ""),
                                                  "the group is not confirmed")}
    if row.status == ItemStatus.SKIPPED:
        return {"status": ImportStatus.SKIPPED, "role": row.role, "patient": patient,
                "reason": "dropped" if row.dropped else "label photo (EBIW_BATCH_LABEL_PHOTOS"
                                                         "=drop)"}
    return {"status": ImportStatus.STORED, "role": row.role, "patient": patient,
            "study_instance_uid": session.study_uid if session else None,
            "sop_instance_uid": row.sop_uid,
            "normalized_sop_instance_uid": row.normalized_sop_uid}


def write_report(report: ImportReport, target: Path) -> None:
    """Write the report durably (temporary file, fsync, rename)."""
    write_durably(target, json.dumps(report.as_json(), indent=2,
                                                 ensure_ascii=False).encode())

