"""Reading DICOM Part 10 bytes: one error for every way they can be unreadable.

pydicom raises many exception types for damaged input (``InvalidDicomError``, ``EOFError``,
``KeyError``, ``struct.error``, ``TypeError``, ...); readers of stored objects catch one.
"""

from __future__ import annotations

import io

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
