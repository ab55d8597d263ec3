"""Durable file writes: a file either keeps its old content or has all of the new, also after a
crash or a power cut, and its directory entry is on disk when the write returns."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write refused because the file system or the user's quota is full
    (where a failed :func:`write_durably` leaves nothing behind)."""
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


def fsync_dir(path: Path) -> None:
    """Flush ``path``'s directory entries (new, renamed or removed files) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically and durably.

    Guarantees: readers see the old file or the whole new one, never a part (temporary file in
    the target's folder, ``fdatasync``, rename over); when this returns the folder entry is
    synced, and so are the entries of the folder and its parent when this call created them.
    On failure the temporary file is removed and the old file is untouched.
    """
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
    fsync_dir(folder)
    for made in created:  # new folders must survive a crash too
        fsync_dir(made.parent)
