"""What every part of batch import shares: the states and sources of its rows, the namespace of
the ids it derives, finding a batch its caller may use, telling a clip from a photo."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from app.db.models import Batch, BatchItem, BatchStatus
from app.db.session import Database
from app.pipeline.video import VIDEO_MEDIA_TYPES
from app.workflow.intake import InvalidRequest, NotFound

NAMESPACE = uuid.UUID("5d0f3c1e-7a52-4b8e-9d36-2f1b9c4e8a70")
"""UUIDv5 namespace of the ids batch import derives (sessions of groups, command-line
imports)."""


def is_clip(item: BatchItem) -> bool:
    """Whether a batch item is a video clip (stored as a Video Photographic Image)."""
    return item.media_type in VIDEO_MEDIA_TYPES


class GroupStatus(StrEnum):
    """A group is ``pending`` until it is ``confirmed`` (its capture session made)."""

    PENDING = "pending"
    CONFIRMED = "confirmed"


class ImportStatus(StrEnum):
    """A file's status in the import report (``held``: in a progress record, before sorting)."""

    HELD = "held"
    STORED = "stored"
    SKIPPED = "skipped"
    UNSORTED = "unsorted"
    DUPLICATE = "duplicate"
    FAILED = "failed"


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
    if row is None or row.status != BatchStatus.OPEN or (owner is not None
                                                         and row.created_by != owner):
        raise NotFound("no such batch")
    return row
