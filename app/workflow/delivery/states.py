"""What users and admins see of the outbox, and the admin's retries.

:class:`DeliveryState` is one row as shown (no PHI): ``queued``, ``failed`` (pending after a
transient failure, with the reason), ``sent`` or ``dead`` (with the reason); the queries here
read rows and never lease them. A row whose instance was rejected before it was sent is
``cancelled`` (with the reason). A retry makes a dead or failed row pending and due now with a
fresh backoff (``attempts`` 0): it shows ``queued`` again, keeping the reason of its last
failure until the next attempt replaces it; a sent row is never retried (:class:`NotRetryable`),
so a retry cannot send an instance twice, nor is a cancelled one (its instance is rejected),
and a queued one is left as it is. Retrying every
dead row also releases any lease it held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, func, select, update

from app.db.models import Delivery, DeliveryStatus, as_utc
from app.db.session import Database, affected_rows
from app.workflow.delivery.outbox import utcnow


class ShownState(StrEnum):
    """A delivery as users and admins see it, in display order: ``queued``, ``failed``
    (pending after a transient failure), ``sent``, ``dead`` or ``cancelled`` (its instance
    was rejected before it was sent)."""

    QUEUED = "queued"
    FAILED = "failed"
    SENT = "sent"
    DEAD = "dead"
    CANCELLED = "cancelled"


STATES = tuple(ShownState)
"""The shown states in display order (a tuple: ``in`` also takes any string)."""


def _public_state(status: str, failed: bool) -> ShownState:
    """The shown state of a row with this ``status``; pending is failed after a failed
    attempt (see :data:`_FAILED`)."""
    if status == DeliveryStatus.PENDING:
        return ShownState.FAILED if failed else ShownState.QUEUED
    return ShownState(status)


_FAILED = and_(Delivery.last_error.is_not(None), Delivery.attempts > 0)
"""Whether a pending row's last attempt failed: it has an error and attempts since it was
queued (a retried row keeps the error of its last failure, with ``attempts`` back to 0)."""


@dataclass(frozen=True)
class DeliveryState:
    """What users and admins see of one row (no PHI): ``state`` is queued (``reason``: the
    last failure before an admin's retry, if any), sent, failed (pending after a transient
    failure; ``reason`` says why), dead (``reason``) or cancelled (``reason``)."""

    id: int
    destination: str
    kind: str
    study_uid: str
    sop_uid: str
    state: ShownState
    reason: str | None
    attempts: int
    next_attempt_at: datetime | None
    updated_at: datetime | None
    sent_at: datetime | None

    @classmethod
    def of(cls, row: Delivery) -> DeliveryState:
        return cls(row.id, row.destination, row.kind, row.study_uid, row.sop_uid,
                   _public_state(row.status, bool(row.last_error) and row.attempts > 0),
                   row.last_error, row.attempts,
                   as_utc(row.next_attempt_at) if row.status == DeliveryStatus.PENDING else None,
                   as_utc(row.updated_at), as_utc(row.sent_at))

    def status_json(self) -> dict[str, Any]:
        """The state as the capture API shows it beside a photo or a session."""
        iso = {k: v.isoformat() if v else None for k, v in (
            ("next_attempt_at", self.next_attempt_at), ("updated_at", self.updated_at),
            ("sent_at", self.sent_at))}
        return {"destination": self.destination, "state": self.state, "reason": self.reason,
                "attempts": self.attempts, **iso}

    def as_json(self) -> dict[str, Any]:
        """The full row as the admin API shows it."""
        return {"id": self.id, "kind": self.kind, "study_instance_uid": self.study_uid,
                "sop_instance_uid": self.sop_uid or None, **self.status_json()}


def _state_filter(state: str) -> Any:
    """The WHERE clause of the rows shown in ``state`` (one of :data:`STATES`)."""
    pending = Delivery.status == DeliveryStatus.PENDING
    return {ShownState.QUEUED: and_(pending, ~_FAILED),
            ShownState.FAILED: and_(pending, _FAILED),
            ShownState.SENT: Delivery.status == DeliveryStatus.SENT,
            ShownState.DEAD: Delivery.status == DeliveryStatus.DEAD,
            ShownState.CANCELLED: Delivery.status == DeliveryStatus.CANCELLED,
            }[ShownState(state)]


def study_deliveries(db: Database, study_uid: str) -> list[DeliveryState]:
    """Every delivery of a study (its instances' and its notifications'), oldest first."""
    with db.session() as session:
        return [DeliveryState.of(row) for row in session.scalars(
            select(Delivery).where(Delivery.study_uid == study_uid).order_by(Delivery.id))]


def instance_deliveries(db: Database, destinations: Sequence[str], study_uid: str,
                        sop_uids: Sequence[str]) -> list[DeliveryState]:
    """The deliveries of the instances ``sop_uids`` of a study to ``destinations``, oldest
    first: looked up by the outbox's unique key, so the rows read do not grow with the
    study."""
    if not destinations or not sop_uids:
        return []
    with db.session() as session:
        return [DeliveryState.of(row) for row in session.scalars(
            select(Delivery).where(Delivery.destination.in_(destinations),
                                   Delivery.study_uid == study_uid,
                                   Delivery.sop_uid.in_(sop_uids)).order_by(Delivery.id))]


def deliveries_by_study(db: Database,
                        study_uids: Sequence[str]) -> dict[str, list[DeliveryState]]:
    """Every delivery of each study in ``study_uids``, oldest first, in one query; a study
    with none is absent from the answer."""
    found: dict[str, list[DeliveryState]] = {}
    if not study_uids:
        return found
    with db.session() as session:
        for row in session.scalars(select(Delivery).where(Delivery.study_uid.in_(study_uids))
                                   .order_by(Delivery.id)):
            found.setdefault(row.study_uid, []).append(DeliveryState.of(row))
    return found


def list_deliveries(db: Database, state: str | None = None, destination: str | None = None,
                    limit: int = 200) -> list[DeliveryState]:
    """The most recently changed deliveries, optionally of one state and/or destination."""
    query = select(Delivery).order_by(Delivery.updated_at.desc(), Delivery.id.desc())
    if state is not None:
        query = query.where(_state_filter(state))
    if destination is not None:
        query = query.where(Delivery.destination == destination)
    with db.session() as session:
        return [DeliveryState.of(row) for row in session.scalars(query.limit(limit))]


def delivery_counts(db: Database) -> dict[str, dict[str, int]]:
    """Per destination, how many deliveries are queued, failed, sent, dead and cancelled."""
    query = (select(Delivery.destination, Delivery.status, _FAILED, func.count())
             .group_by(Delivery.destination, Delivery.status, _FAILED))
    counts: dict[str, dict[str, int]] = {}
    with db.session() as session:
        for name, status, failed, number in session.execute(query):
            by_state = counts.setdefault(name, dict.fromkeys(STATES, 0))
            by_state[_public_state(status, bool(failed))] += number
    return counts


class NotRetryable(Exception):
    """The delivery was already sent, or cancelled; there is nothing to retry. ``state`` says
    which (:attr:`ShownState.SENT` or :attr:`ShownState.CANCELLED`)."""

    def __init__(self, state: ShownState, message: str) -> None:
        super().__init__(message)
        self.state = state


def retry_delivery(db: Database, delivery_id: int) -> DeliveryState | None:
    """Make a dead or failed delivery due now with a fresh backoff, keeping the reason of its
    last failure; None when it does not exist, :class:`NotRetryable` when it was already sent
    or was cancelled (its instance is rejected). A queued one is left as it is."""
    now = utcnow()
    with db.session() as session:
        row = session.get(Delivery, delivery_id, with_for_update=True)
        if row is None:
            return None
        if row.status == DeliveryStatus.SENT:
            raise NotRetryable(ShownState.SENT, "this delivery was already sent")
        if row.status == DeliveryStatus.CANCELLED:
            raise NotRetryable(ShownState.CANCELLED,
                               "this delivery was cancelled: its instance was rejected")
        if DeliveryState.of(row).state in (ShownState.DEAD, ShownState.FAILED):
            row.status, row.attempts = DeliveryStatus.PENDING, 0
            row.next_attempt_at, row.updated_at = now, now
        return DeliveryState.of(row)


def retry_dead(db: Database, destination: str | None = None) -> int:
    """Make every dead delivery (of one destination, if given) due now, keeping the reason of
    its last failure; return how many."""
    now = utcnow()
    query = update(Delivery).where(Delivery.status == DeliveryStatus.DEAD)
    if destination is not None:
        query = query.where(Delivery.destination == destination)
    with db.session() as session:
        return affected_rows(session.execute(query.values(
            status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now,
            updated_at=now, claim_token=None, claimed_until=None)
            .execution_options(synchronize_session=False)))
