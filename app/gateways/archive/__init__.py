"""Where DICOM instances are kept: the archive of record (a local Part 10 store or an
S3-compatible object store, chosen by :func:`build_archive`, both implementing
:class:`~app.gateways.archive.base.Archive`), and PACS destinations."""

from __future__ import annotations

from app.gateways.archive.base import (
    Archive,
    ArchiveConflictError,
    ArchiveUnavailableError,
    InstanceKey,
)
from app.gateways.archive.local import LocalArchive
from app.settings import Settings

__all__ = ["Archive", "ArchiveConflictError", "ArchiveUnavailableError", "InstanceKey",
           "build_archive"]


def build_archive(settings: Settings) -> Archive:
    """The object store when ``EBIW_ARCHIVE_S3_BUCKET`` is set, else the local archive under
    ``EBIW_ARCHIVE_DIR`` (boto3 is imported only when it is used)."""
    if not settings.archive_s3_bucket:
        return LocalArchive(settings.archive_root)
    from app.gateways.archive.objectstore import ObjectStoreArchive

    return ObjectStoreArchive(settings.archive_s3_bucket, settings.archive_s3_endpoint or None)
