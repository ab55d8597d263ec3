"""Batch import: many photos held in staging, sorted into patient groups, stored on confirmation.

A batch (a clinic's photos of a day, a folder to migrate) receives photos by upload UUID, each
idempotent like a single upload. An accepted photo (2xx) means: its bytes are durably in the
staging area (``<data dir>/batches/<batch id>/<upload uuid>``, names only from UUIDs we
checked) and its ``batch_item`` row is committed. On arrival the photo is also read for label
barcodes (:func:`app.pipeline.identify.read_label_barcodes`, wristband rules) and gets the
pixel work that needs no patient (:meth:`Intake.process`: the JPEG to wrap, the colour step),
staged beside it, so that confirming later is only wrapping and writing.

Photos are sorted into patient groups by the slip-sheet rules (:mod:`app.pipeline.slipsheet`):
capture order, a label frame starts its patient's group. Groups are reviewed (the patient
directory's answer for each label), photos moved, dropped or assigned by hand. **Nothing of a
batch reaches the archive, the outbox or the EMR before its group is confirmed**: confirming
opens one capture session (one study) for the group through :class:`Intake`, and accepts each
held photo there, so DICOM, UIDs and delivery follow the one path of single uploads. Confirming
again is harmless (session id and upload UUIDs are deterministic), so an interrupted
confirmation is finished by repeating it.

The concerns are modules: :mod:`.staging` (held photos, bytes on disk), :mod:`.grouping`
(labels, groups, the review's moves), :mod:`.confirmation` (a group stored through the intake),
:mod:`.importer` (``ebiw import``); :class:`Batches` is the one service the web API and the
command line use. Nothing here logs or raises with a payload, MRN or name.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from app.db.models import Batch, BatchGroup, BatchItem, GroupSource
from app.db.session import Database
from app.gateways.patients import Directories
from app.pipeline.dicom import values
from app.pipeline.wristband import Rule
from app.settings import Settings
from app.workflow.batch.common import GroupStatus, ImportStatus, parse_uuid
from app.workflow.batch.confirmation import Confirmation
from app.workflow.batch.grouping import Grouping
from app.workflow.batch.importer import (
    IMPORT_STORAGE_FULL,
    ImportReport,
    import_files,
    import_uuid,
    write_report,
)
from app.workflow.batch.staging import Staging
from app.workflow.batch.views import BatchView, GroupView, ItemView, patient_json
from app.workflow.identification import build_identifier
from app.workflow.intake import Conflict, Intake, refusing_invalid_values

__all__ = ["IMPORT_STORAGE_FULL", "BatchView", "Batches", "GroupStatus", "GroupView",
           "ImportReport", "ImportStatus", "ItemView", "build_batches", "import_files",
           "import_uuid", "patient_json", "write_report"]


class Batches:
    """Batches: open, receive photos, review, confirm groups into capture sessions.

    ``owner`` arguments: the user who must have opened the batch (None: anyone, for admins
    and the command line); another user's batch is "not found". Each concern is its own
    object (``staging``, ``grouping``, ``confirmation``); this class opens batches and hands
    every other call to the one that does it.
    """

    def __init__(self, db: Database, settings: Settings, intake: Intake,
                 directories: Directories, rules: Sequence[Rule]) -> None:
        self.db = db
        self.staging = Staging(db, settings, intake, rules)
        self.grouping = Grouping(db, settings, directories)
        self.confirmation = Confirmation(db, settings, intake, self.staging, self.grouping)

    def open_batch(self, batch_id: str | None, user: str, *, department: str | None = None,
                   patient: tuple[str, str] | None = None) -> tuple[Batch, bool]:
        """Create the batch, or return it when its id is sent again by the same user.

        ``patient`` (id, issuer): every photo is for that patient (no barcode sorting).
        Returns (batch, created); the id of another user's batch is a :class:`Conflict`.
        """
        batch_id = parse_uuid(batch_id, "id") if batch_id else str(uuid.uuid4())
        with refusing_invalid_values():
            department = values.text(department, "department")
            if patient:
                patient = (values.identifier(patient[0], "patient id", required=True),
                           values.identifier(patient[1], "issuer", required=True))
        try:
            with self.db.session() as db:
                existing = db.get(Batch, batch_id)
                if existing is not None:
                    if existing.created_by != user:
                        raise Conflict("this batch id is already used")
                    return existing, False
                row = Batch(id=batch_id, created_by=user, department=department,
                            patient_id=patient[0] if patient else None,
                            issuer=patient[1] if patient else None)
                db.add(row)
                if patient:
                    db.flush()
                    db.add(BatchGroup(id=str(uuid.uuid4()), batch_id=batch_id, mrn=patient[0],
                                      issuer=patient[1], source=GroupSource.GIVEN))
        except IntegrityError:  # the same id raced us: the winner's batch, if it is ours
            with self.db.session() as db:
                existing = db.get(Batch, batch_id)
            if existing is None or existing.created_by != user:
                raise Conflict("this batch id is already used") from None
            return existing, False
        return row, True

    def discard(self, batch_id: str, *, owner: str | None) -> int:
        """See :meth:`Staging.discard`."""
        return self.staging.discard(batch_id, owner=owner)

    def purge_idle(self, idle: timedelta, *, now: datetime | None = None) -> dict[str, int]:
        """See :meth:`Staging.purge_idle`."""
        return self.staging.purge_idle(idle, now=now)

    def add_item(self, batch_id: str, upload_uuid: str, data: bytes, order: int, *,
                 owner: str | None) -> tuple[BatchItem, bool]:
        """See :meth:`Staging.add_item`."""
        return self.staging.add_item(batch_id, upload_uuid, data, order, owner=owner)

    def view(self, batch_id: str, *, owner: str | None, lookup: bool = True) -> BatchView:
        """See :meth:`Grouping.view`."""
        return self.grouping.view(batch_id, owner=owner, lookup=lookup)

    def update_item(self, batch_id: str, upload_uuid: str, changes: Any, *,
                    owner: str | None) -> BatchItem:
        """See :meth:`Grouping.update_item`."""
        return self.grouping.update_item(batch_id, upload_uuid, changes, owner=owner)

    def add_group(self, batch_id: str, mrn: Any, issuer: Any, *, owner: str | None) -> str:
        """See :meth:`Grouping.add_group`."""
        return self.grouping.add_group(batch_id, mrn, issuer, owner=owner)

    def confirm(self, batch_id: str, group_id: str, body: Any, *, user: str,
                owner: str | None) -> GroupView:
        """See :meth:`Confirmation.confirm`."""
        return self.confirmation.confirm(batch_id, group_id, body, user=user, owner=owner)


def build_batches(db: Database, settings: Settings, intake: Intake) -> Batches:
    """The batch service with the configured patient directories and wristband rules."""
    identifier = build_identifier(settings, db)
    return Batches(db, settings, intake, identifier.directories, identifier.rules)
