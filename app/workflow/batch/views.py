"""Views of a batch as the review shows it: photos in capture order, patient groups, unsorted
photos, and the directory's patients as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.db.models import Batch, BatchGroup, BatchItem, CaptureSession, ItemStatus, as_utc
from app.gateways.patients import PatientRecord
from app.workflow.batch.common import GroupStatus
from app.workflow.intake import NotFound


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


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
        return [i for i in self.items if i.row.status == ItemStatus.HELD]

    def as_json(self) -> dict[str, Any]:
        g = self.row
        counts: dict[str, int] = {state: sum(1 for i in self.items if i.row.status == state)
                                  for state in ItemStatus}
        counts["dropped"] = sum(1 for i in self.items if i.row.dropped)
        s = self.session
        return {"id": g.id, "source": g.source,
                "identifier": {"mrn": g.mrn, "issuer": g.issuer or None,
                               "encounter": g.encounter},
                "lookup": g.lookup,
                "status": GroupStatus.CONFIRMED if g.session_id else GroupStatus.PENDING,
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
