"""Audit trail of access to PHI: one append-only row per access (who, what, when, outcome).

Entities are short typed references (``study:<uid>``, ``series:<uid>``, ``instance:<uid>``,
``query:<level>``), so an export to FHIR AuditEvent can name what was seen without this table
copying any clinical content. There is no function to change or delete an event.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.db.models import AuditEvent

SUCCESS = "success"
DENIED = "denied"  # not authenticated or not allowed
FAILED = "failed"  # refused for another reason (not found, bad request, not acceptable)
ERROR = "error"  # the server failed


def outcome_of(status: int) -> str:
    """The outcome recorded for an HTTP status code."""
    if status < 400:
        return SUCCESS
    if status in (401, 403):
        return DENIED
    return FAILED if status < 500 else ERROR


def record(db: Session, actor: str, action: str, *entities: str, outcome: str,
           role: str | None = None, client: str | None = None) -> AuditEvent:
    """Append one event in the caller's transaction and return it (flushed, not committed).

    Guarantees: the row is only inserted, never updated; ``entities`` keep their order.
    """
    if outcome not in (SUCCESS, DENIED, FAILED, ERROR):
        raise ValueError(f"unknown audit outcome {outcome!r}")
    event = AuditEvent(actor=actor[:128], role=role, client=(client or "")[:64] or None,
                       action=action[:64], entities=list(entities), outcome=outcome)
    db.add(event)
    db.flush()
    return event
