"""Durable file writes: a file either keeps its old content or has all of the new, also after a
crash or a power cut, and its directory entry is on disk when the write returns."""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import tempfile
import time
from pathlib import Path

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
TEMP_PREFIX = ".tmp-"
# A temporary file's name says who writes it: ``.tmp-<random>.<pid>@<host>``. mkstemp's random
# part has no ``.`` or ``@``, a host name no ``@``.
_TAGGED = re.compile(r"\.tmp-[a-z0-9_]+\.(?P<pid>[0-9]+)@(?P<host>.+)")
# A write takes seconds at most; a temporary file this old is a leftover whoever its writer
# was (another node, a reused pid, or a name from before writers were tagged).
STALE_AFTER_S = 3600.0

log = logging.getLogger(__name__)


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
    fd, tmp = temp_file(folder)
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


def temp_file(folder: Path) -> tuple[int, str]:
    """Create a new temporary file in ``folder`` (as :func:`tempfile.mkstemp`, open file
    descriptor and path), named for this host and process so :func:`sweep_temp_files` can tell
    a leftover from a file being written."""
    return tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=f".{os.getpid()}@{socket.gethostname()}",
                            dir=folder)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _orphaned(name: str, age_s: float, host: str) -> bool:
    """Whether a temporary file named ``name``, last changed ``age_s`` ago, has no live writer."""
    if age_s > STALE_AFTER_S:
        return True
    tagged = _TAGGED.fullmatch(name)
    return (tagged is not None and tagged["host"] == host
            and not _pid_alive(int(tagged["pid"])))


def sweep_temp_files(root: Path) -> int:
    """Remove the temporary files that writes killed before their rename left under ``root``;
    return how many were removed.

    Guarantees: a file is removed only when its name is a temporary file's (``.tmp-*``) and
    either its writer was a process of this host that is gone, or it is older than
    :data:`STALE_AFTER_S` (writers on other nodes sharing the folder, untagged names). So a
    live writer's file, on this host or another, is never taken from under it. Files that
    vanish or cannot be removed meanwhile are skipped; a missing ``root`` sweeps nothing.
    """
    host, now, removed = socket.gethostname(), time.time(), 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if not name.startswith(TEMP_PREFIX):
                continue
            path = Path(folder) / name
            try:
                if _orphaned(name, now - path.stat().st_mtime, host):
                    path.unlink()
                    removed += 1
            except OSError:
                continue
    if removed:
        log.info("removed %d temporary file(s) left by interrupted writes", removed)
    return removed
