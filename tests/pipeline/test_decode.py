"""The decode step on real photos and on hostile input."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from app.pipeline import decode
from app.pipeline.decode import UnreadablePhotoError, prepare_for_dicom, probe
from tests.conftest import CHARTS

IPHONE = CHARTS / "oycq_data_iphone.jpg"  # 12 MP, Display P3 ICC profile
SAMSUNG = CHARTS / "jarrelscy_203438.jpg"  # EXIF with make/model/time
XIAOMI = CHARTS / "oycq_data_xiaomi.jpg"  # 12.6 MP, EXIF + trailing MPF data


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG whose header declares a huge image (decoding it would need gigabytes)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_segments(data: bytes) -> list[int]:
    """Marker codes of a JPEG's header segments up to SOS."""
    markers, pos = [], 2
    while data[pos + 1] != 0xDA:
        markers.append(data[pos + 1])
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return markers


def test_sniff_by_content_not_name() -> None:
    assert decode.sniff(IPHONE.read_bytes()) == "image/jpeg"
    assert decode.sniff(png_bomb(2, 2)) == "image/png"
    with pytest.raises(UnreadablePhotoError, match="not a supported image"):
        decode.sniff(b"<!DOCTYPE html><html><body>hello</body></html>")
    with pytest.raises(UnreadablePhotoError, match="empty"):
        decode.sniff(b"")


def test_passthrough_keeps_the_bitstream_and_drops_metadata() -> None:
    data = SAMSUNG.read_bytes()
    photo = prepare_for_dicom(data)
    assert photo.passthrough
    assert (photo.width, photo.height) == (3264, 2448)
    # Only metadata went: the entropy-coded scan is byte-identical.
    sos = data.index(b"\xff\xda")
    assert photo.jpeg.endswith(data[sos:data.rindex(b"\xff\xd9") + 2])
    assert 0xE1 not in jpeg_segments(photo.jpeg)  # no EXIF/XMP
    assert all(m < 0xE0 or m == 0xEE for m in jpeg_segments(photo.jpeg))
    assert b"Exif" not in photo.jpeg[:sos]
    # The values we keep were read before stripping.
    assert photo.info.make == "Samsung" and photo.info.model == "GT-I9100"
    assert photo.info.acquired is not None and photo.info.acquired.year == 2014
    decoded = Image.open(io.BytesIO(photo.jpeg))
    reference = Image.open(io.BytesIO(data))
    assert np.array_equal(np.asarray(decoded), np.asarray(reference))


def test_icc_profile_and_trailing_bytes() -> None:
    iphone = prepare_for_dicom(IPHONE.read_bytes())
    assert iphone.info.icc_profile
    assert b"Display P3" in iphone.info.icc_profile.replace(b"\x00", b"")
    data = XIAOMI.read_bytes()
    photo = prepare_for_dicom(data)
    assert photo.passthrough
    assert len(photo.jpeg) < len(data) - 500_000  # the appended MPF images are gone
    assert photo.jpeg.endswith(b"\xff\xd9") and photo.jpeg.count(b"\xff\xd8") == 1


def test_exif_orientation_is_applied_by_reencoding() -> None:
    src = Image.open(SAMSUNG).resize((400, 300))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    src.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    photo = prepare_for_dicom(buf.getvalue())
    assert not photo.passthrough
    assert (photo.width, photo.height) == (300, 400)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    ours = np.asarray(Image.open(io.BytesIO(photo.jpeg)))
    assert np.abs(ours.astype(int) - upright.astype(int)).mean() < 3
    pixels = decode.load_pixels(buf.getvalue())
    assert pixels.shape == (400, 300, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_load_pixels_orientation_matches_pillow(orientation: int) -> None:
    rng = np.random.default_rng(orientation)
    src = Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8).repeat(8, 0)
                          .repeat(8, 1))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    src.save(buf, "JPEG", quality=100, exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    got = decode.load_pixels(buf.getvalue())[:, :, ::-1]
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < 1


def test_png_is_encoded_once_as_baseline_jpeg() -> None:
    photo = prepare_for_dicom((CHARTS / "qiu_digitalsg.png").read_bytes())
    assert not photo.passthrough and photo.info.media_type == "image/png"
    assert photo.jpeg[:2] == b"\xff\xd8" and 0xC0 in jpeg_segments(photo.jpeg)
    assert (photo.width, photo.height) == (1920, 1280)


def test_reduced_jpeg_decode_uses_dct_scaling() -> None:
    small = decode.load_pixels(SAMSUNG.read_bytes(), reduce=4)
    assert small.shape == (612, 816, 3)


@pytest.mark.parametrize("reduce", [1, 2, 4, 8])
def test_jpeg_decode_gives_opencvs_pixels(reduce: int) -> None:
    """simplejpeg decodes (a quarter faster): the same pixels as cv2.imdecode, also reduced,
    also for a CMYK JPEG of odd size."""
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}
    rng = np.random.default_rng(reduce)
    cmyk = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (47, 63, 4), dtype=np.uint8), "CMYK").save(cmyk, "JPEG")
    for data in (XIAOMI.read_bytes(), cmyk.getvalue()):
        expected = cv2.imdecode(np.frombuffer(data, np.uint8),
                                flags[reduce] | cv2.IMREAD_IGNORE_ORIENTATION)
        got = decode.load_pixels(data, reduce=reduce)
        assert got.shape == expected.shape and np.array_equal(got, expected)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"),
    (b"<html><body>not a photo</body></html>", "not a supported image"),
    (png_bomb(), "too large"),
    (SAMSUNG.read_bytes()[:200_000], "truncated"),
    (SAMSUNG.read_bytes() + b"<html><script>alert(1)</script></html>", "after the end"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40, "truncated|corrupt"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "cannot be read"),
])
def test_bad_input_is_refused_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(UnreadablePhotoError, match=message):
        prepare_for_dicom(data)
    with pytest.raises(UnreadablePhotoError):
        decode.load_pixels(data)


def test_pixel_cap_is_checked_before_decoding() -> None:
    info = probe(png_bomb(8000, 8000), max_pixels=100_000_000)
    assert (info.width, info.height) == (8000, 8000)
    with pytest.raises(UnreadablePhotoError, match="too large"):
        probe(SAMSUNG.read_bytes(), max_pixels=1_000_000)
