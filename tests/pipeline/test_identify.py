"""The barcode chain on real photos (../shared/testdata/barcodes, never copied into the repo)."""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pillow_heif
import pytest
from PIL import Image

from app.pipeline.decode import UnreadablePhotoError, load_pixels
from app.pipeline.identify import Barcode, read_barcodes, read_barcodes_array

TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata"
BARCODES = TESTDATA / "barcodes"

pytestmark = pytest.mark.skipif(not (BARCODES / "index.csv").exists(),
                                reason=f"real barcode photos not found at {BARCODES}")


@dataclass(frozen=True)
class Expected:
    symbology: str
    payloads: frozenset[bytes]
    allowed: frozenset[bytes]  # also_present: other real symbols in the frame


def _index() -> dict[str, Expected]:
    if not (BARCODES / "index.csv").exists():
        return {}
    with (BARCODES / "index.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, Expected] = {}
    for row in rows:
        old = out.get(row["file"])
        payloads = {bytes.fromhex(row["expected_hex"])} | (old.payloads if old else set())
        allowed = {a.encode() for a in row["also_present"].split("|") if a}
        out[row["file"]] = Expected(row["symbology"], frozenset(payloads), frozenset(allowed))
    return out


INDEX = _index()

REPRESENTATIVE = [
    "zx_code128-2_01.png",  # skew and perspective
    "zx_code128-2_25.png",  # label on a curved surface
    "zx_code128-2_33.png",  # label held in a hand
    "zx_code128-2_37.png",  # glossy device
    "dy_ups_IMG_8747.jpg",  # 12 MP iPhone photo, EXIF orientation 6, two Code 128
    "zx_code39-3_01.png",
    "zx_code39-3_02.png",  # a second Code 39 label in the frame
    "zx_qrcode-1_1.png",
    "zx_qrcode-2_28.png",  # small QR in clutter: only zbar reads it
    "zx_qrcode-3_05.png",
    "zx_qrcode-5_01.png",  # uneven light
    "zx_pdf417-2_01.png",
    "zx_pdf417-2_22.png",  # needs the global binarizer
    "zx_pdf417-3_12.png",  # ISO/IEC 15434 shipping label
    "zx_datamatrix-2_01.png",
    "zc_datamatrix-3_794.png",  # GS1 Data Matrix
    "zc_datamatrix-3_dm-c.jpg",  # binary payload with a NUL inside
    "zc_datamatrix-5_issue1063.webp",  # 2D-Doc, needs a rescue pass
]
TURNED = ["zx_code128-2_05.png", "zx_code39-3_05.png", "zx_qrcode-1_5.png",
          "zx_pdf417-2_05.png", "zx_datamatrix-2_05.png"]


def _check(file: str, found: list[Barcode]) -> None:
    """Every expected symbol is read with its symbology, and nothing else is returned."""
    expected = INDEX[file]
    raws = {b.raw for b in found}
    assert expected.payloads <= raws, f"{file}: missing {expected.payloads - raws}"
    assert raws <= expected.payloads | expected.allowed, f"{file}: wrong {raws}"
    assert {b.symbology for b in found if b.raw in expected.payloads} == {expected.symbology}


def _read_file(file: str) -> list[Barcode]:
    return read_barcodes((BARCODES / file).read_bytes())


def _tilted(pixels: np.ndarray, degrees: float) -> np.ndarray:
    """``pixels`` turned counter-clockwise on a canvas that holds all of it."""
    h, w = pixels.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    cos, sin = abs(rot[0, 0]), abs(rot[0, 1])
    nw, nh = round(w * cos + h * sin), round(w * sin + h * cos)
    rot[0, 2] += nw / 2 - w / 2
    rot[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(pixels, rot, (nw, nh), borderMode=cv2.BORDER_REPLICATE)


def _png(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("file", REPRESENTATIVE)
def test_reads_representative_photos(file: str) -> None:
    _check(file, _read_file(file))


@pytest.mark.parametrize("turn", [cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180])
@pytest.mark.parametrize("file", TURNED)
def test_reads_turned_photos(file: str, turn: int) -> None:
    pixels = cv2.rotate(load_pixels((BARCODES / file).read_bytes()), turn)
    _check(file, read_barcodes(_png(pixels)))


@pytest.mark.parametrize("file", TURNED)
def test_reads_halved_photos(file: str) -> None:
    pixels = load_pixels((BARCODES / file).read_bytes())
    h, w = pixels.shape[:2]
    _check(file, read_barcodes_array(cv2.resize(pixels, (w // 2, h // 2),
                                                interpolation=cv2.INTER_AREA)))


@pytest.mark.parametrize("file", ["zx_pdf417-2_01.png", "zx_code128-2_01.png",
                                  "zx_code39-3_01.png"])
def test_turns_tilted_bars_upright(file: str) -> None:
    """zxing-cpp alone reads PDF417 and linear codes only near the axes."""
    found = read_barcodes_array(_tilted(load_pixels((BARCODES / file).read_bytes()), 30))
    _check(file, found)
    assert all(b.reader.endswith(":upright") for b in found)


def test_twelve_megapixel_photo_is_oriented_and_reduced() -> None:
    found = _read_file("dy_ups_IMG_8747.jpg")
    assert sorted(b.payload for b in found) == ["1Z88899K2324252627", "CA 859 2-37"]
    assert {b.reader for b in found} == {"zxing-cpp:reduced"}
    for b in found:  # corners in the upright 3024×4032 image, not the 2016×1512 work image
        xs, ys = zip(*b.corners, strict=True)
        assert min(xs) >= 0 and max(xs) <= 3024 and min(ys) >= 0 and max(ys) <= 4032
        assert max(xs) - min(xs) > 700  # a full-resolution label width, bars running upright


@pytest.mark.parametrize(("file", "fmt"), [("zx_qrcode-1_1.png", "HEIF"),
                                           ("zx_code128-2_05.png", "WEBP"),
                                           ("zx_pdf417-2_05.png", "JPEG")])
def test_reads_other_phone_formats(file: str, fmt: str) -> None:
    """HEIC as iPhones send it, WebP and JPEG: the photo re-encoded in memory."""
    rgb = cv2.cvtColor(load_pixels((BARCODES / file).read_bytes()), cv2.COLOR_BGR2RGB)
    buf = io.BytesIO()
    if fmt == "HEIF":  # made without Pillow's HEIF plugin: the app must register it itself
        pillow_heif.from_pillow(Image.fromarray(rgb)).save(buf, quality=90)
    else:
        Image.fromarray(rgb).save(buf, format=fmt, quality=90)
    _check(file, read_barcodes(buf.getvalue()))


def test_gs1_data_matrix_is_flagged_and_plain() -> None:
    (b,) = _read_file("zc_datamatrix-3_794.png")
    assert b.gs1 and b.symbology == "DataMatrix"
    assert b.payload == "010890381998765921S1ND6MPPFCGG6B869XES\x1d1731063010BNav4Cam2"


def test_binary_payload_keeps_its_bytes() -> None:
    (b,) = _read_file("zc_datamatrix-3_dm-c.jpg")
    assert b.raw in INDEX["zc_datamatrix-3_dm-c.jpg"].payloads
    assert b.payload.encode("latin-1") == b.raw and "\x00" in b.payload


def test_weak_zbar_misread_is_not_returned() -> None:
    """zbar reads this reference symbol, 4× reduced, as '"A 859 2-38' from one scan line."""
    data = (BARCODES / "dy_ups_IMG_8759.jpg").read_bytes()
    found = read_barcodes_array(load_pixels(data, reduce=4)[300:460, 200:560])
    assert [b.payload for b in found] == ["CA 859 2-38"]


@pytest.mark.parametrize(("file", "tilt"), [
    ("zx_pdf417-2_04.png", False),  # halved: PDF417 misread with no error correction left
    ("zx_pdf417-2_20.png", True),  # turned 30°: likewise, once turned upright
])
def test_weak_pdf417_misreads_are_not_returned(file: str, tilt: bool) -> None:
    pixels = load_pixels((BARCODES / file).read_bytes())
    h, w = pixels.shape[:2]
    pixels = _tilted(pixels, 30) if tilt else cv2.resize(pixels, (w // 2, h // 2),
                                                        interpolation=cv2.INTER_AREA)
    assert {b.raw for b in read_barcodes(_png(pixels))} <= INDEX[file].payloads


def test_photo_without_barcode_gives_nothing() -> None:
    path = TESTDATA / "colourchart" / "karnehen_cam2_nochart.jpg"
    if not path.exists():
        pytest.skip(f"{path} not found")
    assert read_barcodes(path.read_bytes()) == []


def test_rejects_bytes_that_are_no_photo() -> None:
    with pytest.raises(UnreadablePhotoError):
        read_barcodes(b"%PDF-1.7 not a photo")


@pytest.mark.slow
def test_every_photo_as_given_reads_and_never_misreads() -> None:
    read: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for file, expected in INDEX.items():
        raws = {b.raw for b in _read_file(file)}
        assert raws <= expected.payloads | expected.allowed, f"{file}: wrong {raws}"
        read[expected.symbology] += len(raws & expected.payloads)
        total[expected.symbology] += len(expected.payloads)
    assert total == {"Code128": 42, "Code39": 13, "QRCode": 82, "PDF417": 24, "DataMatrix": 37}
    assert read["Code128"] >= 41 and read["PDF417"] >= 23 and read["DataMatrix"] >= 36
    assert read["Code39"] == 13 and read["QRCode"] == 82


@pytest.mark.slow
def test_every_photo_turned_and_halved_reads_mostly_and_never_misreads() -> None:
    read = total = 0
    for file, expected in INDEX.items():
        pixels = load_pixels((BARCODES / file).read_bytes())
        h, w = pixels.shape[:2]
        for variant in (cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE),
                        cv2.rotate(pixels, cv2.ROTATE_180),
                        cv2.resize(pixels, (w // 2, h // 2), interpolation=cv2.INTER_AREA)):
            raws = {b.raw for b in read_barcodes_array(variant)}
            assert raws <= expected.payloads | expected.allowed, f"{file}: wrong {raws}"
            read += len(raws & expected.payloads)
            total += len(expected.payloads)
    assert read / total >= 0.90
