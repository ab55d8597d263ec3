"""Where DICOM instances are kept: the archive of record (a local Part 10 store or an
S3-compatible object store, chosen by :func:`build_archive`), and PACS destinations."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session

from app.db.models import Instance
from app.gateways.archive.local import InstanceKey, LocalArchive
from app.settings import Settings


class Archive(Protocol):
    """The archive of record: one stored copy per SOP Instance UID, indexed in ``instance``."""

    def store(self, db: Session, key: InstanceKey, data: bytes,
              attributes: dict | None = None) -> Instance:
        """Store durably and index (flushed in ``db``); the same bytes again are a no-op,
        other bytes raise ``ArchiveConflictError``."""
        ...

    def read(self, instance: Instance) -> bytes:
        """The stored bytes; ``FileNotFoundError`` when gone, another ``OSError`` when the
        store cannot be read now."""
        ...

    def restore(self, instance: Instance, data: bytes) -> None:
        """Write ``data`` over an indexed instance's stored copy (atomically)."""
        ...

    def check(self) -> str:
        """``ok`` when instances can be stored now, else a short reason without PHI."""
        ...


def build_archive(settings: Settings) -> Archive:
    """The object store when ``EBIW_ARCHIVE_S3_BUCKET`` is set, else the local archive under
    ``EBIW_ARCHIVE_DIR`` (boto3 is imported only when it is used)."""
    if not settings.archive_s3_bucket:
        return LocalArchive(settings.archive_root)
    from app.gateways.archive.objectstore import ObjectStoreArchive

    return ObjectStoreArchive(settings.archive_s3_bucket, settings.archive_s3_endpoint or None)
