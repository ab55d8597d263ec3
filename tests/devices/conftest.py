"""DICOM objects as other devices send them: VL Photographic instances built with the app's own
builder from real photos (as a camera or another capture app would make them), for a patient
of the local index, and STOW-RS bodies holding them."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, date, datetime

import pydicom
import pytest
from flask import Flask

from app.pipeline.decode import prepare_for_dicom
from app.pipeline.dicom.builder import (
    InstanceInfo,
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    build_vl_photo,
)
from app.pipeline.dicom.uids import uid_from_uuid
from app.workflow.demo import seed_demo_patients
from tests.conftest import CHARTS, services

PHOTOS = ("sio_classic.jpg", "jtvd_mini_01.jpg", "jtvd_classic_01.jpg")
KNOWN = PatientInfo(id="00123456", issuer="LOCAL", name="DEMO^ALICE",
                    birth_date=date(1950, 3, 14), sex="F")
"""A demo patient of the local index (``ebiw demo``), as the directory knows them."""
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def new_uid() -> str:
    return uid_from_uuid(uuid.uuid4())


def vl_photo(photo: str = PHOTOS[0], patient: PatientInfo = KNOWN, *,
             study_uid: str | None = None, sop_uid: str | None = None) -> bytes:
    """A VL Photographic Image (Part 10, the photo's JPEG kept) as another device sends it."""
    prepared = prepare_for_dicom((CHARTS / photo).read_bytes(), 100_000_000)
    return build_vl_photo(prepared, patient,
                          StudyInfo(uid=study_uid or new_uid(), started=datetime.now(UTC)),
                          SeriesInfo(uid=new_uid(), number=1, description="Dermatoscope"),
                          InstanceInfo(sop_uid=sop_uid or new_uid(), number=1))


def changed(data: bytes, **values: str) -> bytes:
    """``data`` with attributes set (keyword=value), written again by pydicom."""
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in values.items():
        setattr(ds, keyword, value)
        if keyword == "SOPClassUID":
            ds.file_meta.MediaStorageSOPClassUID = value
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def stow_body(*parts: bytes, part_type: str = "application/dicom") -> tuple[bytes, str]:
    """A ``multipart/related; type="application/dicom"`` body and its Content-Type."""
    marker = f"test-{uuid.uuid4().hex}"
    body = b"".join(f"--{marker}\r\nContent-Type: {part_type}\r\n\r\n".encode() + p + b"\r\n"
                    for p in parts) + f"--{marker}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={marker}'


@pytest.fixture
def known_patients(app: Flask) -> None:
    """The demo patients in the local index (issuer LOCAL, the default issuer)."""
    seed_demo_patients(services(app).db, "LOCAL")
