"""Small seed inputs for the fuzz harnesses (made on the fly from synthetic images and the
shared test data: nothing binary is committed)."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pillow_heif
import requests
from PIL import Image

from app.pipeline.decode import encode_jpeg, load_pixels, prepare_for_dicom
from app.pipeline.dicom.builder import (
    Derivation,
    InstanceInfo,
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    build_vl_photo,
)
from tests.conftest import BARCODES, CHARTS


def image_seeds() -> dict[str, bytes]:
    """One tiny image per accepted format (JPEG, PNG, TIFF, WebP, HEIC) and JPEG flavour
    (baseline, progressive, rotated)."""
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    seeds: dict[str, bytes] = {}
    pillow_heif.register_heif_opener()
    for name, fmt, kwargs in [
            ("baseline.jpg", "JPEG", {"quality": 80}),
            ("progressive.jpg", "JPEG", {"quality": 80, "progressive": True}),
            ("image.png", "PNG", {}), ("image.tiff", "TIFF", {}),
            ("image.webp", "WEBP", {"quality": 80}), ("image.heic", "HEIF", {"quality": 80})]:
        out = io.BytesIO()
        image.save(out, fmt, **kwargs)
        seeds[name] = out.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: decoded and encoded again
    exif[0x010F] = "Phone"
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80, exif=exif.tobytes())
    seeds["rotated.jpg"] = out.getvalue()
    grey = io.BytesIO()
    image.convert("LA").save(grey, "PNG")
    seeds["grey-alpha.png"] = grey.getvalue()
    return seeds


WRISTBAND_SEEDS = (
    "15182881", "MRN:00123456", "00123456^^^HOSP-A^MR", "(8018)951234567890123456",
    "\x1d8018951234567890123456", "]C18018951234567890123456", "00123456|ENC1001",
    "PID=00123456;ENC=ENC1001", "A1234567", "",
)


def write_corpus(folder: Path, seeds: dict[str, bytes] | None = None,
                 texts: tuple[str, ...] = ()) -> Path:
    """Fill ``folder`` with the seeds (files) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (seeds or {}).items():
        (folder / name).write_bytes(data)
    for i, text in enumerate(texts):
        (folder / f"text-{i}").write_bytes(b"\x00" + text.encode())
    return folder


def dicom_seeds() -> dict[str, bytes]:
    """Instances as intake and the colour step build them, from a real photo reduced 8 times
    in libjpeg (a few kB): an original, and a DERIVED one with Source Image Sequence and Pixel
    Spacing."""
    photo = prepare_for_dicom(encode_jpeg(load_pixels(
        (CHARTS / "sio_classic.jpg").read_bytes(), reduce=8)))
    patient = PatientInfo("00123456", "HOSP-A", "DEMO^ALICE")
    study = StudyInfo("2.25.1", datetime(2026, 1, 1, 9, 30, tzinfo=UTC), accession_number="A1")
    original = build_vl_photo(photo, patient, study, SeriesInfo("2.25.2", 1),
                              InstanceInfo("2.25.3", 1))
    derived = build_vl_photo(photo, patient, study, SeriesInfo("2.25.4", 2),
                             InstanceInfo("2.25.5", 1, derivation=Derivation("2.25.3", "ΔE 1.9"),
                                          pixel_spacing_mm=0.21))
    return {"original.dcm": original, "derived.dcm": derived}


def multipart_seeds() -> dict[str, bytes]:
    """Real multipart/form-data bodies, as :mod:`tests.fuzz.fuzz_multipart` reads them (the
    Content-Type's parameters, a newline, the body): a wristband photo from the test data
    (a 4.6 kB DataMatrix JPEG), the same with a second file, and a login form."""
    photo = (BARCODES / "zc_datamatrix-3_dm-1.jpg").read_bytes()

    def body(files: dict[str, Any], fields: dict[str, str]) -> bytes:
        prepared = requests.Request("POST", "http://fuzz/", files=files, data=fields).prepare()
        marker = prepared.headers["Content-Type"].split("boundary=", 1)[1]
        assert isinstance(prepared.body, bytes)
        return b"boundary=ebiw-fuzz\n" + prepared.body.replace(marker.encode(), b"ebiw-fuzz")

    wristband = ("wristband.jpg", photo, "image/jpeg")
    return {"photo.form": body({"photo": wristband}, {}),
            "two-files.form": body({"photo": wristband, "other": ("a.txt", b"x", "text/plain")},
                                   {"note": "ward 3"}),
            "login.form": body({"username": (None, "nurse"), "password": (None, "secret"),
                                "login_token": (None, "abc")}, {})}
