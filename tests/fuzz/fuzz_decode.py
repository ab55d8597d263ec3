"""atheris harness: untrusted bytes → decode (header check, strip, re-encode) → DICOM → read back.

Run: ``.venv/bin/python tests/fuzz/fuzz_decode.py -max_total_time=600 CORPUS_DIR``
(``tests/fuzz/test_fuzz.py`` runs it briefly in the suite). A crash is any exception other than
``UnreadablePhotoError``, an object that does not read back as what was built, or a metadata
segment (APPn: EXIF/GPS, XMP, ICC chunks; COM) that survives into the stored JPEG frame.
"""

from __future__ import annotations

import io
import struct
from datetime import UTC, datetime

import atheris
from harness import main

with atheris.instrument_imports(include=["app"]):
    import pydicom
    from pydicom.encaps import generate_frames

    from app.pipeline.decode import UnreadablePhotoError, prepare_for_dicom
    from app.pipeline.dicom.builder import (
        InstanceInfo,
        PatientInfo,
        SeriesInfo,
        StudyInfo,
        build_vl_photo,
    )

MAX_PIXELS = 4_000_000  # keeps each input cheap; the cap itself is what is being exercised
PATIENT = PatientInfo("00123456", "FUZZ", "FUZZ^TEST")
STUDY = StudyInfo("2.25.1", datetime(2026, 1, 1, tzinfo=UTC))
SERIES = SeriesInfo("2.25.2", 1)
INSTANCE = InstanceInfo("2.25.3", 1)


def header_markers(jpeg: bytes) -> list[int]:
    """The marker codes of a JPEG's segments before its first scan."""
    assert jpeg.startswith(b"\xff\xd8")
    markers, pos = [], 2
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF and jpeg[pos + 1] != 0xDA:
        markers.append(jpeg[pos + 1])
        pos += 2 + struct.unpack(">H", jpeg[pos + 2:pos + 4])[0]
    return markers


def no_metadata(jpeg: bytes) -> bool:
    """Whether no APPn (EXIF/GPS, XMP, ICC, ...) or COM segment is left in the header."""
    return not [m for m in header_markers(jpeg) if 0xE0 <= m <= 0xEF or m == 0xFE]


def test_one_input(data: bytes) -> None:
    """One input: refused cleanly, or a readable VL Photographic object without metadata."""
    try:
        photo = prepare_for_dicom(data, MAX_PIXELS)
    except UnreadablePhotoError:
        return
    assert photo.width * photo.height <= MAX_PIXELS
    assert no_metadata(photo.jpeg)
    encoded = build_vl_photo(photo, PATIENT, STUDY, SERIES, INSTANCE)
    ds = pydicom.dcmread(io.BytesIO(encoded))
    assert (ds.Rows, ds.Columns) == (photo.height, photo.width)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert no_metadata(frame)


if __name__ == "__main__":
    main(test_one_input)
