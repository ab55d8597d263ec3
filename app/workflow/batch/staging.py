"""Staging: the photos and video clips a batch holds until their group is confirmed, their bytes
(and the pixel work done on arrival) durably on disk, ``<data dir>/batches/<batch id>/<upload
uuid>``, and their ``batch_item`` rows. Names on disk come only from UUIDs we checked."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import (
    Batch,
    BatchGroup,
    BatchItem,
    BatchStatus,
    GroupSource,
    ItemRole,
    ItemStatus,
    Photo,
    as_utc,
)
from app.db.session import Database
from app.durable import write_durably
from app.pipeline.decode import PreparedPhoto, UnreadablePhotoError, probe
from app.pipeline.identify import Barcode, read_label_barcodes
from app.pipeline.slipsheet import label_area
from app.pipeline.video import sniff_video
from app.pipeline.wristband import NoWristbandRuleMatched, Rule, WristbandId, parse_wristband
from app.settings import Settings
from app.workflow.batch.common import find_batch, is_clip, parse_uuid
from app.workflow.batch.grouping import ensure_group
from app.workflow.intake import (
    ColorResult,
    Conflict,
    Intake,
    InvalidRequest,
    PhotoWork,
    UnreadablePhoto,
    UnsupportedVideo,
    checked_clip,
)

STAGED_ORIGINAL, STAGED_PREPARED, STAGED_NORMALIZED = "", ".prepared.jpg", ".normalized.jpg"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


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


class Staging:
    """Photos held in batches: received, read for labels, staged, discarded. ``owner``: see
    :class:`app.workflow.batch.Batches`."""

    def __init__(self, db: Database, settings: Settings, intake: Intake,
                 rules: Sequence[Rule]) -> None:
        self.db = db
        self.settings = settings
        self.intake = intake
        self.rules = tuple(rules)
        self.root = settings.data_dir / "batches"

    def add_item(self, batch_id: str, upload_uuid: str, data: bytes, order: int, *,
                 owner: str | None) -> tuple[BatchItem, bool]:
        """Hold one photo in the batch; return (item, created).

        Guarantees: when this returns, the bytes are durably staged and the item committed;
        the same bytes under the same UUID return the first item with ``created=False``;
        other bytes, or a UUID already used outside this batch, raise :class:`Conflict`;
        unreadable input raises :class:`UnreadablePhoto` and holds nothing. A video clip
        (MP4, QuickTime) is held as a clinical item of its group, not read for labels; one
        the single upload would refuse raises the same error now (``UnreadableVideo``,
        ``UnsupportedVideo``, ``ClipTooLong``) and holds nothing. Nothing is stored in the
        archive or queued for delivery.
        """
        batch = find_batch(self.db, batch_id, owner)
        upload_uuid = parse_uuid(upload_uuid, "upload id")
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
            label_area=analysis.area, work=work, status=ItemStatus.HELD)
        try:
            with self.db.session() as db:
                db.add(row)
                db.flush()
                for reading in analysis.readings:
                    ensure_group(db, batch.id, reading, GroupSource.LABEL)
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
        the colour step for a clinical photo; check a clip as its upload would be."""
        if sniff_video(data[:12]) is not None:
            with checked_clip(data, self.settings) as checked:
                clip = checked.clip
                if checked.needs_reencode:
                    raise UnsupportedVideo("a batch takes clips DICOM stores as recorded (H.264 "
                                           "or HEVC in MP4/QuickTime); upload this one from "
                                           "the app, which has it re-encoded")
            return _Analysis(clip.media_type, clip.width, clip.height, clip.recorded, (), None,
                             ItemRole.CLINICAL, None)
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
        role = ItemRole.LABEL if area is not None and area >= self.settings.batch_label_min_area \
            else ItemRole.CLINICAL
        work = self.intake.process(data, prepared=prepared) if role == ItemRole.CLINICAL \
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

    def discard(self, batch_id: str, *, owner: str | None) -> int:
        """Forget the batch's held photos (their staged bytes are deleted); stored photos stay
        in their studies. Returns how many photos were discarded."""
        batch = find_batch(self.db, batch_id, owner)
        with self.db.session() as db:
            held = list(db.scalars(select(BatchItem.upload_uuid).where(
                BatchItem.batch_id == batch.id, BatchItem.status == ItemStatus.HELD)))
            db.execute(delete(BatchItem).where(BatchItem.batch_id == batch.id,
                                               BatchItem.status == ItemStatus.HELD))
            db.get(Batch, batch.id).status = BatchStatus.DISCARDED  # type: ignore[union-attr]
        for upload_uuid in held:
            self.unstage(batch.id, upload_uuid)
        return len(held)

    def purge_idle(self, idle: timedelta, *, now: datetime | None = None) -> dict[str, int]:
        """Discard every open batch with held photos and no activity (a photo arriving, a
        group created or confirmed) for ``idle``: held bytes must not linger on a node
        because nobody finished the review. Returns {batch id: photos discarded}; stored
        photos stay in their studies."""
        cutoff = (now or datetime.now(UTC)) - idle
        with self.db.session() as db:
            held = set(db.scalars(select(BatchItem.batch_id).join(Batch).where(
                Batch.status == BatchStatus.OPEN, BatchItem.status == ItemStatus.HELD)))
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
                                   "quality": color.quality,
                                   "normalized": color.jpeg is not None}
        write_durably(self._path(batch_id, upload_uuid, STAGED_ORIGINAL), data)
        return record

    def held(self, item: BatchItem) -> tuple[bytes, PhotoWork | None]:
        """A held photo's bytes and the pixel work staged with it (see :meth:`_staged_work`),
        for storing it; a clip's bytes and None."""
        data = self._path(item.batch_id, item.upload_uuid, STAGED_ORIGINAL).read_bytes()
        return data, None if is_clip(item) else self._staged_work(item, data)

    def _staged_work(self, item: BatchItem, data: bytes) -> PhotoWork | None:
        """The pixel work staged with the item, or None when it must be done now (the colour
        step did not run for a photo that is now clinical)."""
        record = item.work or {}
        if item.role == ItemRole.CLINICAL and not record.get("color_run"):
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
        if color is not None and item.role == ItemRole.CLINICAL:
            jpeg = self._path(item.batch_id, item.upload_uuid, STAGED_NORMALIZED).read_bytes() \
                if color["normalized"] else None
            result = ColorResult(report=color["report"], jpeg=jpeg, width=color["width"],
                                 height=color["height"],
                                 pixel_spacing_mm=color["pixel_spacing_mm"],
                                 derivation=color["derivation"],
                                 photo_pixel_spacing_mm=color.get(
                                     "photo_pixel_spacing_mm", color["pixel_spacing_mm"]),
                                 quality=color.get("quality"))
        return PhotoWork(prepared, result)

    def unstage(self, batch_id: str, upload_uuid: str) -> None:
        for suffix in (STAGED_ORIGINAL, STAGED_PREPARED, STAGED_NORMALIZED):
            self._path(batch_id, upload_uuid, suffix).unlink(missing_ok=True)
