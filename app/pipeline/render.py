"""Render a VL photograph's JPEG frame (or a video clip's first picture, or the decoded pixels
of an image another device stored uncompressed, RLE, JPEG-LS or JPEG 2000) for display: fitted
to a viewport, as JPEG or PNG.

Pure: bytes in, bytes out. A 12 MP phone JPEG is reduced inside libjpeg (DCT scaling by 2, 4 or
8, see :func:`app.pipeline.decode.load_pixels`) to the smallest size that still covers the
target, then area-averaged to it, so a thumbnail costs a fraction of a full decode. When no
scaling is needed the stored bitstream is returned as it is (only the ICC profile spliced in),
so the full-resolution view shows the very pixels that were captured.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageCms
from pydicom import Dataset
from pydicom.encaps import generate_fragments, generate_frames
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import JPEGBaseline8Bit

from app.pipeline.decode import (
    DEFAULT_MAX_PIXELS,
    UnreadablePhotoError,
    check_pixels,
    load_pixels,
    probe,
    strip_jpeg,
)
from app.pipeline.dicom.builder import srgb_profile
from app.pipeline.dicom.read import UnreadableDicomError, read_part10
from app.pipeline.video import UnreadableVideoError, poster_jpeg, unpadded_mp4

RENDERED_MEDIA_TYPES = ("image/jpeg", "image/png")
"""What :func:`render_frame` can produce, in order of preference."""

DEFAULT_QUALITY = 90
THUMBNAIL_BOX = (256, 256)
THUMBNAIL_QUALITY = 80

_COLOURS = ("RGB", "YBR_FULL", "YBR_FULL_422", "MONOCHROME1", "MONOCHROME2")
"""Photometric Interpretations of the images :func:`image_frame` decodes (8-bit)."""
_ICC_CHUNK = 65519  # APP2 payload limit (65533) minus the 14-byte ICC_PROFILE header
_REDUCTIONS = (8, 4, 2, 1)


@dataclass(frozen=True)
class Rendition:
    """A rendered image: its bytes, media type and pixel size."""

    data: bytes
    media_type: str
    width: int
    height: int


@dataclass(frozen=True)
class StoredFrame:
    """The first frame of a stored instance as its bitstream, and the instance's ICC profile."""

    frame: bytes
    icc_profile: bytes | None


@dataclass(frozen=True)
class DecodedFrame:
    """The first frame of an image stored in a Transfer Syntax other than JPEG Baseline,
    decoded to 8-bit RGB (rows × columns × 3), and the instance's ICC profile."""

    frame: np.ndarray
    icc_profile: bytes | None


class UnrenderableError(ValueError):
    """A readable image that this server cannot render (no decoder here for its Transfer
    Syntax, more than 8 bits, an unusual colour model); the message names no value."""


def stored_frame(part10: bytes) -> StoredFrame:
    """The (first) frame and ICC profile of a VL photograph's DICOM Part 10 bytes.

    Guarantees: the frame is the encapsulated bitstream as stored (JPEG for our photographs),
    never decoded; raises only :class:`UnreadableDicomError` for bytes that are not such an
    instance.
    """
    return _stored_frame(read_part10(part10))


def _icc_profile(ds: Dataset) -> bytes | None:
    profile = ds.get("ICCProfile")
    return bytes(profile) if profile is not None else None


def _stored_frame(ds: Dataset) -> StoredFrame:
    try:
        return StoredFrame(next(generate_frames(ds.PixelData, number_of_frames=1)),
                           _icc_profile(ds))
    except Exception as exc:  # no or damaged Pixel Data: pydicom raises many types
        raise UnreadableDicomError(f"no readable frame ({type(exc).__name__})") from exc


def image_frame(part10: bytes, max_pixels: int = DEFAULT_MAX_PIXELS
                ) -> StoredFrame | DecodedFrame:
    """What :func:`render_frame` renders an image instance from: the stored JPEG bitstream of
    a JPEG Baseline instance (ours), else its first frame decoded (see :class:`DecodedFrame`).

    Guarantees: Rows × Columns is checked against ``max_pixels`` before any decoder runs;
    raises :class:`UnreadableDicomError` for bytes or pixel data that cannot be read and
    :class:`UnrenderableError` for an image we have no way to show (or over the cap).
    """
    ds = read_part10(part10)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax == JPEGBaseline8Bit:
        return _stored_frame(ds)
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits, colour = int(ds.BitsAllocated), str(ds.PhotometricInterpretation)
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise UnrenderableError("no decoder for this Transfer Syntax") from exc
    except Exception as exc:  # attributes missing or damaged: pydicom raises many types
        raise UnreadableDicomError(f"no readable image attributes ({type(exc).__name__})") \
            from exc
    try:
        check_pixels(columns, rows, max_pixels)
    except UnreadablePhotoError as exc:  # its message names the size and the cap, no value
        raise UnrenderableError(str(exc)) from exc
    if bits != 8 or colour not in _COLOURS:
        raise UnrenderableError("only 8-bit RGB, YBR or monochrome images are rendered")
    if not decoder.is_available:
        raise UnrenderableError("no decoder for this Transfer Syntax is installed")
    try:
        pixels = pixel_array(ds, index=0)  # YBR arrives converted to RGB
    except Exception as exc:  # damaged pixel data: decoders raise many types
        raise UnreadableDicomError(f"pixel data not decodable ({type(exc).__name__})") \
            from exc
    if colour.startswith("MONOCHROME"):
        gray = 255 - pixels if colour == "MONOCHROME1" else pixels
        pixels = np.repeat(gray[..., np.newaxis], 3, axis=2)
    return DecodedFrame(np.ascontiguousarray(pixels, dtype=np.uint8), _icc_profile(ds))


def stored_clip(part10: bytes) -> bytes:
    """The MP4 a Video Photographic Image encapsulates (its fragments joined, without the
    even-length pad: the file as stored). Raises only :class:`UnreadableDicomError`."""
    ds = read_part10(part10)
    try:
        fragments = list(generate_fragments(ds.PixelData))[1:]  # after the offset table
    except Exception as exc:  # no or damaged Pixel Data: pydicom raises many types
        raise UnreadableDicomError(f"no readable clip ({type(exc).__name__})") from exc
    return unpadded_mp4(b"".join(fragments))


def poster_frame(part10: bytes) -> StoredFrame:
    """A video object's first picture as a JPEG frame, for :func:`render_frame` and
    :func:`render_thumbnail` to render as they render a photo's. Raises only
    :class:`UnreadableDicomError`."""
    try:
        return StoredFrame(poster_jpeg(stored_clip(part10)), None)
    except UnreadableVideoError as exc:
        raise UnreadableDicomError(str(exc)) from exc


def fit(width: int, height: int, box: tuple[int, int] | None) -> tuple[int, int]:
    """The size of a ``width``×``height`` image fitted inside ``box`` (aspect ratio kept).

    Guarantees: never larger than the image (no upscaling), never smaller than 1×1; ``None``
    means the image's own size.
    """
    if box is None:
        return width, height
    scale = min(box[0] / width, box[1] / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def embed_icc(jpeg: bytes, profile: bytes) -> bytes:
    """``jpeg`` with ``profile`` as APP2 ICC_PROFILE segments right after SOI.

    Guarantees: the entropy-coded data is untouched; the input must carry no ICC segments of
    its own (callers pass stripped frames).
    """
    chunks = [profile[i:i + _ICC_CHUNK] for i in range(0, len(profile), _ICC_CHUNK)]
    segments = b"".join(
        b"\xff\xe2" + struct.pack(">H", 2 + 14 + len(chunk)) + b"ICC_PROFILE\x00"
        + bytes((n, len(chunks))) + chunk
        for n, chunk in enumerate(chunks, start=1))
    return jpeg[:2] + segments + jpeg[2:]


def _reduction(width: int, height: int, target: tuple[int, int]) -> int:
    """The largest DCT reduction whose output still covers ``target`` in both directions."""
    for factor in _REDUCTIONS:
        if -(-width // factor) >= target[0] and -(-height // factor) >= target[1]:
            return factor
    return 1


def _to_srgb(rgb: np.ndarray, profile: bytes) -> np.ndarray:
    """Pixels converted from ``profile`` to sRGB (perceptual intent)."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    target = ImageCms.ImageCmsProfile(io.BytesIO(srgb_profile()))
    converted = ImageCms.profileToProfile(Image.fromarray(rgb), source, target, outputMode="RGB")
    return np.asarray(converted)


def render_frame(frame: bytes | np.ndarray, *, box: tuple[int, int] | None = None,
                 media_type: str = "image/jpeg", quality: int | None = None,
                 icc_profile: bytes | None = None, to_srgb: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Rendition:
    """Render one JPEG frame (or decoded RGB pixels, see :class:`DecodedFrame`) fitted
    inside ``box`` as ``media_type``.

    ``icc_profile`` is the instance's profile: it is embedded in the output (or, with
    ``to_srgb``, the pixels are converted to sRGB and the sRGB profile embedded; a profile
    that is our sRGB one already needs no conversion); ``None`` embeds nothing.
    Guarantees: the output fits ``box`` with the aspect ratio kept; a JPEG request at full size
    without a quality or colour conversion returns the stored bitstream unchanged apart from
    the embedded profile; the frame's header is checked against ``max_pixels`` before any
    decoding.
    """
    if media_type not in RENDERED_MEDIA_TYPES:
        raise ValueError(f"cannot render as {media_type}")
    convert = to_srgb and icc_profile is not None and icc_profile != srgb_profile()
    if isinstance(frame, np.ndarray):
        target = fit(frame.shape[1], frame.shape[0], box)
        rgb = frame if (frame.shape[1], frame.shape[0]) == target else cv2.resize(
            frame, target, interpolation=cv2.INTER_AREA)
    else:
        info = probe(frame, max_pixels)
        width, height = info.oriented_size
        target = fit(width, height, box)
        if (target == (width, height) and media_type == "image/jpeg" and quality is None
                and not convert and info.orientation == 1):
            jpeg = strip_jpeg(frame)
            return Rendition(embed_icc(jpeg, icc_profile) if icc_profile else jpeg,
                             media_type, width, height)
        bgr = load_pixels(frame, reduce=_reduction(width, height, target),
                          max_pixels=max_pixels)
        if (bgr.shape[1], bgr.shape[0]) != target:
            bgr = cv2.resize(bgr, target, interpolation=cv2.INTER_AREA)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    profile = icc_profile
    if convert and icc_profile is not None:
        rgb = _to_srgb(rgb, icc_profile)
        profile = srgb_profile()
    buf = io.BytesIO()
    options: dict[str, object] = {"icc_profile": profile} if profile else {}
    if media_type == "image/jpeg":
        Image.fromarray(rgb).save(buf, "JPEG", quality=quality or DEFAULT_QUALITY,
                                  subsampling="4:2:0", **options)
    else:
        Image.fromarray(rgb).save(buf, "PNG", compress_level=1, **options)
    return Rendition(buf.getvalue(), media_type, target[0], target[1])


def render_thumbnail(frame: bytes | np.ndarray, *, box: tuple[int, int] = THUMBNAIL_BOX,
                     media_type: str = "image/jpeg", icc_profile: bytes | None = None,
                     to_srgb: bool = False,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> Rendition:
    """A small preview of the frame (see :func:`render_frame`), at thumbnail quality."""
    return render_frame(frame, box=box, media_type=media_type,
                        quality=THUMBNAIL_QUALITY if media_type == "image/jpeg" else None,
                        icc_profile=icc_profile, to_srgb=to_srgb, max_pixels=max_pixels)
