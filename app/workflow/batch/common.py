"""What every part of batch import shares: the states and sources of its rows, the namespace of
the ids it derives, and finding a batch its caller may use."""

from __future__ import annotations

import uuid
from typing import Any

from app.db.models import Batch
from app.db.session import Database
from app.workflow.intake import InvalidRequest, NotFound

NAMESPACE = uuid.UUID("5d0f3c1e-7a52-4b8e-9d36-2f1b9c4e8a70")
"""UUIDv5 namespace of the ids batch import derives (sessions of groups, command-line
imports)."""
LABEL, CLINICAL = "label", "clinical"
HELD, STORED, SKIPPED = "held", "stored", "skipped"
FROM_LABEL, MANUAL, GIVEN = "label", "manual", "given"
"""Where a group's identifier came from: a label in the batch, entered by hand in the review,
or given for the whole batch (``ebiw import --patient-id``)."""


def parse_uuid(value: Any, name: str) -> str:
    """``value`` as a canonical UUID; else :class:`InvalidRequest` naming ``name``."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be a UUID") from exc


def find_batch(db: Database, batch_id: str, owner: str | None) -> Batch:
    """The open batch ``batch_id``, if ``owner`` (None: anyone) opened it; else
    :class:`NotFound` (another user's batch is not found either)."""
    with db.session() as session:
        row = session.get(Batch, parse_uuid(batch_id, "batch id"))
    if row is None or row.status != "open" or (owner is not None and row.created_by != owner):
        raise NotFound("no such batch")
    return row
