"""Audit trail of access to PHI: one append-only, hash-chained row per event (who, what, when,
where, outcome), its verifier, search, FHIR AuditEvent export and syslog forwarding.

Entities are short typed references (``patient:<issuer>|<id>``, ``study:<uid>``,
``instance:<uid>``, ``query:<name>``, …; see ``app.pipeline.audit``), so an export can name what
was touched without this table copying clinical content. There is no function to change or
delete an event.

Appends are serialized by the chain head row (``audit_chain_head``): each append first updates
that row (seq + 1), which takes its row lock on PostgreSQL and the write lock on SQLite, and
holds it until the caller's transaction ends. So records get consecutive ``seq`` values and each
names its predecessor's hash, whatever the number of threads, processes or nodes.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, cast, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.db.models import (
    AuditChainHead,
    AuditEvent,
    AuditForward,
    CaptureSession,
    DeliveryKind,
    as_utc,
)
from app.db.session import Database, affected_rows
from app.gateways.errors import GatewayError
from app.gateways.syslog import SyslogSender, SyslogTarget
from app.pipeline.audit import (
    DENIED,
    ERROR,
    FAILED,
    GENESIS,
    OUTCOMES,
    SUCCESS,
    AuditFacts,
    audit_event_json,
    bundle_json,
    chain_hash,
    instance_ref,
    is_known_action,
    patient_ref,
    study_ref,
    syslog_message,
)
from app.settings import Settings

__all__ = ["DENIED", "ERROR", "FAILED", "SUCCESS", "instance_ref", "patient_ref", "study_ref"]

log = logging.getLogger(__name__)

APPLICATION = "ebiw-capture"
DELIVERY_ACTOR = "ebiw-delivery"
MAX_PAGE = 500


def outcome_of(status: int) -> str:
    """The outcome recorded for an HTTP status code."""
    if status < 400:
        return SUCCESS
    if status in (401, 403):
        return DENIED
    return FAILED if status < 500 else ERROR


def default_node() -> str:
    """This machine's name, for records whose caller names no node."""
    return socket.gethostname()[:64]


def facts_of(row: AuditEvent) -> AuditFacts:
    """The stored record as the pure layer sees it."""
    return AuditFacts(seq=row.seq, recorded_at=as_utc(row.recorded_at), actor=row.actor,
                      role=row.role, client=row.client, node=row.node, action=row.action,
                      entities=tuple(row.entities or ()), outcome=row.outcome,
                      detail=dict(row.detail or {}))


# --- appending --------------------------------------------------------------------------------


def _insert(db: Session, model: type[Any]) -> Any:
    """An INSERT with ON CONFLICT for the session's dialect (PostgreSQL or SQLite)."""
    if db.get_bind().dialect.name == "postgresql":
        return postgresql_insert(model)
    return sqlite_insert(model)


def _take_next(db: Session) -> tuple[int, str]:
    """Lock the chain head and advance it: (this record's seq, the previous record's hash)."""
    advance = (update(AuditChainHead).where(AuditChainHead.id == 1)
               .values(seq=AuditChainHead.seq + 1)
               .returning(AuditChainHead.seq, AuditChainHead.hash))
    row = db.execute(advance).first()
    if row is None:  # the first record ever: create the head (once), then take it
        db.execute(_insert(db, AuditChainHead).values(id=1, seq=0, hash=GENESIS)
                   .on_conflict_do_nothing(index_elements=["id"]))
        row = db.execute(advance).one()
    return row.seq, row.hash


def record(db: Session, actor: str, action: str, *entities: str, outcome: str,
           role: str | None = None, client: str | None = None,
           detail: Mapping[str, Any] | None = None, node: str | None = None) -> AuditEvent:
    """Append one event in the caller's transaction and return it (flushed, not committed).

    Guarantees: the row is only inserted, never updated; ``entities`` keep their order; the
    record follows the chain head at commit time (the head stays locked until the caller's
    transaction ends, so keep that transaction short). Raises ValueError for an unknown
    outcome or an action the catalogue cannot code.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    if not is_known_action(action):
        raise ValueError(f"unknown audit action {action!r}")
    seq, prev = _take_next(db)
    facts = AuditFacts(seq=seq, recorded_at=datetime.now(UTC), actor=actor[:128], role=role,
                       client=(client or "")[:64] or None, node=(node or default_node())[:64],
                       action=action[:64], entities=tuple(entities), outcome=outcome,
                       detail=dict(detail or {}))
    digest = chain_hash(facts, prev)
    event = AuditEvent(seq=seq, recorded_at=facts.recorded_at, actor=facts.actor,
                       role=facts.role, client=facts.client, node=facts.node,
                       action=facts.action, entities=list(facts.entities),
                       detail=dict(facts.detail), outcome=outcome, prev_hash=prev, hash=digest)
    db.add(event)
    db.execute(update(AuditChainHead).where(AuditChainHead.id == 1).values(hash=digest))
    db.flush()
    return event


def append(database: Database, actor: str, action: str, *entities: str, outcome: str,
           **context: Any) -> int:
    """:func:`record` in a transaction of its own; return the record's seq once committed."""
    with database.session() as db:
        return record(db, actor, action, *entities, outcome=outcome, **context).seq


@dataclass(frozen=True)
class Actor:
    """Who makes a change, as its audit record names them: a user (a web admin) or
    ``cli:<operating system user>``, with their role and client address when they came over
    HTTP, and the node that made the change (None: this host's name)."""

    name: str
    role: str | None = None
    client: str | None = None
    node: str | None = None

    def record(self, db: Session, action: str, *entities: str,
               detail: Mapping[str, Any] | None = None) -> AuditEvent:
        """:func:`record` the success of ``action`` by this actor in the caller's transaction,
        so the record commits with the change or not at all."""
        return record(db, self.name, action, *entities, outcome=SUCCESS, role=self.role,
                      client=self.client, detail=detail, node=self.node)


_DELIVERY_ACTIONS = {
    DeliveryKind.PACS: ("delivery.sent", "delivery.dead"),
    DeliveryKind.EMR: ("notice.sent", "notice.dead"),
    DeliveryKind.VIDEO: ("reencode.stored", "reencode.dead"),
}
"""The audit actions of a delivery row's outcome (sent, dead) by its kind."""


def record_delivery(db: Session, *, destination: str, kind: str, study_uid: str,
                    sop_uids: Sequence[str], sent: bool, reason: str | None = None,
                    node: str | None = None) -> AuditEvent:
    """For the delivery worker, in the transaction that records the outcome: one event per
    delivered (or given-up) batch — ``delivery.sent``/``delivery.dead`` for a PACS
    (``kind="pacs"``), ``notice.sent``/``notice.dead`` for an EMR notice,
    ``reencode.stored``/``reencode.dead`` for the worker's own job of re-encoding a staged
    clip into a stored instance. ``reason`` must hold no PHI (the outbox's ``last_error``
    does not)."""
    session = db.scalar(select(CaptureSession).where(CaptureSession.study_uid == study_uid))
    entities = [patient_ref(session.patient_id, session.issuer)] if session else []
    entities += [study_ref(study_uid), *(instance_ref(uid) for uid in sop_uids if uid)]
    done, dead = _DELIVERY_ACTIONS[DeliveryKind(kind)]
    return record(db, DELIVERY_ACTOR, done if sent else dead, *entities,
                  outcome=SUCCESS if sent else ERROR, node=node,
                  detail={"destination": destination, **({"reason": reason} if reason else {})})


# --- verifying --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """The verifier's answer: ``ok``, how many records were checked and, when broken, the first
    record that breaks the chain (its ``seq`` and row ``id``) and why."""

    ok: bool
    records: int
    seq: int | None = None
    id: int | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "broken_at": None if self.ok else {
            "seq": self.seq, "id": self.id, "reason": self.reason}}


def verify(database: Database) -> Verification:
    """Recompute the chain from the first record. Guarantees: a record whose content was
    edited, a removed, inserted or reordered record, and a truncated tail are all reported,
    naming the first record where the chain no longer holds."""
    expected_prev, count, last_seq = GENESIS, 0, 0
    with database.session() as db:
        rows = db.execute(select(AuditEvent).order_by(AuditEvent.seq)
                          .execution_options(yield_per=1000)).scalars()
        for row in rows:
            count += 1
            if row.seq != last_seq + 1:
                return Verification(False, count, row.seq, row.id,
                                    f"record {last_seq + 1} is missing")
            if row.prev_hash != expected_prev:
                return Verification(False, count, row.seq, row.id,
                                    "does not follow the previous record")
            if chain_hash(facts_of(row), row.prev_hash) != row.hash:
                return Verification(False, count, row.seq, row.id,
                                    "content does not match its hash")
            expected_prev, last_seq = row.hash, row.seq
        head = db.get(AuditChainHead, 1)
    if head is not None and (head.seq, head.hash) != (last_seq, expected_prev):
        return Verification(False, count, head.seq, None,
                            f"records after {last_seq} are missing (the head is at {head.seq})")
    return Verification(True, count)


# --- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """What the admin view and the exports select; every field is optional."""

    actor: str | None = None
    action: str | None = None  # exact, or a family ending in "." (e.g. "dicomweb.")
    outcome: str | None = None
    entity: str | None = None  # an exact entity reference, e.g. study:<uid>
    since: datetime | None = None
    until: datetime | None = None
    before_seq: int | None = None  # paging: records older than this one

    def where(self) -> list[Any]:
        clauses: list[Any] = []
        if self.actor:
            clauses.append(AuditEvent.actor == self.actor)
        if self.action:
            clauses.append(AuditEvent.action.startswith(self.action, autoescape=True)
                           if self.action.endswith(".") else AuditEvent.action == self.action)
        if self.outcome:
            clauses.append(AuditEvent.outcome == self.outcome)
        if self.entity:
            quoted = json.dumps(self.entity)
            clauses.append(cast(AuditEvent.entities, String).contains(quoted, autoescape=True))
        if self.since:
            clauses.append(AuditEvent.recorded_at >= self.since)
        if self.until:
            clauses.append(AuditEvent.recorded_at < self.until)
        if self.before_seq:
            clauses.append(AuditEvent.seq < self.before_seq)
        return clauses


def search(database: Database, filters: Filters, limit: int = 100) -> list[AuditFacts]:
    """The newest records matching ``filters`` (at most ``limit``, capped at 500), newest
    first."""
    query = (select(AuditEvent).where(*filters.where()).order_by(AuditEvent.seq.desc())
             .limit(max(1, min(limit, MAX_PAGE))))
    with database.session() as db:
        return [facts_of(row) for row in db.scalars(query)]


def _in_order(database: Database, filters: Filters) -> Iterator[AuditFacts]:
    with database.session() as db:
        rows = db.execute(select(AuditEvent).where(*filters.where()).order_by(AuditEvent.seq)
                          .execution_options(yield_per=1000)).scalars()
        for row in rows:
            yield facts_of(row)


def fhir_bundle(database: Database, filters: Filters, *,
                systems: Mapping[str, str]) -> dict[str, Any]:
    """Every matching record as FHIR R4 AuditEvents in a ``collection`` Bundle, chain order."""
    return bundle_json([audit_event_json(f, systems=systems, application=APPLICATION)
                        for f in _in_order(database, filters)])


# --- forwarding to a syslog collector ---------------------------------------------------------


@dataclass(frozen=True)
class ForwardResult:
    """What one forwarding round did: records sent, and the error that stopped it, if any."""

    sent: int
    error: str | None = None


class AuditForwarder:
    """Sends the audit trail, in chain order, to one syslog collector as RFC 5424 messages
    whose MSG is the record's FHIR AuditEvent (JSON).

    The position reached is kept in the database (``audit_forward``): records written while the
    collector is down wait there and go out in order once it is back. One forwarder at a time
    holds the target's lease, so several processes never send the same record twice; a record
    is counted as sent only after the collector's connection took it.
    """

    def __init__(self, database: Database, target: SyslogTarget, *,
                 systems: Mapping[str, str], hostname: str | None = None, batch: int = 200,
                 lease_seconds: float = 30.0,
                 sender_factory: Callable[[SyslogTarget], SyslogSender] = SyslogSender) -> None:
        self.database = database
        self.target = target
        self.systems = dict(systems)
        self.hostname = hostname or default_node()
        self.batch = batch
        self.lease = timedelta(seconds=lease_seconds)
        self.sender = sender_factory(target)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _claim(self) -> int | None:
        """Take (or renew) the target's lease; the last seq sent, or None if another holds it."""
        now = datetime.now(UTC)
        with self.database.session() as db:
            db.execute(_insert(db, AuditForward)
                       .values(target=self.target.name, seq=0, updated_at=now)
                       .on_conflict_do_nothing(index_elements=["target"]))
            return db.execute(
                update(AuditForward).where(
                    AuditForward.target == self.target.name,
                    or_(AuditForward.lease_until.is_(None), AuditForward.lease_until < now,
                        AuditForward.lease_token == self.token))
                .values(lease_token=self.token, lease_until=now + self.lease)
                .returning(AuditForward.seq)).scalar()

    def _advance(self, seq: int | None = None, error: str | None = None) -> bool:
        """Record progress (or the error) under our lease; False when the lease was lost."""
        now = datetime.now(UTC)
        values: dict[str, Any] = {"lease_until": now + self.lease, "updated_at": now,
                                  "last_error": error}
        if seq is not None:
            values["seq"] = seq
        with self.database.session() as db:
            return bool(affected_rows(db.execute(
                update(AuditForward).where(AuditForward.target == self.target.name,
                                           AuditForward.lease_token == self.token)
                .values(**values))))

    def _frame(self, facts: AuditFacts) -> bytes:
        payload = json.dumps(audit_event_json(facts, systems=self.systems,
                                              application=APPLICATION),
                             separators=(",", ":"), ensure_ascii=False).encode()
        return syslog_message(payload, timestamp=facts.recorded_at, hostname=self.hostname,
                              app_name=APPLICATION)

    def run_once(self) -> ForwardResult:
        """Send up to ``batch`` pending records in order; stop at the first failure."""
        cursor = self._claim()
        if cursor is None:
            return ForwardResult(0)
        with self.database.session() as db:
            pending = [facts_of(row) for row in db.scalars(
                select(AuditEvent).where(AuditEvent.seq > cursor).order_by(AuditEvent.seq)
                .limit(self.batch))]
        sent = 0
        for facts in pending:
            try:
                self.sender.send(self._frame(facts))
            except GatewayError as exc:
                self._advance(error=str(exc)[:200])
                log.warning("audit forwarding to %s paused: %s", self.target.name, exc)
                return ForwardResult(sent, str(exc))
            if not self._advance(facts.seq):
                return ForwardResult(sent, "the forwarding lease was taken over")
            sent += 1
        return ForwardResult(sent)

    def drain(self) -> ForwardResult:
        """Forward until nothing is pending or a round fails; the total and the error."""
        total = 0
        while True:
            result = self.run_once()
            total += result.sent
            if result.error or result.sent < self.batch:
                return ForwardResult(total, result.error)

    def _run(self, interval: float) -> None:
        pause = interval
        while not self._stop.wait(pause):
            try:
                result = self.drain()
            except Exception as exc:  # the database is down, say: log the type only
                log.error("audit forwarding: unexpected %s", type(exc).__name__)
                result = ForwardResult(0, type(exc).__name__)
            pause = min(pause * 2, 30.0) if result.error else interval

    def start(self, interval: float = 1.0) -> AuditForwarder:
        """Forward in a daemon thread, polling every ``interval`` s (backing off on errors)."""
        self._thread = threading.Thread(target=self._run, args=(interval,),
                                        name="ebiw-audit-forward", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after its current round and close the connection."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
        self.sender.close()


def syslog_forwarder(database: Database, settings: Settings) -> AuditForwarder | None:
    """The forwarder ``EBIW_AUDIT_SYSLOG`` asks for (not started), or None when it is unset."""
    if not settings.audit_syslog:
        return None
    target = SyslogTarget.parse(settings.audit_syslog, ca_file=settings.audit_syslog_ca_file,
                                cert_file=settings.audit_syslog_cert_file,
                                key_file=settings.audit_syslog_key_file)
    return AuditForwarder(database, target, systems=settings.issuer_systems,
                          hostname=settings.node)
