"""Grouping: the batch's photos sorted into patient groups by their labels in capture order
(:mod:`app.pipeline.slipsheet`), each group's directory answer, and the review's changes
(photos moved, dropped or re-classed; groups entered by hand)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.models import (
    Batch,
    BatchGroup,
    BatchItem,
    CaptureSession,
    GroupSource,
    ItemRole,
    ItemStatus,
    as_utc,
)
from app.db.session import Database
from app.gateways.patients import Directories
from app.pipeline.dicom import values
from app.pipeline.slipsheet import Frame, Identity, assign, capture_order
from app.pipeline.wristband import WristbandId
from app.settings import Settings
from app.workflow.batch.common import find_batch, is_clip, parse_uuid
from app.workflow.batch.views import BatchView, GroupView, ItemView, patient_json
from app.workflow.identification import LookupStatus
from app.workflow.intake import Conflict, InvalidRequest, NotFound, refusing_invalid_values

log = logging.getLogger(__name__)


def _insert(db: Session) -> Callable[..., Any]:
    """The INSERT of the session's dialect that has ON CONFLICT (PostgreSQL, SQLite)."""
    if db.get_bind().dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert


def ensure_group(db: Session, batch_id: str, wid: WristbandId, source: str) -> str:
    """The group of (MRN, issuer) in the batch, created when new (race-safe: INSERT … ON
    CONFLICT DO NOTHING, then read)."""
    issuer = wid.issuer or ""
    insert = _insert(db)
    db.execute(insert(BatchGroup).values(
        id=str(uuid.uuid4()), batch_id=batch_id, mrn=wid.mrn, issuer=issuer,
        encounter=wid.encounter, source=source, created_at=datetime.now(UTC),
    ).on_conflict_do_nothing(index_elements=["batch_id", "mrn", "issuer"]))
    group_id = db.scalar(select(BatchGroup.id).where(
        BatchGroup.batch_id == batch_id, BatchGroup.mrn == wid.mrn,
        BatchGroup.issuer == issuer))
    assert group_id is not None  # inserted above, or by the racer that won
    return group_id


class Grouping:
    """The batch's patient groups and the review's changes to them. ``owner``: see
    :class:`app.workflow.batch.Batches`."""

    def __init__(self, db: Database, settings: Settings, directories: Directories) -> None:
        self.db = db
        self.settings = settings
        self.directories = directories

    def view(self, batch_id: str, *, owner: str | None, lookup: bool = True) -> BatchView:
        """The batch sorted into groups; with ``lookup``, groups whose directory answer is
        missing (or was "unavailable") are looked up first and the answer kept."""
        batch = find_batch(self.db, batch_id, owner)
        if lookup:
            self._lookup_groups(batch.id)
        with self.db.session() as db:
            items = list(db.scalars(select(BatchItem).where(BatchItem.batch_id == batch.id)))
            groups = list(db.scalars(select(BatchGroup).where(BatchGroup.batch_id == batch.id)
                                     .order_by(BatchGroup.created_at, BatchGroup.id)))
            sessions = {s.id: s for s in db.scalars(select(CaptureSession).where(
                CaptureSession.id.in_([g.session_id for g in groups if g.session_id])))}
        return self._sorted(batch, items, groups, sessions)

    def _sorted(self, batch: Batch, items: list[BatchItem], groups: list[BatchGroup],
                sessions: dict[str, CaptureSession]) -> BatchView:
        by_identity = {(g.mrn, g.issuer): g.id for g in groups}
        given = next((g.id for g in groups if g.source == GroupSource.GIVEN), None)
        frames = [Frame(i.upload_uuid, i.file_order, as_utc(i.acquired_at),
                        tuple((x["mrn"], x["issuer"]) for x in i.identity)) for i in items]
        runs: dict[str, Identity | None] = assign(frames)
        ordered = capture_order(frames)
        rows = {i.upload_uuid: i for i in items}
        views = []
        for position, frame in enumerate(ordered):
            row = rows[frame.key]
            identity = runs[frame.key]
            group_id = row.group_id if row.pinned else (
                given if given else by_identity.get(identity) if identity else None)
            views.append(ItemView(row, position, group_id))
        first: dict[str, int] = {}
        for view in views:
            if view.group_id is not None:
                first.setdefault(view.group_id, view.position)
        ordered_groups = sorted(groups, key=lambda g: (g.id not in first,
                                                       first.get(g.id, 0)))
        group_views = tuple(GroupView(g, tuple(v for v in views if v.group_id == g.id),
                                      sessions.get(g.session_id or ""))
                            for g in ordered_groups)
        return BatchView(batch, tuple(views), group_views, self.settings.batch_label_photos)

    def _lookup_groups(self, batch_id: str) -> None:
        with self.db.session() as db:
            todo = [(g.id, g.mrn, g.issuer, g.source) for g in db.scalars(
                select(BatchGroup).where(BatchGroup.batch_id == batch_id))
                if g.lookup is None or g.lookup.get("status") == LookupStatus.UNAVAILABLE]
        for group_id, mrn, issuer, source in todo:
            answer = self.ask_directories(mrn, issuer or None, source)
            with self.db.session() as db:
                row = db.get(BatchGroup, group_id)
                if row is not None:
                    row.lookup = answer

    def ask_directories(self, mrn: str, issuer: str | None, source: str) -> dict[str, Any]:
        """The directories' answer for an identifier, as stored with the group."""
        found = self.directories.find(mrn, issuer)
        patients = [patient_json(p) for p in found.patients]
        if patients:
            status = LookupStatus.MATCHED if len(patients) == 1 else LookupStatus.AMBIGUOUS
        else:
            status = LookupStatus.UNAVAILABLE if found.unavailable else LookupStatus.NOT_FOUND
        log.info("batch group lookup source=%s status=%s candidates=%d", source, status,
                 len(patients))
        return {"status": status, "patients": patients,
                "unavailable": sorted(found.unavailable),
                "at": datetime.now(UTC).isoformat()}

    def update_item(self, batch_id: str, upload_uuid: str, changes: Any, *,
                    owner: str | None) -> BatchItem:
        """Apply the review's changes to a held photo: ``group_id`` (a group of the batch, or
        None: unsorted; the photo then stays where it is put), ``auto`` (true: follow the
        capture order again), ``dropped`` (not stored at confirmation), ``role`` (``label`` or
        ``clinical``). A stored photo cannot change (:class:`Conflict`)."""
        batch = find_batch(self.db, batch_id, owner)
        upload_uuid = parse_uuid(upload_uuid, "upload id")
        if not isinstance(changes, dict) or not changes or \
                set(changes) - {"group_id", "auto", "dropped", "role"}:
            raise InvalidRequest("send one or more of group_id, auto, dropped, role")
        with self.db.session() as db:
            row = db.get(BatchItem, upload_uuid)
            if row is None or row.batch_id != batch.id:
                raise NotFound("no such photo in this batch")
            if row.status != ItemStatus.HELD:
                raise Conflict("this photo is already stored or skipped")
            if "group_id" in changes:
                target = changes["group_id"]
                if target is not None:
                    group = db.get(BatchGroup, parse_uuid(target, "group_id"))
                    if group is None or group.batch_id != batch.id:
                        raise NotFound("no such group in this batch")
                    target = group.id
                row.group_id, row.pinned = target, True
            if changes.get("auto") is True:
                row.group_id, row.pinned = None, False
            if "dropped" in changes:
                if not isinstance(changes["dropped"], bool):
                    raise InvalidRequest("dropped must be true or false")
                row.dropped = changes["dropped"]
            if "role" in changes:
                if changes["role"] not in tuple(ItemRole):
                    raise InvalidRequest("role must be label or clinical")
                if is_clip(row) and changes["role"] != ItemRole.CLINICAL:
                    raise InvalidRequest("a video clip cannot be a label photo")
                row.role = changes["role"]
            return row

    def add_group(self, batch_id: str, mrn: Any, issuer: Any, *, owner: str | None) -> str:
        """A group for a patient entered by hand (photos are then moved into it); the id of
        the batch's group for that identifier when there is one already."""
        batch = find_batch(self.db, batch_id, owner)
        with refusing_invalid_values():
            wid = WristbandId(values.identifier(mrn, "mrn", required=True),
                              values.identifier(issuer, "issuer"), None, "manual")
        with self.db.session() as db:
            return ensure_group(db, batch.id, wid, GroupSource.MANUAL)
