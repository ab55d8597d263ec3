"""The local archive: Part 10 files under ``<root>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``.

Files are written atomically and durably (temporary file, fsync, rename, directory fsync) and
indexed in the ``instance`` table in the caller's transaction. File names come only from UIDs
we generated and checked, never from user input.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from app.db.models import Instance

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class ArchiveConflictError(RuntimeError):
    """A SOP Instance UID is already stored with other content; the first copy is kept."""


@dataclass(frozen=True)
class InstanceKey:
    """The three UIDs that place an instance in the archive."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str


def _checked_uid(uid: str) -> str:
    if not (0 < len(uid) <= 64 and _UID.match(uid)):
        raise ValueError(f"not a DICOM UID: {uid[:70]!r}")
    return uid


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_indexed(db: Session, key: InstanceKey, data: bytes, attributes: dict | None,
                  write: Callable[[str, str], None]) -> Instance:
    """What every archive's ``store`` does around its own ``write(path, sha256)``: an
    instance already indexed with the same SHA-256 is returned as it is (nothing written),
    one with other bytes raises :class:`ArchiveConflictError`; else ``data`` is written under
    ``<StudyUID>/<SeriesUID>/<SOPUID>.dcm`` and indexed (the row flushed, not committed)."""
    digest = hashlib.sha256(data).hexdigest()
    existing = db.get(Instance, key.sop_uid)
    if existing is not None:
        if existing.sha256 != digest:
            raise ArchiveConflictError(
                f"SOP Instance {key.sop_uid} is already stored with other content")
        return existing
    path = LocalArchive.relative_path(key).as_posix()
    write(path, digest)
    row = Instance(sop_uid=key.sop_uid, study_uid=key.study_uid, series_uid=key.series_uid,
                   sop_class_uid=key.sop_class_uid, path=path, sha256=digest, size=len(data),
                   attributes=attributes or {})
    db.add(row)
    db.flush()
    return row


class LocalArchive:
    """Stores each SOP instance once; the same bytes again is a no-op, other bytes a conflict."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def relative_path(key: InstanceKey) -> Path:
        """``<StudyUID>/<SeriesUID>/<SOPUID>.dcm``; raises ValueError unless all are UIDs."""
        return Path(_checked_uid(key.study_uid), _checked_uid(key.series_uid),
                    f"{_checked_uid(key.sop_uid)}.dcm")

    def path(self, instance: Instance) -> Path:
        """Absolute path of an indexed instance's file."""
        return self.root / instance.path

    def store(self, db: Session, key: InstanceKey, data: bytes,
              attributes: dict | None = None) -> Instance:
        """Write ``data`` durably and index it; return the index row (flushed, not committed).

        Guarantees: when this returns, the file is on disk with its directory entry synced;
        an instance already indexed with the same SHA-256 is returned as it is; one indexed
        with other bytes raises :class:`ArchiveConflictError` and nothing changes. A file left
        by an attempt that never committed (no index row) is replaced.
        """
        return store_indexed(db, key, data, attributes,
                             lambda path, _digest: self.write_atomic(self.root / path, data))

    @staticmethod
    def write_atomic(target: Path, data: bytes) -> None:
        """Temp file in the target's directory, fsync, rename over, fsync the directory."""
        folder = target.parent
        created = [p for p in (folder.parent, folder) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fdatasync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(folder)
        for made in created:  # new study/series folders must survive a crash too
            _fsync_dir(made.parent)

    def read(self, instance: Instance) -> bytes:
        """The stored bytes of an indexed instance; FileNotFoundError when the file is gone."""
        return self.path(instance).read_bytes()

    def restore(self, instance: Instance, data: bytes) -> None:
        """Write ``data`` over an indexed instance's file, atomically and durably."""
        self.write_atomic(self.path(instance), data)

    def check(self) -> str:
        """``ok`` when the archive folder can be written to, else why not (no PHI)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return "ok" if os.access(self.root, os.W_OK) else "failed: not writable"
