"""Pure pieces: rendering fitted to a viewport (with the ICC profile), Accept negotiation,
multipart bodies."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image, ImageCms

from app.pipeline.decode import prepare_for_dicom, strip_jpeg
from app.pipeline.dicom.builder import srgb_profile
from app.pipeline.render import embed_icc, fit, render_frame, render_thumbnail
from app.web.dicomweb import media
from tests.viewer.conftest import PHONE, parse_multipart, photo, size_of

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


@pytest.fixture(scope="module")
def phone() -> tuple[bytes, bytes]:
    """The 12 MP iPhone photo as intake stores it (stripped JPEG) and its Display P3 profile."""
    prepared = prepare_for_dicom(photo(PHONE))
    assert prepared.info.icc_profile
    return prepared.jpeg, prepared.info.icc_profile


@pytest.mark.parametrize(("size", "box", "expected"), [
    ((4032, 3024), (256, 256), (256, 192)),
    ((3072, 4096), (256, 256), (192, 256)),
    ((4032, 3024), (1280, 800), (1067, 800)),
    ((1600, 1200), (5000, 5000), (1600, 1200)),  # never upscaled
    ((1600, 1200), None, (1600, 1200)),
    ((4000, 10), (100, 100), (100, 1)),  # never below one pixel
])
def test_fit_keeps_the_aspect_ratio_inside_the_box(size: tuple[int, int],
                                                   box: tuple[int, int] | None,
                                                   expected: tuple[int, int]) -> None:
    assert fit(*size, box) == expected


def test_embedded_profile_survives_chunking(phone: tuple[bytes, bytes]) -> None:
    jpeg, _ = phone
    big = os.urandom(150_000)  # needs three APP2 segments
    assert Image.open(io.BytesIO(embed_icc(jpeg, big))).info["icc_profile"] == big
    assert strip_jpeg(embed_icc(jpeg, big)) == jpeg


@pytest.mark.parametrize("box", [(256, 256), (390, 844), (1280, 800), (2100, 2100)])
def test_rendering_fits_the_viewport_and_keeps_the_profile(phone: tuple[bytes, bytes],
                                                           box: tuple[int, int]) -> None:
    jpeg, icc = phone
    rendition = render_frame(jpeg, box=box, icc_profile=icc)
    assert (rendition.width, rendition.height) == fit(4032, 3024, box)
    assert size_of(rendition.data) == (rendition.width, rendition.height)
    assert Image.open(io.BytesIO(rendition.data)).info["icc_profile"] == icc


def test_full_size_is_the_stored_bitstream(phone: tuple[bytes, bytes]) -> None:
    jpeg, icc = phone
    full = render_frame(jpeg, icc_profile=icc)
    assert strip_jpeg(full.data) == jpeg and full.data != jpeg
    assert render_frame(jpeg).data == jpeg  # no profile to add: the bytes as stored


def test_png_and_srgb_conversion(phone: tuple[bytes, bytes]) -> None:
    jpeg, icc = phone
    png = render_frame(jpeg, box=(200, 200), media_type="image/png", icc_profile=icc)
    assert png.data.startswith(b"\x89PNG") and size_of(png.data) == (200, 150)
    as_p3 = render_thumbnail(jpeg, icc_profile=icc)
    as_srgb = render_thumbnail(jpeg, icc_profile=icc, to_srgb=True)
    image = Image.open(io.BytesIO(as_srgb.data))
    assert image.info["icc_profile"] == srgb_profile()
    description = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(
        io.BytesIO(image.info["icc_profile"])))
    assert "sRGB" in description
    assert as_p3.data != as_srgb.data
    with pytest.raises(ValueError):
        render_frame(jpeg, media_type="image/gif")


def test_accept_headers_are_parsed_like_clients_send_them() -> None:
    ranges = media.accepted('multipart/related; type=application/octet-stream; '
                            'transfer-syntax=*, image/png;q=0.5, image/jpeg;q=0')
    assert [(r.media_type, r.params, r.q) for r in ranges] == [
        ("multipart/related", {"type": "application/octet-stream", "transfer-syntax": "*"}, 1.0),
        ("image/png", {}, 0.5)]
    assert [r.media_type for r in media.accepted(None)] == ["*/*"]


@pytest.mark.parametrize(("accept", "expected"), [
    (None, "image/jpeg"),
    ('multipart/related; type="image/jpeg"', "image/jpeg"),
    ("multipart/related; type=application/octet-stream; transfer-syntax=*",
     "application/octet-stream"),
    (f"multipart/related; type=application/octet-stream; transfer-syntax={JPEG_BASELINE}",
     "application/octet-stream"),
    ("multipart/related; type=application/octet-stream", None),  # means uncompressed
    ("multipart/related; type=image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.70", None),
])
def test_frames_go_as_stored_or_not_at_all(accept: str | None, expected: str | None) -> None:
    assert media.bulk_type(media.accepted(accept), JPEG_BASELINE) == expected


@pytest.mark.parametrize(("accept", "ok"), [
    (None, True), ("*/*", True), ('multipart/related; type="application/dicom"', True),
    (f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}', True),
    ('multipart/related; type="application/dicom"; transfer-syntax=*', True),
    ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1', False),
    ('multipart/related; type="application/dicom+xml"', False), ("application/json", False),
])
def test_instances_only_in_their_stored_transfer_syntax(accept: str | None, ok: bool) -> None:
    assert media.accepts_multipart(media.accepted(accept), media.DICOM, JPEG_BASELINE) is ok


def test_rendered_type_follows_preferences() -> None:
    offered = ("image/jpeg", "image/png")
    assert media.rendered_type(media.accepted("image/png, image/jpeg;q=0.8"), offered) \
        == "image/png"
    assert media.rendered_type(media.accepted("image/*"), offered) == "image/jpeg"
    assert media.rendered_type(media.accepted("image/gif"), offered) is None


def test_multipart_bodies_parse_strictly() -> None:
    parts = [media.Part("application/dicom", lambda: b"first\r\n--not-a-boundary"),
             media.Part("application/dicom", lambda: b"")]
    marker = media.boundary()
    body = b"".join(media.multipart(parts, marker))
    content_type = media.multipart_content_type(media.DICOM, marker)
    assert parse_multipart(content_type, body) == [
        ({"Content-Type": "application/dicom"}, b"first\r\n--not-a-boundary"),
        ({"Content-Type": "application/dicom"}, b"")]
    assert media.boundary() != marker
