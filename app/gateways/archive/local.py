"""The local archive: Part 10 files under ``<root>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``.

Files are written atomically and durably (:func:`app.durable.write_durably`) and indexed in
the ``instance`` table in the caller's transaction. File names come only from UIDs we
generated and checked, never from user input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.db.models import Instance
from app.durable import fsync_dir, write_durably
from app.gateways.archive.base import InstanceKey, store_indexed


class LocalArchive:
    """Stores each SOP instance once; the same bytes again is a no-op, other bytes a conflict."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, instance: Instance) -> Path:
        """Absolute path of an indexed instance's file."""
        return self.root / instance.path

    def store(self, db: Session, key: InstanceKey, data: bytes,
              attributes: dict[str, Any] | None = None) -> Instance:
        """Write ``data`` durably and index it; return the index row (flushed, not committed).

        Guarantees: when this returns, the file is on disk with its directory entry synced;
        an instance already indexed with the same SHA-256 is returned as it is; one indexed
        with other bytes raises :class:`~app.gateways.archive.base.ArchiveConflictError` and
        nothing changes. A file left by an attempt that never committed (no index row) is
        replaced.
        """
        return store_indexed(db, key, data, attributes,
                             lambda path, _digest: write_durably(self.root / path, data))

    def read(self, instance: Instance) -> bytes:
        """The stored bytes of an indexed instance; FileNotFoundError when the file is gone."""
        return self.path(instance).read_bytes()

    def restore(self, instance: Instance, data: bytes) -> None:
        """Write ``data`` over an indexed instance's file, atomically and durably."""
        write_durably(self.path(instance), data)

    def delete(self, instance: Instance) -> None:
        """Unlink the instance's file and sync its directory, so the deletion survives a
        crash; a file already gone is fine."""
        path = self.path(instance)
        path.unlink(missing_ok=True)
        if path.parent.exists():
            fsync_dir(path.parent)

    def check(self) -> str:
        """``ok`` when the archive folder can be written to, else why not (no PHI)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return "ok" if os.access(self.root, os.W_OK) else "failed: not writable"
