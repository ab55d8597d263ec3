"""Reading DICOM Part 10 bytes: one error for every way they can be unreadable.

pydicom raises many exception types for damaged input (``InvalidDicomError``, ``EOFError``,
``KeyError``, ``struct.error``, ``TypeError``, ...); readers of stored objects catch one.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import pydicom
from pydicom import Dataset


class UnreadableDicomError(ValueError):
    """The bytes are not a DICOM object that can be read (the message names no value)."""


def read_part10(data: bytes, *, stop_before_pixels: bool = False) -> Dataset:
    """The dataset of Part 10 ``data`` (with its file meta information).

    Guarantees: raises only :class:`UnreadableDicomError` for bytes pydicom cannot parse.
    """
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # pydicom raises many types for bad input
        raise UnreadableDicomError(f"not a readable DICOM file ({type(exc).__name__})") from exc


def rewrite_header(data: bytes, change: Callable[[Dataset], None]) -> bytes:
    """Part 10 ``data`` with ``change`` applied to its dataset: the file meta and the header
    up to Pixel Data are re-encoded, Pixel Data and whatever follows it are kept byte for
    byte (an encapsulated JPEG stays exactly the one received).

    Guarantees: raises :class:`UnreadableDicomError` when ``data`` cannot be parsed (its
    top-level values included, which pydicom otherwise decodes only when first read) or the
    changed header cannot be encoded; what ``change`` raises passes through unchanged.
    """
    source = io.BytesIO(data)
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        for _element in ds:  # decodes each value now: an unknown VR fails here, not in change
            pass
    except Exception as exc:  # pydicom raises many types for bad input
        raise UnreadableDicomError(f"not a readable DICOM file ({type(exc).__name__})") from exc
    pixel_start = source.tell()
    change(ds)
    header = io.BytesIO()
    try:
        ds.save_as(header, enforce_file_format=True)
    except Exception as exc:  # values pydicom cannot encode
        raise UnreadableDicomError(f"the header cannot be re-encoded ({type(exc).__name__})") \
            from exc
    return header.getvalue() + data[pixel_start:]
