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

Nothing here logs or raises with a payload, MRN or name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import Batch, BatchGroup, BatchItem, CaptureSession, Photo, as_utc
from app.db.session import Database
from app.durable import write_durably
from app.gateways.patients import Directories, PatientRecord
from app.pipeline.decode import PreparedPhoto, UnreadablePhotoError, probe
from app.pipeline.identify import Barcode, read_label_barcodes
from app.pipeline.slipsheet import Frame, Identity, assign, capture_order, label_area
from app.pipeline.wristband import NoWristbandRuleMatched, Rule, WristbandId, parse_wristband
from app.settings import Settings
from app.workflow.identification import build_identifier
from app.workflow.intake import (
    ColorResult,
    Conflict,
    Intake,
    InvalidRequest,
    NotFound,
    PhotoWork,
    SessionRequest,
    UnreadablePhoto,
    check_short_texts,
)

log = logging.getLogger(__name__)

NAMESPACE = uuid.UUID("5d0f3c1e-7a52-4b8e-9d36-2f1b9c4e8a70")
"""UUIDv5 namespace of the ids this module derives (sessions of groups, command-line imports)."""
LABEL, CLINICAL = "label", "clinical"
HELD, STORED, SKIPPED = "held", "stored", "skipped"
FROM_LABEL, MANUAL, GIVEN = "label", "manual", "given"
"""Where a group's identifier came from: a label in the batch, entered by hand in the review,
or given for the whole batch (``ebiw import --patient-id``)."""
STAGED_ORIGINAL, STAGED_PREPARED, STAGED_NORMALIZED = "", ".prepared.jpg", ".normalized.jpg"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
STORE_THREADS = 3
"""Photos of one confirmed group stored at once (their fsyncs overlap; the pixel work was
done when they arrived)."""
_CONFIRM_FIELDS = ("encounter", "body_site", "laterality", "description", "consent")


def _uuid(value: Any, name: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be a UUID") from exc


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _insert(db: Session) -> Callable[..., Any]:
    """The INSERT of the session's dialect that has ON CONFLICT (PostgreSQL, SQLite)."""
    if db.get_bind().dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert


def patient_json(patient: PatientRecord) -> dict[str, Any]:
    """A directory's patient as the review shows it and confirmation uses it."""
    return {"mrn": patient.mrn, "issuer": patient.issuer,
            "name": {"family": patient.family, "given": patient.given,
                     "dicom": patient.dicom_name},
            "birth_date": _iso(patient.birth_date), "sex": patient.sex,
            "sources": list(patient.sources),
            "encounters": [{"identifier": e.identifier, "status": e.status,
                            "department": e.department, "started": _iso(e.started)}
                           for e in patient.encounters]}


# --- views ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemView:
    """One photo of a batch with its place in capture order and its (computed) group."""

    row: BatchItem
    position: int
    group_id: str | None

    def as_json(self) -> dict[str, Any]:
        r = self.row
        return {"upload_uuid": r.upload_uuid, "sha256": r.sha256, "size": r.size,
                "media_type": r.media_type, "width": r.width, "height": r.height,
                "order": r.file_order, "position": self.position,
                "acquired_at": _iso(as_utc(r.acquired_at)), "role": r.role,
                "barcode": bool(r.identity), "label_area": r.label_area,
                "group_id": self.group_id, "assigned": "manual" if r.pinned else "auto",
                "dropped": r.dropped, "status": r.status, "sop_instance_uid": r.sop_uid,
                "normalized_sop_instance_uid": r.normalized_sop_uid,
                "color": (r.work.get("color") or {}).get("report")}


@dataclass(frozen=True)
class GroupView:
    """A patient group: its identifier, the directory's answer, its photos in capture order."""

    row: BatchGroup
    items: tuple[ItemView, ...]
    session: CaptureSession | None

    @property
    def held(self) -> list[ItemView]:
        return [i for i in self.items if i.row.status == HELD]

    def as_json(self) -> dict[str, Any]:
        g = self.row
        counts = {state: sum(1 for i in self.items if i.row.status == state)
                  for state in (HELD, STORED, SKIPPED)}
        counts["dropped"] = sum(1 for i in self.items if i.row.dropped)
        s = self.session
        return {"id": g.id, "source": g.source,
                "identifier": {"mrn": g.mrn, "issuer": g.issuer or None,
                               "encounter": g.encounter},
                "lookup": g.lookup,
                "status": "confirmed" if g.session_id else "pending",
                "session_id": g.session_id,
                "study_instance_uid": s.study_uid if s else None,
                "patient": {"id": s.patient_id, "issuer": s.issuer} if s else None,
                "confirmed_at": _iso(as_utc(g.confirmed_at)), "counts": counts,
                "items": [i.row.upload_uuid for i in self.items]}


@dataclass(frozen=True)
class BatchView:
    """A batch as the review shows it: photos in capture order, groups, unsorted photos."""

    batch: Batch
    items: tuple[ItemView, ...]
    groups: tuple[GroupView, ...]
    label_photos: str

    def group(self, group_id: str) -> GroupView:
        for g in self.groups:
            if g.row.id == group_id:
                return g
        raise NotFound("no such group in this batch")

    @property
    def unsorted(self) -> list[ItemView]:
        return [i for i in self.items if i.group_id is None]

    def as_json(self) -> dict[str, Any]:
        b = self.batch
        return {"id": b.id, "status": b.status, "created_at": _iso(as_utc(b.created_at)),
                "department": b.department, "label_photos": self.label_photos,
                "patient": {"id": b.patient_id, "issuer": b.issuer} if b.patient_id else None,
                "items": [i.as_json() for i in self.items],
                "groups": [g.as_json() for g in self.groups],
                "unsorted": [i.row.upload_uuid for i in self.unsorted]}


# --- the service ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Analysis:
    """What an arriving photo told us (before any patient is known)."""

    media_type: str
    width: int
    height: int
    acquired: datetime | None
    readings: tuple[WristbandId, ...]
    area: float | None
    role: str
    work: PhotoWork | None


class Batches:
    """Batches: open, receive photos, review, confirm groups into capture sessions.

    ``owner`` arguments: the user who must have opened the batch (None: anyone, for admins
    and the command line); another user's batch is "not found".
    """

    def __init__(self, db: Database, settings: Settings, intake: Intake,
                 directories: Directories, rules: Sequence[Rule]) -> None:
        self.db = db
        self.settings = settings
        self.intake = intake
        self.directories = directories
        self.rules = tuple(rules)
        self.root = settings.data_dir / "batches"

    # --- batches -------------------------------------------------------------------------

    def open_batch(self, batch_id: str | None, user: str, *, department: str | None = None,
                   patient: tuple[str, str] | None = None) -> tuple[Batch, bool]:
        """Create the batch, or return it when its id is sent again by the same user.

        ``patient`` (id, issuer): every photo is for that patient (no barcode sorting).
        Returns (batch, created); the id of another user's batch is a :class:`Conflict`.
        """
        batch_id = _uuid(batch_id, "id") if batch_id else str(uuid.uuid4())
        check_short_texts((department, "department"),
                          *(((patient[0], "patient id"), (patient[1], "issuer"))
                            if patient else ()))
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
                                      issuer=patient[1], source=GIVEN))
        except IntegrityError:  # the same id raced us: the winner's batch, if it is ours
            with self.db.session() as db:
                existing = db.get(Batch, batch_id)
            if existing is None or existing.created_by != user:
                raise Conflict("this batch id is already used") from None
            return existing, False
        return row, True

    def _batch(self, batch_id: str, owner: str | None) -> Batch:
        with self.db.session() as db:
            row = db.get(Batch, _uuid(batch_id, "batch id"))
        if row is None or row.status != "open" or (owner is not None
                                                   and row.created_by != owner):
            raise NotFound("no such batch")
        return row

    def discard(self, batch_id: str, *, owner: str | None) -> int:
        """Forget the batch's held photos (their staged bytes are deleted); stored photos stay
        in their studies. Returns how many photos were discarded."""
        batch = self._batch(batch_id, owner)
        with self.db.session() as db:
            held = list(db.scalars(select(BatchItem.upload_uuid).where(
                BatchItem.batch_id == batch.id, BatchItem.status == HELD)))
            db.execute(delete(BatchItem).where(BatchItem.batch_id == batch.id,
                                               BatchItem.status == HELD))
            db.get(Batch, batch.id).status = "discarded"  # type: ignore[union-attr]
        for upload_uuid in held:
            self._unstage(batch.id, upload_uuid)
        return len(held)

    def purge_idle(self, idle: timedelta, *, now: datetime | None = None) -> dict[str, int]:
        """Discard every open batch with held photos and no activity (a photo arriving, a
        group created or confirmed) for ``idle``: held bytes must not linger on a node
        because nobody finished the review. Returns {batch id: photos discarded}; stored
        photos stay in their studies."""
        cutoff = (now or datetime.now(UTC)) - idle
        with self.db.session() as db:
            held = set(db.scalars(select(BatchItem.batch_id).join(Batch).where(
                Batch.status == "open", BatchItem.status == HELD)))
            idle_ids = [batch_id for batch_id in sorted(held)
                        if self._last_activity(db, batch_id) < cutoff]
        return {batch_id: self.discard(batch_id, owner=None) for batch_id in idle_ids}

    @staticmethod
    def _last_activity(db: Session, batch_id: str) -> datetime:
        batch = db.get(Batch, batch_id)
        assert batch is not None
        times = [batch.created_at,
                 db.scalar(select(func.max(BatchItem.created_at))
                           .where(BatchItem.batch_id == batch_id)),
                 db.scalar(select(func.max(BatchGroup.created_at))
                           .where(BatchGroup.batch_id == batch_id)),
                 db.scalar(select(func.max(BatchGroup.confirmed_at))
                           .where(BatchGroup.batch_id == batch_id))]
        return max(as_utc(t) for t in times if t is not None)

    # --- photos arriving -------------------------------------------------------------------

    def add_item(self, batch_id: str, upload_uuid: str, data: bytes, order: int, *,
                 owner: str | None) -> tuple[BatchItem, bool]:
        """Hold one photo in the batch; return (item, created).

        Guarantees: when this returns, the bytes are durably staged and the item committed;
        the same bytes under the same UUID return the first item with ``created=False``;
        other bytes, or a UUID already used outside this batch, raise :class:`Conflict`;
        unreadable input raises :class:`UnreadablePhoto` and holds nothing. Nothing is stored
        in the archive or queued for delivery.
        """
        batch = self._batch(batch_id, owner)
        upload_uuid = _uuid(upload_uuid, "upload id")
        if not isinstance(order, int) or not 0 <= order < 2**31:
            raise InvalidRequest("order must be a whole number from 0")
        digest = hashlib.sha256(data).hexdigest()
        known = self._known_item(batch.id, upload_uuid, digest)
        if known is not None:
            return known, False
        analysis = self._analyse(data, scan=batch.patient_id is None)
        work = self._stage(batch.id, upload_uuid, data, analysis.work)
        row = BatchItem(
            upload_uuid=upload_uuid, batch_id=batch.id, sha256=digest, size=len(data),
            media_type=analysis.media_type, width=analysis.width, height=analysis.height,
            file_order=order, acquired_at=as_utc(analysis.acquired), role=analysis.role,
            identity=[{"mrn": r.mrn, "issuer": r.issuer or "", "encounter": r.encounter,
                       "rule": r.rule} for r in analysis.readings],
            label_area=analysis.area, work=work, status=HELD)
        try:
            with self.db.session() as db:
                db.add(row)
                db.flush()
                for reading in analysis.readings:
                    self._ensure_group(db, batch.id, reading, FROM_LABEL)
        except IntegrityError:
            known = self._known_item(batch.id, upload_uuid, digest)
            if known is None:
                raise
            return known, False
        return row, True

    def _known_item(self, batch_id: str, upload_uuid: str, digest: str) -> BatchItem | None:
        with self.db.session() as db:
            row = db.get(BatchItem, upload_uuid)
            if row is None:
                if db.get(Photo, upload_uuid) is not None:
                    raise Conflict("this upload id was already used for a stored photo")
                return None
            if row.batch_id != batch_id or row.sha256 != digest:
                raise Conflict("this upload id was already used for a different photo")
            return row

    def _analyse(self, data: bytes, *, scan: bool) -> _Analysis:
        """Prepare the JPEG to wrap, read label barcodes (when sorting), classify, and run
        the colour step for a clinical photo."""
        prepared = self.intake.process(data, color=False).prepared
        info = prepared.info
        width, height = info.oriented_size
        try:
            barcodes = read_label_barcodes(data, max_pixels=self.settings.max_pixels,
                                           size=(width, height)) if scan else []
        except UnreadablePhotoError as exc:
            raise UnreadablePhoto(str(exc)) from exc
        readings, symbols = self._readings(barcodes)
        area = label_area([b.corners for b in symbols], width, height) if readings else None
        role = LABEL if area is not None and area >= self.settings.batch_label_min_area \
            else CLINICAL
        work = self.intake.process(data, prepared=prepared) if role == CLINICAL \
            else PhotoWork(prepared, None)
        return _Analysis(info.media_type, prepared.width, prepared.height, info.acquired,
                         readings, area, role, work)

    def _readings(self, barcodes: Iterable[Barcode]) -> tuple[tuple[WristbandId, ...],
                                                              list[Barcode]]:
        """The distinct wristband identifiers the barcodes give, and those barcodes."""
        readings: dict[tuple[str, str], WristbandId] = {}
        symbols = []
        for barcode in barcodes:
            try:
                wid = parse_wristband(barcode.payload, barcode.symbology, self.rules)
            except NoWristbandRuleMatched:
                continue
            readings.setdefault((wid.mrn, wid.issuer or ""), wid)
            symbols.append(barcode)
        return tuple(readings.values()), symbols

    @staticmethod
    def _ensure_group(db: Session, batch_id: str, wid: WristbandId, source: str) -> str:
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
        assert group_id is not None  # inserted above, or by whoever won the conflict
        return group_id

    # --- staging ---------------------------------------------------------------------------

    def _path(self, batch_id: str, upload_uuid: str, suffix: str) -> Path:
        """A staged file: both names are canonical UUIDs, checked again here."""
        if not (_UUID.match(batch_id) and _UUID.match(upload_uuid)):
            raise ValueError("staging names must be canonical UUIDs")
        return self.root / batch_id / f"{upload_uuid}{suffix}"

    def _stage(self, batch_id: str, upload_uuid: str, data: bytes,
               work: PhotoWork | None) -> dict[str, Any]:
        """Write the bytes (and the pixel work) durably; return the item's ``work`` record."""
        record: dict[str, Any] = {"prepared": False, "color_run": False, "color": None}
        if work is not None:
            if not work.prepared.passthrough:
                write_durably(self._path(batch_id, upload_uuid, STAGED_PREPARED),
                                          work.prepared.jpeg)
                record["prepared"] = True
            color = work.color
            record["color_run"] = color is not None or not self.settings.color_normalization
            if color is not None:
                if color.jpeg is not None:
                    write_durably(
                        self._path(batch_id, upload_uuid, STAGED_NORMALIZED), color.jpeg)
                record["color"] = {"report": color.report, "width": color.width,
                                   "height": color.height,
                                   "pixel_spacing_mm": color.pixel_spacing_mm,
                                   "photo_pixel_spacing_mm": color.photo_pixel_spacing_mm,
                                   "derivation": color.derivation,
                                   "normalized": color.jpeg is not None}
        write_durably(self._path(batch_id, upload_uuid, STAGED_ORIGINAL), data)
        return record

    def _staged_work(self, item: BatchItem, data: bytes) -> PhotoWork | None:
        """The pixel work staged with the item, or None when it must be done now (the colour
        step did not run for a photo that is now clinical)."""
        record = item.work or {}
        if item.role == CLINICAL and not record.get("color_run"):
            return None
        if record.get("prepared"):
            prepared = PreparedPhoto(
                jpeg=self._path(item.batch_id, item.upload_uuid, STAGED_PREPARED).read_bytes(),
                width=item.width, height=item.height,
                info=probe(data, self.settings.max_pixels), passthrough=False)
        else:
            prepared = self.intake.process(data, color=False).prepared
        color = record.get("color")
        result = None
        if color is not None and item.role == CLINICAL:
            jpeg = self._path(item.batch_id, item.upload_uuid, STAGED_NORMALIZED).read_bytes() \
                if color["normalized"] else None
            result = ColorResult(report=color["report"], jpeg=jpeg, width=color["width"],
                                 height=color["height"],
                                 pixel_spacing_mm=color["pixel_spacing_mm"],
                                 derivation=color["derivation"],
                                 photo_pixel_spacing_mm=color.get(
                                     "photo_pixel_spacing_mm", color["pixel_spacing_mm"]))
        return PhotoWork(prepared, result)

    def _unstage(self, batch_id: str, upload_uuid: str) -> None:
        for suffix in (STAGED_ORIGINAL, STAGED_PREPARED, STAGED_NORMALIZED):
            self._path(batch_id, upload_uuid, suffix).unlink(missing_ok=True)

    # --- review ----------------------------------------------------------------------------

    def view(self, batch_id: str, *, owner: str | None, lookup: bool = True) -> BatchView:
        """The batch sorted into groups; with ``lookup``, groups whose directory answer is
        missing (or was "unavailable") are looked up first and the answer kept."""
        batch = self._batch(batch_id, owner)
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
        given = next((g.id for g in groups if g.source == GIVEN), None)
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
                if g.lookup is None or g.lookup.get("status") == "unavailable"]
        for group_id, mrn, issuer, source in todo:
            answer = self._ask_directories(mrn, issuer or None, source)
            with self.db.session() as db:
                row = db.get(BatchGroup, group_id)
                if row is not None:
                    row.lookup = answer

    def _ask_directories(self, mrn: str, issuer: str | None, source: str) -> dict[str, Any]:
        """The directories' answer for an identifier, as stored with the group."""
        found = self.directories.find(mrn, issuer)
        patients = [patient_json(p) for p in found.patients]
        if patients:
            status = "matched" if len(patients) == 1 else "ambiguous"
        else:
            status = "unavailable" if found.unavailable else "not_found"
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
        batch = self._batch(batch_id, owner)
        upload_uuid = _uuid(upload_uuid, "upload id")
        if not isinstance(changes, dict) or not changes or \
                set(changes) - {"group_id", "auto", "dropped", "role"}:
            raise InvalidRequest("send one or more of group_id, auto, dropped, role")
        with self.db.session() as db:
            row = db.get(BatchItem, upload_uuid)
            if row is None or row.batch_id != batch.id:
                raise NotFound("no such photo in this batch")
            if row.status != HELD:
                raise Conflict("this photo is already stored or skipped")
            if "group_id" in changes:
                target = changes["group_id"]
                if target is not None:
                    group = db.get(BatchGroup, _uuid(target, "group_id"))
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
                if changes["role"] not in (LABEL, CLINICAL):
                    raise InvalidRequest("role must be label or clinical")
                row.role = changes["role"]
            return row

    def add_group(self, batch_id: str, mrn: Any, issuer: Any, *, owner: str | None) -> str:
        """A group for a patient entered by hand (photos are then moved into it); the id of
        the batch's group for that identifier when there is one already."""
        batch = self._batch(batch_id, owner)
        check_short_texts((mrn, "mrn"), (issuer, "issuer"))
        if mrn is None:
            raise InvalidRequest("mrn is required")
        with self.db.session() as db:
            return self._ensure_group(db, batch.id, WristbandId(mrn, issuer, None, "manual"),
                                      MANUAL)

    # --- confirmation ----------------------------------------------------------------------

    def confirm(self, batch_id: str, group_id: str, body: Any, *, user: str,
                owner: str | None) -> GroupView:
        """Turn the group into a capture session and store its held photos.

        ``body``: ``patient`` (``{"mrn", "issuer"}``: one of the group's candidates, or a
        patient the directories find exactly once; optional when the directory matched
        exactly one), and session fields (``encounter``, ``body_site``, ``laterality``,
        ``description``, ``consent``). Guarantees: the session's id is derived from the batch
        and group, so confirming again (after new photos were moved in, or after an
        interruption) adds to the same study and stores nothing twice; a held photo whose label
        names another patient is refused (:class:`Conflict`, nothing stored); dropped photos and,
        with ``EBIW_BATCH_LABEL_PHOTOS=drop``, label photos are skipped and their staged bytes
        deleted; each stored photo's staged bytes are deleted once it is marked stored.
        """
        batch = self._batch(batch_id, owner)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        view = self.view(batch.id, owner=owner)
        group = view.group(_uuid(group_id, "group id"))
        if not group.items:
            raise InvalidRequest("the group has no photos")
        patient, method, evidence = self._chosen(group.row, body.get("patient"))
        for item in group.held:
            shown = {(x["mrn"], x["issuer"]) for x in item.row.identity}
            if not item.row.dropped and shown and not any(
                    mrn == patient["mrn"] and issuer in ("", patient["issuer"])
                    for mrn, issuer in shown):
                raise Conflict("a photo in this group shows another patient's label: move it "
                               "to that patient's group or drop it")
        session_id = group.row.session_id or str(
            uuid.uuid5(NAMESPACE, f"session:{batch.id}:{group.row.id}"))
        request = SessionRequest.from_json({
            "id": session_id,
            "patient": {"id": patient["mrn"], "issuer": patient["issuer"],
                        "name": (patient.get("name") or {}).get("dicom") or None,
                        "birth_date": patient.get("birth_date"), "sex": patient.get("sex")},
            "department": batch.department,
            "encounter": body.get("encounter") or self._encounter(group.row, patient),
            "identification": {"method": method, "evidence": evidence},
            **{k: body[k] for k in _CONFIRM_FIELDS if k in body and k != "encounter"},
        }, self.settings.default_issuer)
        session, _ = self.intake.open_session(request, user)
        with self.db.session() as db:
            group_row = db.get(BatchGroup, group.row.id)
            assert group_row is not None
            if group_row.session_id is None:
                group_row.session_id, group_row.confirmed_by = session.id, user
                group_row.confirmed_at = datetime.now(UTC)
        outcomes = self._store_all([item.row for item in group.held], session.id)
        with self.db.session() as db:  # one commit for the group; a crash before it is
            for upload_uuid, sop_uid, normalized in outcomes:  # mended by confirming again
                row = db.get(BatchItem, upload_uuid)
                assert row is not None
                row.status = STORED if sop_uid else SKIPPED
                row.group_id, row.pinned = group.row.id, True
                row.sop_uid, row.normalized_sop_uid = sop_uid, normalized
        for item in group.held:
            self._unstage(item.row.batch_id, item.row.upload_uuid)
        self.intake.complete(session.id)
        return self.view(batch.id, owner=owner, lookup=False).group(group.row.id)

    def _chosen(self, group: BatchGroup, wanted: Any) -> tuple[dict[str, Any], str,
                                                                dict[str, Any]]:
        """The patient the group is confirmed for, the identification method and evidence."""
        lookup = group.lookup or {"status": "not_found", "patients": []}
        candidates = lookup.get("patients") or []
        method = "wristband" if group.source == FROM_LABEL else "manual"
        if wanted is None:
            if len(candidates) == 1:
                chosen = candidates[0]
            elif group.source == GIVEN and lookup.get("status") == "not_found":
                chosen = {"mrn": group.mrn, "issuer": group.issuer}  # as the command gave it
            else:
                raise InvalidRequest("choose the patient: the label matched "
                                     f"{len(candidates)} patients")
        else:
            if not isinstance(wanted, dict) or not isinstance(wanted.get("mrn"), str):
                raise InvalidRequest("patient must be an object with mrn and issuer")
            key = (wanted["mrn"], wanted.get("issuer"))
            chosen = next((c for c in candidates if (c["mrn"], c["issuer"]) == key), None)
            if chosen is None:
                answer = self._ask_directories(key[0], key[1] or None, MANUAL)
                if answer["status"] == "unavailable":
                    raise Conflict("the patient directory is unavailable: try again later")
                if answer["status"] != "matched":
                    raise InvalidRequest("the directory does not know exactly one patient "
                                         "with this identifier")
                chosen, method = answer["patients"][0], "manual"
        evidence = {"directories": chosen.get("sources", []), "batch": group.batch_id,
                    "group_source": group.source,
                    "matched": ["mrn", "issuer"] if group.issuer else ["mrn"]}
        return chosen, method, evidence

    @staticmethod
    def _encounter(group: BatchGroup, patient: dict[str, Any]) -> str | None:
        """The label's encounter when the directory knows it for the patient."""
        known = {e["identifier"] for e in patient.get("encounters", [])}
        return group.encounter if group.encounter in known else None

    def _store_all(self, items: list[BatchItem],
                   session_id: str) -> list[tuple[str, str | None, str | None]]:
        """Store a confirmed group's held photos through the intake (idempotent), or skip them
        (dropped; label photos with ``EBIW_BATCH_LABEL_PHOTOS=drop``). Returns (upload UUID,
        SOP Instance UID or None when skipped, normalized SOP Instance UID) per item.

        Instance numbers are taken first, in the group's capture order; then the photos are
        stored `STORE_THREADS` at a time, so that one photo's fsyncs overlap another's work.
        """
        kept = [item for item in items if not (
            item.dropped or (item.role == LABEL and self.settings.batch_label_photos == "drop"))]
        numbers = dict(zip((item.upload_uuid for item in kept),
                           self.intake.reserve_instance_numbers(session_id, len(kept)),
                           strict=True)) if kept else {}

        def store(item: BatchItem) -> tuple[str, str | None, str | None]:
            if item.upload_uuid not in numbers:
                return item.upload_uuid, None, None
            data = self._path(item.batch_id, item.upload_uuid, STAGED_ORIGINAL).read_bytes()
            photo, _ = self.intake.accept_photo(
                session_id, item.upload_uuid, data, work=self._staged_work(item, data),
                label=item.role == LABEL, burned_in=bool(item.identity),
                number=numbers[item.upload_uuid])
            return item.upload_uuid, photo.sop_uid, photo.normalized_sop_uid

        with ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="batch-store") as pool:
            return list(pool.map(store, items))


def build_batches(db: Database, settings: Settings, intake: Intake) -> Batches:
    """The batch service with the configured patient directories and wristband rules."""
    identifier = build_identifier(settings, db)
    return Batches(db, settings, intake, identifier.directories, identifier.rules)


# --- the command line's import ----------------------------------------------------------------


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
        return all(f["status"] in (STORED, SKIPPED, "duplicate") for f in self.files)


def import_uuid(target: str, sha256: str) -> str:
    """The upload UUID of a file imported for ``target``: the same file for the same target
    gets the same UUID whatever folder or run it comes from, so nothing is stored twice."""
    return str(uuid.uuid5(NAMESPACE, f"import:{target}:{sha256}"))


def import_files(batches: Batches, files: Sequence[Path], *, user: str,
                 patient: tuple[str, str] | None = None, department: str | None = None,
                 progress: Callable[[dict[str, Any]], None] = lambda _record: None,
                 ) -> ImportReport:
    """Import files as a batch: held, sorted by labels (unless ``patient`` is given), and each
    group whose identifier the directories resolve to exactly one patient confirmed.

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
            record.update(status="failed", reason=error)
            progress(record)
            continue
        upload_uuid = import_uuid(target, digest)
        record["upload_uuid"] = upload_uuid
        if upload_uuid in first_of:
            record.update(status="duplicate", reason=f"same content as {first_of[upload_uuid]}")
            progress(record)
            continue
        first_of[upload_uuid] = str(path)
        try:
            batches.add_item(batch_id, upload_uuid, path.read_bytes(), order, owner=None)
        except (UnreadablePhoto, OSError) as exc:
            record.update(status="failed", reason=exc.message if isinstance(
                exc, UnreadablePhoto) else f"cannot read the file ({exc.strerror})")
            progress(record)
            continue
        except Conflict:
            record.update(_stored_elsewhere(batches.db, upload_uuid))
            progress(record)
            continue
        records[upload_uuid] = record
        progress({**record, "status": HELD})
    view = batches.view(batch_id, owner=None)
    held_before = {i.row.upload_uuid for i in view.items if i.row.status == HELD}
    for group in view.groups:
        status = (group.row.lookup or {}).get("status")
        if group.held and (status == "matched" or (group.row.source == GIVEN
                                                   and status == "not_found")):
            group = batches.confirm(batch_id, group.row.id, {}, user=user, owner=None)
        for item in group.items:
            if item.row.upload_uuid in records:
                outcome = _item_outcome(item, group)
                if outcome["status"] == STORED:  # in this run, or by an earlier one
                    outcome["new"] = item.row.upload_uuid in held_before
                records[item.row.upload_uuid].update(outcome)
    for item in view.unsorted:
        if item.row.upload_uuid in records:
            records[item.row.upload_uuid].update(
                status="unsorted", role=item.row.role,
                reason="no label before this photo in capture order")
    for record in report.files:
        if "upload_uuid" in record and "status" not in record:
            record.update(status="unsorted", reason="not sorted")
    for record in report.files:
        record.pop("upload_uuid", None)
    return report


def _stored_elsewhere(db: Database, upload_uuid: str) -> dict[str, Any]:
    """The outcome of a file whose UUID was already used by another batch's photo."""
    with db.session() as session:
        photo = session.get(Photo, upload_uuid)
        if photo is None:
            return {"status": "unsorted", "reason": "held in another import batch"}
        owner = session.get(CaptureSession, photo.session_id)
        return {"status": STORED, "new": False,
                "patient": {"mrn": owner.patient_id, "issuer": owner.issuer} if owner else None,
                "study_instance_uid": owner.study_uid if owner else None,
                "sop_instance_uid": photo.sop_uid,
                "normalized_sop_instance_uid": photo.normalized_sop_uid}


def _item_outcome(item: ItemView, group: GroupView) -> dict[str, Any]:
    """A file's outcome in the import report: by MRN and issuer, never a name."""
    row = item.row
    answer = group.row.lookup or {}
    session = group.session
    patient = {"mrn": session.patient_id, "issuer": session.issuer} if session else None
    if row.status == HELD:
        label = {"mrn": group.row.mrn, "issuer": group.row.issuer or None}
        reasons = {"not_found": "the label's identifier matched no patient",
                   "ambiguous": "the label's identifier matched several patients",
                   "unavailable": "the patient directory did not answer"}
        return {"status": "unsorted", "role": row.role, "label": label,
                "reason": reasons.get(answer.get("status", ""), "the group is not confirmed")}
    if row.status == SKIPPED:
        return {"status": SKIPPED, "role": row.role, "patient": patient,
                "reason": "dropped" if row.dropped else "label photo (EBIW_BATCH_LABEL_PHOTOS"
                                                         "=drop)"}
    return {"status": STORED, "role": row.role, "patient": patient,
            "study_instance_uid": session.study_uid if session else None,
            "sop_instance_uid": row.sop_uid,
            "normalized_sop_instance_uid": row.normalized_sop_uid}


def write_report(report: ImportReport, target: Path) -> None:
    """Write the report durably (temporary file, fsync, rename)."""
    write_durably(target, json.dumps(report.as_json(), indent=2,
                                                 ensure_ascii=False).encode())
