"""The archive of record's vocabulary, shared by every backend: the key that places an
instance, the errors, the protocol and the indexed store around a backend's own write."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Protocol

from sqlalchemy.orm import Session

from app.db.models import Instance

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class ArchiveConflictError(RuntimeError):
    """A SOP Instance UID is already stored with other content; the first copy is kept."""


class ArchiveUnavailableError(OSError):
    """The archive's store did not answer as expected; the message names the operation only."""


@dataclass(frozen=True)
class InstanceKey:
    """The UIDs that place an instance in the archive, and its SOP Class."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str


def _checked_uid(uid: str) -> str:
    if not (0 < len(uid) <= 64 and _UID.match(uid)):
        raise ValueError(f"not a DICOM UID: {uid[:70]!r}")
    return uid


def instance_path(key: InstanceKey) -> str:
    """``<StudyUID>/<SeriesUID>/<SOPUID>.dcm``, the index path and object key of every backend;
    raises ValueError unless all three are UIDs (names never come from user input)."""
    return str(PurePosixPath(_checked_uid(key.study_uid), _checked_uid(key.series_uid),
                             f"{_checked_uid(key.sop_uid)}.dcm"))


class Archive(Protocol):
    """The archive of record: one stored copy per SOP Instance UID, indexed in ``instance``."""

    def store(self, db: Session, key: InstanceKey, data: bytes,
              attributes: dict[str, Any] | None = None) -> Instance:
        """Store durably and index (flushed in ``db``); the same bytes again are a no-op,
        other bytes raise :class:`ArchiveConflictError`."""
        ...

    def read(self, instance: Instance) -> bytes:
        """The stored bytes; ``FileNotFoundError`` when gone, another ``OSError`` when the
        store cannot be read now."""
        ...

    def restore(self, instance: Instance, data: bytes) -> None:
        """Write ``data`` over an indexed instance's stored copy (atomically)."""
        ...

    def delete(self, instance: Instance) -> None:
        """Remove an indexed instance's stored copy for good (the index row stays, the
        caller's to mark); already gone is not an error, so a rerun finishes a deletion.
        Raises :class:`ArchiveUnavailableError` (an ``OSError``) when the store refuses."""
        ...

    def check(self) -> str:
        """``ok`` when instances can be stored now, else a short reason without PHI."""
        ...


def store_indexed(db: Session, key: InstanceKey, data: bytes, attributes: dict[str, Any] | None,
                  write: Callable[[str, str], None]) -> Instance:
    """What every archive's ``store`` does around its own ``write(path, sha256)``: an
    instance already indexed with the same SHA-256 is returned as it is (nothing written),
    one with other bytes raises :class:`ArchiveConflictError`; else ``data`` is written under
    :func:`instance_path` and indexed (the row flushed, not committed)."""
    digest = hashlib.sha256(data).hexdigest()
    existing = db.get(Instance, key.sop_uid)
    if existing is not None:
        if existing.sha256 != digest:
            raise ArchiveConflictError(
                f"SOP Instance {key.sop_uid} is already stored with other content")
        return existing
    path = instance_path(key)
    write(path, digest)
    row = Instance(sop_uid=key.sop_uid, study_uid=key.study_uid, series_uid=key.series_uid,
                   sop_class_uid=key.sop_class_uid, path=path, sha256=digest, size=len(data),
                   attributes=attributes or {})
    db.add(row)
    db.flush()
    return row
