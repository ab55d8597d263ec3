"""The worker: claims due outbox rows, hands each claim to the sender of its kind and records
the outcomes, with retries and dead letters.

:class:`DeliveryWorker` claims due rows, sends them (:mod:`.pacs` for a PACS destination,
:mod:`.emr` for an EMR notifier) and records the outcome:

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
- The worker's own jobs (``jobs``: re-encoding staged clips, the rows of
  :data:`~.outbox.REENCODE_QUEUE`) are claimed, leased (for the job's own lease), retried
  and recorded the same way, one row per claim, with the registry's retry policy; only a
  worker given the job claims its rows.

:class:`BackgroundDelivery` runs workers in threads of a process; :func:`drain` delivers until
nothing is due.
"""

from __future__ import annotations

import atexit
import logging
import random
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, or_, select, update

from app.db.models import Delivery, DeliveryStatus
from app.db.session import Database, affected_rows
from app.gateways.archive import Archive
from app.gateways.errors import GatewayError, PermanentError, TransientError
from app.gateways.registry import Registry, RetryPolicy
from app.workflow import audit
from app.workflow.delivery import emr, pacs
from app.workflow.delivery.claims import Claim, ClaimedRow, Job, Results
from app.workflow.delivery.outbox import utcnow

log = logging.getLogger(__name__)

IDLE_SECONDS = 0.25
ERROR_PAUSE_SECONDS = 5.0
_REASON_MAX = 200


class Outcome(StrEnum):
    """What recording one claimed row did, counted in the worker's log line: the row became
    ``sent`` or ``dead``, or ``failed`` (waits for a retry); or it was ``requeued`` meanwhile
    (left pending) or cancelled meanwhile (left cancelled), or ``lost`` (another worker took
    over its lease)."""

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
    configuration, may deliver them), and so do the rows of a job (``jobs``, by queue name)
    this worker was not given. Thread-safe: several workers may share one registry and
    database, in one process or many.
    """

    def __init__(self, db: Database, archive: Archive, registry: Registry, *,
                 uniform: Callable[[float, float], float] = random.uniform,
                 jobs: Mapping[str, Job] | None = None) -> None:
        self.db = db
        self.archive = archive
        self.registry = registry
        self.uniform = uniform
        self.jobs = dict(jobs or {})
        self.handled = 0  # rows this worker handled (sent, failed or dead)

    def claim(self) -> Claim | None:
        """Lease the due rows of the oldest due (destination, study), up to the destination's
        batch size (one row for a notifier); None when nothing is due. Losing a race for the
        rows to another worker is not "nothing due": the next due group is tried."""
        names = (*self.registry.names, *self.jobs)
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
                job = self.jobs.get(lead.destination)
                lease = now + timedelta(seconds=job.lease_seconds if job is not None
                                        else self.registry.lease_seconds)
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
        if destination is not None:  # a PACS destination, else a job or an EMR notifier
            outcomes = pacs.deliver(self.db, self.archive, destination, claim)
            policy = destination.retry
        elif claim.destination in self.jobs:
            outcomes = self.jobs[claim.destination].run(claim)
            policy = self.registry.retry
        else:
            notifier = self.registry.notifier(claim.destination)
            outcomes = {claim.rows[0].id: emr.notify(self.db, notifier, claim.study_uid)}
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

    # --- outcomes --------------------------------------------------------------------------

    def _record(self, claim: Claim, outcomes: Results, policy: RetryPolicy) -> None:
        """Record each row's outcome under the claim's token and release the lease.

        Sent or dead applies only if the row was not re-queued meanwhile (same version);
        otherwise it stays pending, due now. A row cancelled meanwhile (its instance was
        rejected) stays cancelled unless it was sent: then it is recorded sent. The rows that
        became sent, and those that became dead, are each one audit record (``delivery.*`` or
        ``notice.*``) in the same transaction. Transiently failed rows wait for one backoff
        drawn for the whole claim, so they stay one batch. A row whose lease was taken over by
        another worker is left to that worker.
        """
        now = utcnow()
        retry_at = now + timedelta(seconds=policy.delay(
            max(row.attempts for row in claim.rows) + 1, self.uniform))
        counts = dict.fromkeys(Outcome, 0)
        pending = Delivery.status == DeliveryStatus.PENDING
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
                    outcome, where = Outcome.DEAD, and_(mine, pending,
                                                        Delivery.version == row.version)
                else:
                    values = dict(attempts=Delivery.attempts + 1, last_error=_reason(error),
                                  next_attempt_at=retry_at, **release)
                    outcome, where = Outcome.FAILED, and_(mine, pending)
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
                 count: int = 1, jobs: Mapping[str, Job] | None = None) -> None:
        self._stop = threading.Event()
        self._workers = [DeliveryWorker(db, archive, registry, jobs=jobs)
                         for _ in range(count)]
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


def drain(db: Database, archive: Archive, registry: Registry, threads: int = 1,
          jobs: Mapping[str, Job] | None = None) -> int:
    """Deliver (and do ``jobs``) with ``threads`` workers until nothing is due; return the
    rows handled."""
    workers = [DeliveryWorker(db, archive, registry, jobs=jobs) for _ in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(DeliveryWorker.drain, workers))
