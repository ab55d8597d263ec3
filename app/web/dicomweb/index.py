"""The DICOM attributes of archived instances, cached as DICOM JSON in the ``instance`` table.

QIDO-RS matching and WADO-RS metadata need attribute values. Reading every file's header for
every query would cost one disk read per instance per query, so each instance's header (all of
it but bulk data) is read once, lazily, into ``Instance.attributes["dicom"]``, stamped with the
file's SHA-256 and the version of this format. Queries then match in SQL on JSON paths and never
open a file.

Why lazily rather than at store time: it needs no change from whoever stores instances (intake,
colour normalization, imports, a future STOW-RS), covers archives that predate it, and a newer
format re-indexes itself (the stamp changes). The first query after new instances arrive pays
about a millisecond per new instance.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataelem import DataElement
from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from app.db.models import Instance
from app.gateways.archive import Archive
from app.pipeline.dicom.read import UnreadableDicomError, read_part10

log = logging.getLogger(__name__)

DICOM = "dicom"  # attributes key: the header as DICOM JSON, bulk data as relative URIs
STAMP = "dicom_of"  # attributes key: "<sha256>:<VERSION>" of the file the JSON was read from
TRANSFER_SYNTAX = "dicom_ts"  # attributes key: the file's Transfer Syntax UID
VERSION = "1"
PIXEL_DATA = "7FE00010"
BULK_PREFIX = "bulkdata/"


def _stamp_of(sha256: str) -> str:
    return f"{sha256}:{VERSION}"


def is_current(row: Instance) -> bool:
    """Whether ``row`` carries the cached header of its own file in this format."""
    return (row.attributes or {}).get(STAMP) == _stamp_of(row.sha256)


def _stale() -> ColumnElement[bool]:
    """SQL: rows whose cached header is missing, of other bytes, or of an older format."""
    stamp = Instance.attributes[STAMP].as_string()
    return or_(stamp.is_(None), stamp != Instance.sha256 + f":{VERSION}")


def _bulk_uri(element: DataElement) -> str:
    return f"{BULK_PREFIX}{element.tag:08X}"


def read_header(archive: Archive, row: Instance) -> tuple[dict[str, Any], str]:
    """The file's header as DICOM JSON (bulk data as relative URIs) and its Transfer Syntax.

    Guarantees: Pixel Data is listed (as ``bulkdata/7FE00010``) whenever the object is an
    image, although the header read stops before it; the Transfer Syntax is never empty.
    Raises only ``OSError`` (the archive) or :class:`UnreadableDicomError` (the file).
    """
    ds = read_part10(archive.read(row), stop_before_pixels=True)
    try:
        body = ds.to_json_dict(bulk_data_threshold=0, bulk_data_element_handler=_bulk_uri)
        transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
        if "Rows" in ds:
            body[PIXEL_DATA] = {"vr": "OB", "BulkDataURI": f"{BULK_PREFIX}{PIXEL_DATA}"}
    except Exception as exc:  # damaged values are only parsed here: pydicom raises many types
        raise UnreadableDicomError(f"header not readable ({type(exc).__name__})") from exc
    if not transfer_syntax:
        raise UnreadableDicomError("no Transfer Syntax UID in the file meta information")
    return body, transfer_syntax


def refresh(db: Session, archive: Archive, *criteria: ColumnElement[bool]) -> int:
    """Cache the header of every stale instance matching ``criteria``; return how many.

    Guarantees: other keys of ``attributes`` are kept; an unreadable file is logged (by type,
    no identifiers) and left stale, so it is retried and meanwhile never matches a query.
    """
    done = 0
    for row in db.scalars(select(Instance).where(_stale(), *criteria)):
        try:
            body, transfer_syntax = read_header(archive, row)
        except (OSError, UnreadableDicomError) as exc:
            log.warning("archive file unreadable for the DICOMweb index: %s", type(exc).__name__)
            continue
        row.attributes = {**(row.attributes or {}), DICOM: body,
                          TRANSFER_SYNTAX: transfer_syntax, STAMP: _stamp_of(row.sha256)}
        done += 1
    db.flush()
    return done
