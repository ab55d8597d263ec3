"""The outbox: deliveries to PACS destinations and EMR notifiers, with retries and dead letters.

:class:`Outbox` queues rows in the caller's transaction (the one that indexes an accepted
photo), so an acknowledged photo always has its deliveries queued. :class:`DeliveryWorker`
claims due rows, sends them and records the outcome:

- Claims are leases (``claim_token``, ``claimed_until``): due rows are picked by a SELECT
  (on PostgreSQL ``FOR UPDATE SKIP LOCKED``, so workers on several nodes skip each other's
  rows) and leased by an UPDATE whose WHERE re-checks that they are still due (on SQLite the
  one writer makes that UPDATE atomic). A crashed worker's rows are due again when its lease
  ends. Outcomes are recorded only under the claim's token.
- One claim is the due rows of one study for one destination (up to its batch size): one
  STOW-RS request or one association. An EMR notifier has one row per study, re-queued
  (``version`` + 1, pending again) whenever a photo is added; a notice sent for an older
  version leaves the row pending, so the EMR always ends with the current study.
- Transient failures are retried after a capped exponential backoff with full jitter; a
  permanent failure makes the row dead, with a reason free of PHI, until an admin retries it.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import random
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from app.db.models import (
    CaptureSession,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Instance,
    as_utc,
)
from app.db.session import Database, affected_rows
from app.gateways.archive import Archive
from app.gateways.archive.pacs import OutgoingInstance
from app.gateways.errors import GatewayError, PermanentError, TransientError
from app.gateways.registry import Destination, Registry, RetryPolicy
from app.workflow import audit

log = logging.getLogger(__name__)

IDLE_SECONDS = 0.25
ERROR_PAUSE_SECONDS = 5.0
_REASON_MAX = 200


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


# --- queueing (in the intake's transaction) ----------------------------------------------------


class Outbox:
    """Queues deliveries; never commits (the caller's transaction does)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def enqueue_photo(self, db: Session, session: CaptureSession, instance: Instance) -> None:
        """In ``db``'s transaction: one pending row for ``instance`` per PACS destination
        whose route takes the study, and the study's row of every EMR notifier created or
        re-queued (pending, version + 1, due now). Safe against concurrent accepts of the same
        study (ON CONFLICT), so it never makes the accept fail."""
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


# --- the worker --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedRow:
    id: int
    sop_uid: str
    version: int
    attempts: int


@dataclass(frozen=True)
class Claim:
    """Rows of one study for one destination, leased to one worker under ``token``."""

    token: str
    destination: str
    kind: str
    study_uid: str
    rows: tuple[ClaimedRow, ...]


class Outcome(StrEnum):
    """What recording one claimed row did, counted in the worker's log line: the row became
    ``sent`` or ``dead``, or ``failed`` (waits for a retry); or it was ``requeued`` meanwhile
    (left pending), or ``lost`` (another worker took over its lease)."""

    SENT = "sent"
    FAILED = "failed"
    DEAD = "dead"
    REQUEUED = "requeued"
    LOST = "lost"


def _due(now: datetime, names: Sequence[str]) -> Any:
    return and_(Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= now,
                or_(Delivery.claimed_until.is_(None), Delivery.claimed_until < now),
                Delivery.destination.in_(names))


def _reason(error: GatewayError) -> str:
    return (str(error) or type(error).__name__)[:_REASON_MAX]


class DeliveryWorker:
    """Sends what the outbox holds for this node's destinations and notifiers.

    Rows for a destination this node does not know stay pending (another node, or a later
    configuration, may deliver them). Thread-safe: several workers may share one registry and
    database, in one process or many.
    """

    def __init__(self, db: Database, archive: Archive, registry: Registry, *,
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        self.db = db
        self.archive = archive
        self.registry = registry
        self.uniform = uniform
        self.handled = 0  # rows this worker handled (sent, failed or dead)

    def claim(self) -> Claim | None:
        """Lease the due rows of the oldest due (destination, study), up to the destination's
        batch size (one row for a notifier); None when nothing is due. Losing a race for the
        rows to another worker is not "nothing due": the next due group is tried."""
        names = self.registry.names
        if not names:
            return None
        while True:
            now = utcnow()
            due = _due(now, names)
            token = uuid.uuid4().hex
            with self.db.session() as db:
                lead = db.execute(
                    select(Delivery.destination, Delivery.kind, Delivery.study_uid).where(due)
                    .order_by(Delivery.next_attempt_at, Delivery.id).limit(1)
                    .with_for_update(skip_locked=True)).first()
                if lead is None:
                    return None
                destination = self.registry.destination(lead.destination)
                batch = destination.batch_size if destination is not None else 1
                # Two statements, not UPDATE … IN (SELECT … LIMIT … SKIP LOCKED): PostgreSQL
                # may rescan such a subquery and then exceed the limit.
                ids = list(db.scalars(
                    select(Delivery.id)
                    .where(due, Delivery.destination == lead.destination,
                           Delivery.study_uid == lead.study_uid)
                    .order_by(Delivery.id).limit(batch).with_for_update(skip_locked=True)))
                lease = now + timedelta(seconds=self.registry.lease_seconds)
                rows = db.execute(
                    update(Delivery).where(Delivery.id.in_(ids), due)
                    .values(claim_token=token, claimed_until=lease)
                    .returning(Delivery.id, Delivery.sop_uid, Delivery.version,
                               Delivery.attempts)
                    .execution_options(synchronize_session=False)).all()
            if rows:
                return Claim(token, lead.destination, lead.kind, lead.study_uid,
                             tuple(ClaimedRow(*row) for row in sorted(rows)))

    def run_once(self) -> int:
        """Claim one batch, deliver it and record the outcomes; return how many rows were
        handled (0: nothing was due)."""
        claim = self.claim()
        if claim is None:
            return 0
        destination = self.registry.destination(claim.destination)
        if destination is not None:
            outcomes = self._deliver_pacs(destination, claim)
            policy = destination.retry
        else:
            outcomes = {claim.rows[0].id: self._notify(claim)}
            policy = self.registry.retry
        self._record(claim, outcomes, policy)
        self.handled += len(claim.rows)
        return len(claim.rows)

    def run(self, stop: threading.Event, idle_seconds: float = IDLE_SECONDS) -> None:
        """Deliver until ``stop`` is set; wait ``idle_seconds`` whenever nothing is due. An
        unexpected error (the database is down, say) is logged by type only (messages may hold
        PHI) and the loop goes on after a pause; the rows it held come back when their lease
        ends."""
        while not stop.is_set():
            try:
                handled = self.run_once()
            except Exception as exc:
                log.error("delivery worker: unexpected %s", type(exc).__name__)
                stop.wait(ERROR_PAUSE_SECONDS)
                continue
            if not handled:
                stop.wait(idle_seconds)

    def drain(self) -> int:
        """Deliver until nothing is due (rows waiting for a retry are left); return the number
        of rows handled."""
        total = 0
        while handled := self.run_once():
            total += handled
        return total

    # --- sending ---------------------------------------------------------------------------

    def _deliver_pacs(self, destination: Destination,
                      claim: Claim) -> dict[int, GatewayError | None]:
        """Read, check and morph the archived instances, then send them in one batch."""
        by_sop = {row.sop_uid: row.id for row in claim.rows}
        outcomes: dict[int, GatewayError | None] = {}
        with self.db.session() as db:
            instances = {i.sop_uid: i for i in db.scalars(
                select(Instance).where(Instance.sop_uid.in_(list(by_sop))))}
        outgoing: list[OutgoingInstance] = []
        for sop_uid, row_id in by_sop.items():
            try:
                outgoing.append(OutgoingInstance(
                    sop_uid, destination.morph.apply(self._archived(instances.get(sop_uid)))))
            except GatewayError as error:
                outcomes[row_id] = error
        if not outgoing:
            return outcomes
        try:
            sent = destination.pacs.store(claim.study_uid, outgoing)
        except GatewayError as error:
            sent = {o.sop_uid: error for o in outgoing}
        except Exception as exc:  # a bug or an unexpected library error: retry later
            log.error("delivery to %s: unexpected %s", destination.name, type(exc).__name__)
            sent = {o.sop_uid: TransientError(f"unexpected {type(exc).__name__}")
                    for o in outgoing}
        for item in outgoing:
            outcomes[by_sop[item.sop_uid]] = sent.get(
                item.sop_uid, TransientError("the PACS did not report this instance"))
        return outcomes

    def _archived(self, instance: Instance | None) -> bytes:
        """The archived bytes of an instance, checked against the index's SHA-256."""
        if instance is None:
            raise PermanentError("the instance is not in the archive index")
        try:
            data = self.archive.read(instance)
        except FileNotFoundError as exc:
            raise PermanentError("the archived file is missing") from exc
        except OSError as exc:
            raise TransientError("the archived file cannot be read") from exc
        if hashlib.sha256(data).hexdigest() != instance.sha256:
            raise PermanentError("the archived file does not match its index")
        return data

    def _notify(self, claim: Claim) -> GatewayError | None:
        """Call the EMR notifier for the study; its writes commit only when it succeeds."""
        notifier = self.registry.notifier(claim.destination)
        try:
            with self.db.session() as db:
                notifier.notify(db, claim.study_uid)
        except GatewayError as error:
            return error
        except Exception as exc:
            log.error("notification by %s: unexpected %s", notifier.name, type(exc).__name__)
            return TransientError(f"unexpected {type(exc).__name__}")
        return None

    # --- outcomes --------------------------------------------------------------------------

    def _record(self, claim: Claim, outcomes: dict[int, GatewayError | None],
                policy: RetryPolicy) -> None:
        """Record each row's outcome under the claim's token and release the lease.

        Sent or dead applies only if the row was not re-queued meanwhile (same version);
        otherwise it stays pending, due now. The rows that became sent, and those that became
        dead, are each one audit record (``delivery.*`` or ``notice.*``) in the same
        transaction. Transiently failed rows wait for one backoff
        drawn for the whole claim, so they stay one batch. A row whose lease was taken over by
        another worker is left to that worker.
        """
        now = utcnow()
        retry_at = now + timedelta(seconds=policy.delay(
            max(row.attempts for row in claim.rows) + 1, self.uniform))
        counts = dict.fromkeys(Outcome, 0)
        finished: dict[Outcome, list[ClaimedRow]] = {Outcome.SENT: [], Outcome.DEAD: []}
        with self.db.session() as db:
            for row in claim.rows:
                error = outcomes.get(row.id, TransientError("not attempted"))
                mine = and_(Delivery.id == row.id, Delivery.claim_token == claim.token)
                release: dict[str, Any] = dict(claim_token=None, claimed_until=None,
                                               updated_at=now)
                if error is None:
                    values = dict(status=DeliveryStatus.SENT, attempts=Delivery.attempts + 1,
                                  sent_at=now, last_error=None, **release)
                    outcome, where = Outcome.SENT, and_(mine, Delivery.version == row.version)
                elif isinstance(error, PermanentError):
                    values = dict(status=DeliveryStatus.DEAD, attempts=Delivery.attempts + 1,
                                  last_error=_reason(error), **release)
                    outcome, where = Outcome.DEAD, and_(mine, Delivery.version == row.version)
                else:
                    values = dict(attempts=Delivery.attempts + 1, last_error=_reason(error),
                                  next_attempt_at=retry_at, **release)
                    outcome, where = Outcome.FAILED, mine
                if affected_rows(db.execute(update(Delivery).where(where).values(**values)
                                            .execution_options(synchronize_session=False))):
                    counts[outcome] += 1
                    finished.get(outcome, []).append(row)
                elif affected_rows(db.execute(update(Delivery).where(mine).values(**release)
                                              .execution_options(synchronize_session=False))):
                    counts[Outcome.REQUEUED] += 1
                else:
                    counts[Outcome.LOST] += 1
            for status, rows in finished.items():
                if rows:
                    reasons = {_reason(e) for r in rows if (e := outcomes.get(r.id)) is not None}
                    audit.record_delivery(db, destination=claim.destination, kind=claim.kind,
                                          study_uid=claim.study_uid,
                                          sop_uids=[r.sop_uid for r in rows],
                                          sent=status == Outcome.SENT,
                                          reason="; ".join(sorted(reasons)) or None)
        log.info("delivery to %s: %s", claim.destination,
                 ", ".join(f"{n} {k}" for k, n in counts.items() if n))


class BackgroundDelivery:
    """Worker threads delivering in the background of a process (``ebiw worker``, or a web
    process with ``EBIW_DELIVERY_THREAD``). They are daemons, stopped at interpreter exit so
    a recycled web worker finishes its batch instead of leaving it to the lease."""

    def __init__(self, db: Database, archive: Archive, registry: Registry,
                 count: int = 1) -> None:
        self._stop = threading.Event()
        self._workers = [DeliveryWorker(db, archive, registry) for _ in range(count)]
        self._threads = [threading.Thread(target=worker.run, args=(self._stop,),
                                          name=f"ebiw-delivery-{number}", daemon=True)
                         for number, worker in enumerate(self._workers)]

    @property
    def handled(self) -> int:
        """Rows handled so far by these threads."""
        return sum(worker.handled for worker in self._workers)

    def start(self) -> BackgroundDelivery:
        """Start the threads; they stop by themselves when the interpreter exits."""
        for thread in self._threads:
            thread.start()
        atexit.register(self.stop)
        log.info("delivery: %d worker threads started", len(self._threads))
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask every thread to stop after its current batch and wait up to ``timeout`` s."""
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from a signal handler, say)."""
        while not self._stop.wait(1.0):
            pass


def drain(db: Database, archive: Archive, registry: Registry, threads: int = 1) -> int:
    """Deliver with ``threads`` workers until nothing is due; return the rows handled."""
    workers = [DeliveryWorker(db, archive, registry) for _ in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(DeliveryWorker.drain, workers))


# --- status and admin ---------------------------------------------------------------------------


class ShownState(StrEnum):
    """A delivery as users and admins see it, in display order: ``queued``, ``failed``
    (pending after a transient failure), ``sent`` or ``dead``."""

    QUEUED = "queued"
    FAILED = "failed"
    SENT = "sent"
    DEAD = "dead"


STATES = tuple(ShownState)
"""The shown states in display order (a tuple: ``in`` also takes any string)."""


def _public_state(status: str, has_error: bool) -> ShownState:
    """The shown state of a row with this ``status``; pending is failed after an error."""
    if status == DeliveryStatus.PENDING:
        return ShownState.FAILED if has_error else ShownState.QUEUED
    return ShownState(status)


@dataclass(frozen=True)
class DeliveryState:
    """What users and admins see of one row (no PHI): ``state`` is queued, sent, failed
    (pending after a transient failure; ``reason`` says why) or dead (``reason``)."""

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
                   _public_state(row.status, bool(row.last_error)),
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
    return {ShownState.QUEUED: and_(pending, Delivery.last_error.is_(None)),
            ShownState.FAILED: and_(pending, Delivery.last_error.is_not(None)),
            ShownState.SENT: Delivery.status == DeliveryStatus.SENT,
            ShownState.DEAD: Delivery.status == DeliveryStatus.DEAD}[ShownState(state)]


def study_deliveries(db: Database, study_uid: str) -> list[DeliveryState]:
    """Every delivery of a study (its instances' and its notifications'), oldest first."""
    with db.session() as session:
        return [DeliveryState.of(row) for row in session.scalars(
            select(Delivery).where(Delivery.study_uid == study_uid).order_by(Delivery.id))]


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
    """Per destination, how many deliveries are queued, failed, sent and dead."""
    failed = Delivery.last_error.is_not(None)
    query = (select(Delivery.destination, Delivery.status, failed, func.count())
             .group_by(Delivery.destination, Delivery.status, failed))
    counts: dict[str, dict[str, int]] = {}
    with db.session() as session:
        for name, status, has_error, number in session.execute(query):
            by_state = counts.setdefault(name, dict.fromkeys(STATES, 0))
            by_state[_public_state(status, has_error)] += number
    return counts


class NotRetryable(Exception):
    """The delivery was already sent; there is nothing to retry."""


def retry_delivery(db: Database, delivery_id: int) -> DeliveryState | None:
    """Make a dead or failed delivery due now with a fresh backoff; None when it does not
    exist, :class:`NotRetryable` when it was already sent. A queued one is left as it is."""
    now = utcnow()
    with db.session() as session:
        row = session.get(Delivery, delivery_id, with_for_update=True)
        if row is None:
            return None
        if row.status == DeliveryStatus.SENT:
            raise NotRetryable("this delivery was already sent")
        if row.status == DeliveryStatus.DEAD or row.last_error:
            row.status, row.attempts, row.last_error = DeliveryStatus.PENDING, 0, None
            row.next_attempt_at, row.updated_at = now, now
        return DeliveryState.of(row)


def retry_dead(db: Database, destination: str | None = None) -> int:
    """Make every dead delivery (of one destination, if given) due now; return how many."""
    now = utcnow()
    query = update(Delivery).where(Delivery.status == DeliveryStatus.DEAD)
    if destination is not None:
        query = query.where(Delivery.destination == destination)
    with db.session() as session:
        return affected_rows(session.execute(query.values(
            status=DeliveryStatus.PENDING, attempts=0, last_error=None, next_attempt_at=now,
            updated_at=now, claim_token=None, claimed_until=None)
            .execution_options(synchronize_session=False)))
