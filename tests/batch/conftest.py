"""A slip-sheet batch made from real photos, and what it must sort into.

Label frames are barcode photos from ``testdata/barcodes`` whose payloads the built-in
wristband rules read as MRNs; lesions are colour-chart photos from ``testdata/colourchart``.
Capture times are EXIF DateTimeOriginal written into JPEG copies in memory (one photo has
none: it keeps its place in file order). File order is deliberately not capture order.
Nothing here is written to the repository.
"""

from __future__ import annotations

import io
import random
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from PIL import Image, ImageOps

from app.workflow.identification import import_patient_file
from tests.conftest import BARCODES, CHARTS, services

ISSUER = "HOSP-A"
PATIENTS = {  # MRN -> (family, given, birth date, sex); C's label is unknown to the directory
    "15182881": ("BATCH", "ANNA", "1961-02-03", "F"),
    "42094043": ("BATCH", "BORIS", "1948-11-30", "M"),
    "2021200000": ("BATCH", "DORA", "1990-07-14", "F"),
}
UNKNOWN_MRN = "165340"


def upload_uuid_for(batch_id: str, sha256: str) -> str:
    """A file's upload UUID in a web batch, as ``static/js/batch-files.js`` makes it: UUIDv5
    of the batch id and the file's SHA-256 (lowercase hex)."""
    return str(uuid.uuid5(uuid.UUID(batch_id), sha256))


@dataclass(frozen=True)
class Shot:
    """One photo of the batch: its bytes, its name, its capture time, where it must end up."""

    name: str
    data: bytes
    minute: int | None  # capture time 10:<minute>, None: no EXIF time
    expect: str | None  # the patient's MRN, or None: unsorted
    role: str  # label or clinical


def jpeg(path: Path, minute: int | None, *, quality: int = 92) -> bytes:
    """``path`` as a JPEG in memory, with EXIF DateTimeOriginal 2024-05-01 10:<minute> (none
    when ``minute`` is None)."""
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    exif = Image.Exif()
    if minute is not None:
        exif.get_ifd(0x8769)[0x9003] = f"2024:05:01 10:{minute:02d}:00"
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, exif=exif)
    return out.getvalue()


def lesion(index: int, minute: int | None, expect: str | None) -> Shot:
    name = f"jtvd_classic_{index:02d}.jpg"
    return Shot(f"lesion-{index:02d}.jpg", jpeg(CHARTS / name, minute), minute, expect,
                "clinical")


def label(name: str, minute: int, mrn: str, role: str = "label") -> Shot:
    return Shot(f"label-{Path(name).stem}.jpg", jpeg(BARCODES / name, minute), minute, mrn,
                role)


@cache
def slip_sheet_batch() -> tuple[Shot, ...]:
    """The batch in *file order* (shuffled with a fixed seed); each shot's ``expect`` is the
    group it must sort into.

    Capture order: a lesion before any label (unsorted); label A, two lesions (the second
    without EXIF time, placed right after the first in file order); label B, a lesion; a frame
    with a small QR code (D: a lesion photographed with its label, assigned directly), a
    lesion; label C (not in the directory), a lesion; label A again, a lesion (back to A).
    """
    a, b, c, d = "15182881", "42094043", UNKNOWN_MRN, "2021200000"
    capture = [
        lesion(1, 0, None),
        label("zx_code128-2_05.png", 1, a),
        lesion(2, 2, a),
        lesion(3, None, a),
        label("zx_code128-2_29.png", 4, b),
        lesion(4, 5, b),
        label("zx_qrcode-2_5.png", 6, d, role="clinical"),
        lesion(5, 7, d),
        label("zx_code39-3_06.png", 8, c),
        lesion(6, 9, c),
        label("zx_code128-2_06.png", 10, a),
        lesion(7, 11, a),
    ]
    # File order: shuffled, except that the photo without a time follows lesion 2.
    rest = [s for s in capture if s.name not in ("lesion-02.jpg", "lesion-03.jpg")]
    random.Random(7).shuffle(rest)
    at = len(rest) // 2
    return tuple([*rest[:at], capture[2], capture[3], *rest[at:]])


def import_patients(app: Flask, tmp_path: Path) -> Path:
    """Put the batch's known patients in the local index (``ebiw patients import``'s code)."""
    csv = tmp_path / "patients.csv"
    csv.write_text("mrn,issuer,family,given,birth_date,sex\n" + "".join(
        f"{mrn},{ISSUER},{f},{g},{born},{sex}\n" for mrn, (f, g, born, sex) in PATIENTS.items()))
    svc = services(app)
    import_patient_file(svc.db, csv, settings=svc.settings)
    return csv


@pytest.fixture
def batch_shots() -> tuple[Shot, ...]:
    return slip_sheet_batch()


@pytest.fixture
def screen() -> dict[str, Any]:
    """The options of the batch page's browser context (``test_batch_page.page``): a desktop
    window; a module testing the page at phone size overrides this fixture with
    :data:`tests.conftest.PHONE`."""
    return {"viewport": {"width": 1280, "height": 900}}
