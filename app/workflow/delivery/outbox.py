"""The outbox: deliveries queued in the transaction that accepts a photo.

:class:`Outbox` queues rows in the caller's transaction (the one that indexes an accepted
photo), so an acknowledged photo always has its deliveries queued: one pending row per
instance for each PACS destination whose route takes the study, and one row per study for
each EMR notifier, re-queued (``version`` + 1, pending again, due now) whenever a photo is
added. It never commits, and it never makes the accept fail on a concurrent accept of the
same study (ON CONFLICT). A correction that rejects instances cancels their PACS rows not sent
yet in its own transaction (:meth:`Outbox.cancel`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db.models import CaptureSession, Delivery, DeliveryKind, DeliveryStatus, Instance
from app.db.session import affected_rows
from app.gateways.registry import Registry

REENCODE_QUEUE = "@reencode"
"""The outbox "destination" of clips staged for re-encoding: a name no configured destination
can have (``@`` is not allowed in one), served by the worker's own job
(``DeliveryWorker(jobs=...)``)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def _insert(db: Session) -> Callable[..., Any]:
    """The INSERT of the session's dialect that has ON CONFLICT (PostgreSQL, SQLite)."""
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert
        return postgresql_insert
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert
        return sqlite_insert
    raise RuntimeError(f"the outbox supports PostgreSQL and SQLite, not {dialect}")


class Outbox:
    """Queues deliveries; never commits (the caller's transaction does)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def enqueue_photo(self, db: Session, session: CaptureSession, instance: Instance) -> None:
        """In ``db``'s transaction: one pending row for ``instance`` per PACS destination
        whose route takes the study, and the study's row of every EMR notifier created or
        re-queued (pending, version + 1, due now). Safe against concurrent accepts of the same
        study (ON CONFLICT), so it never makes the accept fail. Nothing for a session whose
        patient is not verified: ``Intake.verify_patient`` queues its instances once it is."""
        if not session.patient_verified:
            return
        now = utcnow()
        insert = _insert(db)
        key = ["destination", "study_uid", "sop_uid"]
        pending = DeliveryStatus.PENDING
        pacs_rows = [dict(destination=d.name, kind=DeliveryKind.PACS, study_uid=instance.study_uid,
                          sop_uid=instance.sop_uid, status=pending, version=1, attempts=0,
                          next_attempt_at=now, created_at=now, updated_at=now)
                     for d in self.registry.routes(session)]
        if pacs_rows:
            db.execute(insert(Delivery).values(pacs_rows).on_conflict_do_nothing(
                index_elements=key))
        for notifier in self.registry.notifiers:
            statement = insert(Delivery).values(
                destination=notifier.name, kind=DeliveryKind.EMR, study_uid=instance.study_uid,
                sop_uid="",
                status=pending, version=1, attempts=0, next_attempt_at=now, created_at=now,
                updated_at=now)
            db.execute(statement.on_conflict_do_update(index_elements=key, set_={
                "status": pending, "version": Delivery.version + 1, "attempts": 0,
                "next_attempt_at": now, "last_error": None, "updated_at": now}))

    @staticmethod
    def cancel(db: Session, sop_uids: Sequence[str], reason: str) -> int:
        """In ``db``'s transaction: make every PACS row of ``sop_uids`` not sent yet
        (pending, or dead) ``cancelled`` with ``reason`` (free of PHI); return how many.

        A worker holding one of them under a lease cannot send it any more once this commits
        (:func:`app.workflow.delivery.pacs.deliver` skips rejected instances); if it sent it
        before, its ``sent`` outcome is recorded over the cancellation (what the PACS holds
        wins), and the rejection note does the rest."""
        if not sop_uids:
            return 0
        now = utcnow()
        return affected_rows(db.execute(
            update(Delivery)
            .where(Delivery.kind == DeliveryKind.PACS, Delivery.sop_uid.in_(sop_uids),
                   Delivery.status.in_((DeliveryStatus.PENDING, DeliveryStatus.DEAD)))
            .values(status=DeliveryStatus.CANCELLED, last_error=reason, updated_at=now)
            .execution_options(synchronize_session=False)))

    def enqueue_reencode(self, db: Session, study_uid: str, sop_uid: str) -> None:
        """In ``db``'s transaction: the job that re-encodes the clip staged to become
        ``sop_uid`` (a pending ``video`` row of :data:`REENCODE_QUEUE`, due now)."""
        now = utcnow()
        db.add(Delivery(destination=REENCODE_QUEUE, kind=DeliveryKind.VIDEO,
                        study_uid=study_uid, sop_uid=sop_uid, status=DeliveryStatus.PENDING,
                        version=1, attempts=0, next_attempt_at=now, created_at=now,
                        updated_at=now))
