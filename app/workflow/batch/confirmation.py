"""Confirmation: a reviewed group becomes one capture session (one study) through
:class:`Intake`, and its held photos are stored there, so DICOM, UIDs and delivery follow the
one path of single uploads."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from app.db.models import BatchGroup, BatchItem, GroupSource, ItemRole, ItemStatus
from app.db.session import Database
from app.pipeline.dicom import values
from app.settings import Settings
from app.workflow.batch.common import NAMESPACE, find_batch, is_clip, parse_uuid
from app.workflow.batch.grouping import Grouping
from app.workflow.batch.staging import Staging
from app.workflow.batch.views import GroupView
from app.workflow.identification import LookupStatus
from app.workflow.intake import (
    BodySiteRequired,
    Conflict,
    IdentificationMethod,
    Intake,
    InvalidRequest,
    SessionRequest,
    refusing_invalid_values,
)

STORE_THREADS = 3
"""Photos of one confirmed group stored at once (their fsyncs overlap; the pixel work was
done when they arrived)."""
_CONFIRM_FIELDS = ("encounter", "body_site", "laterality", "description", "consent")
GROUP_CLIP_NEEDS_SITE = ("this group holds a video clip, which needs a body site (DICOM "
                         "requires the anatomic region of a video): choose the body site, or "
                         "drop the clip")


class Confirmation:
    """Confirming groups into capture sessions. ``owner``: see
    :class:`app.workflow.batch.Batches`."""

    def __init__(self, db: Database, settings: Settings, intake: Intake, staging: Staging,
                 grouping: Grouping) -> None:
        self.db = db
        self.settings = settings
        self.intake = intake
        self.staging = staging
        self.grouping = grouping

    def confirm(self, batch_id: str, group_id: str, body: Any, *, user: str,
                owner: str | None) -> GroupView:
        """Turn the group into a capture session and store its held photos.

        ``body``: ``patient`` (``{"mrn", "issuer"}``: one of the group's candidates, or a
        patient the directories find exactly once; optional when the directory matched
        exactly one), and session fields (``encounter``, ``body_site``, ``laterality``,
        ``description``, ``consent``). Guarantees: the session's id is derived from the batch
        and group, so confirming again (after new photos were moved in, or after an
        interruption) adds to the same study and stores nothing twice; a held photo whose label
        names another patient is refused (:class:`Conflict`, nothing stored), and so is a
        group holding a clip without a body site (:class:`BodySiteRequired`: given in
        ``body``, or the session's when the group was confirmed before); dropped photos and,
        with ``EBIW_BATCH_LABEL_PHOTOS=drop``, label photos are skipped and their staged bytes
        deleted; each stored photo's staged bytes are deleted once it is marked stored.
        """
        batch = find_batch(self.db, batch_id, owner)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        view = self.grouping.view(batch.id, owner=owner)
        group = view.group(parse_uuid(group_id, "group id"))
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
        site = request.body_site if group.row.session_id is None else self.intake.get_session(
            group.row.session_id, photos=False).body_site
        if site is None and any(is_clip(item.row) and not item.row.dropped
                                for item in group.held):
            raise BodySiteRequired(GROUP_CLIP_NEEDS_SITE)
        session, _ = self.intake.open_session(request, user)
        with self.db.session() as db:
            row = db.get(BatchGroup, group.row.id)
            assert row is not None
            if row.session_id is None:
                row.session_id, row.confirmed_by = session.id, user
                row.confirmed_at = datetime.now(UTC)
        outcomes = self._store_all([item.row for item in group.held], session.id)
        with self.db.session() as db:  # one commit for the group; a crash before it is
            for upload_uuid, sop_uid, normalized in outcomes:  # mended by confirming again
                item_row = db.get(BatchItem, upload_uuid)
                assert item_row is not None
                item_row.status = ItemStatus.STORED if sop_uid else ItemStatus.SKIPPED
                item_row.group_id, item_row.pinned = group.row.id, True
                item_row.sop_uid, item_row.normalized_sop_uid = sop_uid, normalized
        for item in group.held:
            self.staging.unstage(item.row.batch_id, item.row.upload_uuid)
        self.intake.complete(session.id)
        return self.grouping.view(batch.id, owner=owner, lookup=False).group(group.row.id)

    def _chosen(self, group: BatchGroup, wanted: Any) -> tuple[dict[str, Any], str,
                                                                dict[str, Any]]:
        """The patient the group is confirmed for, the identification method and evidence."""
        lookup = group.lookup or {"status": LookupStatus.NOT_FOUND, "patients": []}
        candidates = lookup.get("patients") or []
        method = IdentificationMethod.WRISTBAND if group.source == GroupSource.LABEL \
            else IdentificationMethod.MANUAL
        if wanted is None:
            if len(candidates) == 1:
                chosen = candidates[0]
            elif (group.source == GroupSource.GIVEN
                  and lookup.get("status") == LookupStatus.NOT_FOUND):
                chosen = {"mrn": group.mrn, "issuer": group.issuer}  # as the command gave it
            else:
                raise InvalidRequest("choose the patient: the label matched "
                                     f"{len(candidates)} patients")
        else:
            if not isinstance(wanted, dict):
                raise InvalidRequest("patient must be an object with mrn and issuer")
            with refusing_invalid_values():
                key = (values.identifier(wanted.get("mrn"), "patient.mrn", required=True),
                       values.identifier(wanted.get("issuer"), "patient.issuer"))
            chosen = next((c for c in candidates if (c["mrn"], c["issuer"]) == key), None)
            if chosen is None:
                answer = self.grouping.ask_directories(*key, GroupSource.MANUAL)
                if answer["status"] == LookupStatus.UNAVAILABLE:
                    raise Conflict("the patient directory is unavailable: try again later")
                if answer["status"] != LookupStatus.MATCHED:
                    raise InvalidRequest("the directory does not know exactly one patient "
                                         "with this identifier")
                chosen, method = answer["patients"][0], IdentificationMethod.MANUAL
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
        """Store a confirmed group's held photos and clips through the intake (idempotent), or
        skip them (dropped; label photos with ``EBIW_BATCH_LABEL_PHOTOS=drop``). Returns
        (upload UUID, SOP Instance UID or None when skipped, normalized SOP Instance UID) per
        item.

        Instance numbers are taken first, in the group's capture order; then the photos are
        stored `STORE_THREADS` at a time, so that one photo's fsyncs overlap another's work.
        """
        kept = [item for item in items if not (
            item.dropped or (item.role == ItemRole.LABEL
                             and self.settings.batch_label_photos == "drop"))]
        numbers = dict(zip((item.upload_uuid for item in kept),
                           self.intake.reserve_instance_numbers(session_id, len(kept)),
                           strict=True)) if kept else {}

        def store(item: BatchItem) -> tuple[str, str | None, str | None]:
            if item.upload_uuid not in numbers:
                return item.upload_uuid, None, None
            data, work = self.staging.held(item)
            if is_clip(item):
                photo, _ = self.intake.accept_video(session_id, item.upload_uuid, data,
                                                    number=numbers[item.upload_uuid])
                return item.upload_uuid, photo.sop_uid, None
            photo, _ = self.intake.accept_photo(
                session_id, item.upload_uuid, data, work=work,
                label=item.role == ItemRole.LABEL, burned_in=bool(item.identity),
                number=numbers[item.upload_uuid])
            return item.upload_uuid, photo.sop_uid, photo.normalized_sop_uid

        with ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="batch-store") as pool:
            return list(pool.map(store, items))
