"""Untrusted image bytes → a checked, oriented, metadata-free photo.

Everything here reads the header first (type sniffed from the bytes, never the file name; width
and height from the header) and refuses images over a pixel cap before any decoder runs, so a
small compressed "bomb" cannot make us allocate gigabytes.

A phone JPEG that is already upright and baseline is kept **bit-exact**: only its metadata
segments (EXIF/GPS, XMP, IPTC, ICC chunks, MakerNote, comments, thumbnails, MPF) and whatever
follows the End Of Image marker are dropped. Anything else (rotation needed, progressive JPEG,
PNG, HEIC, TIFF, WebP) is decoded once and encoded once as baseline JPEG.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps

# app/pipeline/__init__.py has set OPENCV_IO_MAX_IMAGE_PIXELS before cv2 could load.
# Re-exported (the redundant alias says so to mypy): callers take the cap from here.
from app.pipeline import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS

Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS


@cache
def _enable_heif() -> None:
    """Teach Pillow HEIC/HEIF (iPhones) the first time one arrives: libheif and its codecs
    cost every process a few MB that most never need."""
    import pillow_heif

    pillow_heif.register_heif_opener()

JPEG_QUALITY = 95
"""Quality for the one encode of a photo that cannot pass through (visually lossless)."""

MEDIA_TYPES = ("image/jpeg", "image/png", "image/heic", "image/tiff", "image/webp")


class UnreadablePhotoError(ValueError):
    """The bytes are not a photo we can accept; the message says why, in words for a user."""


@dataclass(frozen=True)
class PhotoInfo:
    """What the header says about a photo; nothing here needed a pixel decoder.

    ``width``/``height`` are as stored (before EXIF orientation); ``oriented_size`` is upright.
    """

    media_type: str
    width: int
    height: int
    orientation: int = 1
    make: str | None = None
    model: str | None = None
    software: str | None = None
    acquired: datetime | None = None
    icc_profile: bytes | None = None

    @property
    def oriented_size(self) -> tuple[int, int]:
        """(width, height) after applying the EXIF orientation."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (
            self.width, self.height)


@dataclass(frozen=True)
class PreparedPhoto:
    """A photo ready to be wrapped: an upright baseline JPEG (8-bit, YCbCr) without metadata.

    ``passthrough`` is true when ``jpeg`` is the uploaded bitstream with only metadata removed.
    """

    jpeg: bytes
    width: int
    height: int
    info: PhotoInfo
    passthrough: bool


# --- sniffing and header parsing -------------------------------------------------------------

def sniff(data: bytes) -> str:
    """Return the media type from the leading bytes; raise if it is none we accept."""
    if not data:
        raise UnreadablePhotoError("the upload is empty")
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"heim",
                                                 b"heis", b"hevc", b"hevx"):
        return "image/heic"
    raise UnreadablePhotoError("not a supported image (expected JPEG, PNG, HEIC, TIFF or WebP)")


@dataclass(frozen=True)
class _Jpeg:
    """Layout of a JPEG stream: what to keep, where it ends, what its frame header says."""

    keep: tuple[tuple[int, int], ...]  # (start, end) byte ranges to copy, SOI and EOI included
    sof: int  # SOF marker (0xC0 baseline, 0xC2 progressive, ...)
    precision: int
    width: int
    height: int
    component_ids: bytes
    exif: bytes | None
    icc_profile: bytes | None
    adobe_transform: int | None


# Phones append legitimate data after EOI (MPF secondary images, Samsung trailers); a web page
# or script there makes the file a polyglot, which we refuse rather than quietly clean.
_MARKUP = re.compile(rb"<(?:!doctype|html|head|body|script|iframe|svg[\s>]|\?php)", re.IGNORECASE)
_REAL_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                          0xCE, 0xCF})
_KEEP_MARKERS = frozenset({0xDB, 0xC4, 0xDD, 0xDC, 0xCC}) | _SOF_MARKERS  # tables, DRI, DNL


def _parse_jpeg(data: bytes) -> _Jpeg:
    """Walk the marker segments of a JPEG; raise if it is truncated or malformed."""
    n = len(data)
    keep: list[tuple[int, int]] = [(0, 2)]
    sof = precision = width = height = 0
    component_ids = b""
    exif: bytes | None = None
    icc_chunks: dict[int, bytes] = {}
    adobe: int | None = None
    pos = 2
    while True:
        while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 2 > n:
            raise UnreadablePhotoError("the JPEG is truncated (no end-of-image marker)")
        if data[pos] != 0xFF:
            raise UnreadablePhotoError("the JPEG is corrupt (marker expected)")
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI: everything after it is dropped
            if _MARKUP.search(data, pos + 2):
                raise UnreadablePhotoError("the JPEG carries other content (markup or script) "
                                           "after the end of the image")
            keep.append((pos, pos + 2))
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        if pos + 4 > n:
            raise UnreadablePhotoError("the JPEG is truncated")
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        end = pos + 2 + length
        if length < 2 or end > n:
            raise UnreadablePhotoError("the JPEG is truncated or has a corrupt segment")
        body = data[pos + 4:end]
        if marker in _SOF_MARKERS:
            if len(body) < 6:
                raise UnreadablePhotoError("the JPEG has a corrupt frame header")
            precision, height, width, ncomp = struct.unpack(">BHHB", body[:6])
            component_ids = bytes(body[6 + 3 * i] for i in range(ncomp) if 6 + 3 * i < len(body))
            sof = marker
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00") and exif is None:
            exif = bytes(body)
        elif marker == 0xE2 and body.startswith(b"ICC_PROFILE\x00") and len(body) > 14:
            icc_chunks[body[12]] = bytes(body[14:])
        elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            adobe = body[11]
        if marker == 0xDA:  # start of scan: header, then entropy-coded data up to the next marker
            if not sof:
                raise UnreadablePhotoError("the JPEG has a scan before its frame header")
            found = _REAL_MARKER.search(data, end)
            if found is None:
                raise UnreadablePhotoError("the JPEG is truncated (no end-of-image marker)")
            keep.append((pos, found.start()))
            pos = found.start()
            continue
        if marker in _KEEP_MARKERS or (marker == 0xEE and adobe is not None):
            keep.append((pos, end))
        pos = end
    if not sof or width == 0 or height == 0:
        raise UnreadablePhotoError("the JPEG has no usable frame header")
    icc = b"".join(icc_chunks[k] for k in sorted(icc_chunks)) or None
    return _Jpeg(tuple(keep), sof, precision, width, height, component_ids, exif, icc, adobe)


# --- EXIF values ------------------------------------------------------------------------------

_EXIF_IFD = 0x8769


def _exif_values(exif: Image.Exif) -> dict[str, object]:
    """Orientation, make, model, software and acquisition time from parsed EXIF."""
    sub = exif.get_ifd(_EXIF_IFD)

    def text(value: object) -> str | None:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not isinstance(value, str):
            return None
        value = value.replace("\x00", "").strip()
        return value or None

    orientation = exif.get(0x0112, 1)
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        orientation = 1
    return {
        "orientation": orientation,
        "make": text(exif.get(0x010F)),
        "model": text(exif.get(0x0110)),
        "software": text(exif.get(0x0131)),
        "acquired": _exif_datetime(text(sub.get(0x9003)) or text(exif.get(0x0132)),
                                   text(sub.get(0x9291)), text(sub.get(0x9011))),
    }


def _exif_datetime(stamp: str | None, subsec: str | None, offset: str | None) -> datetime | None:
    """EXIF 'YYYY:MM:DD HH:MM:SS' (+ sub-seconds, + '+HH:MM') as a datetime, or None."""
    if not stamp:
        return None
    try:
        value = datetime.strptime(stamp[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    if subsec and subsec.isdigit():
        value = value.replace(microsecond=int(subsec[:6].ljust(6, "0")))
    if offset and re.fullmatch(r"[+-]\d\d:\d\d", offset):
        sign = -1 if offset[0] == "-" else 1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        value = value.replace(tzinfo=timezone(sign * delta))
    return value


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse (:class:`UnreadablePhotoError`) a size without pixels or over ``max_pixels``."""
    if width <= 0 or height <= 0:
        raise UnreadablePhotoError("the image has no pixels")
    if width * height > max_pixels:
        raise UnreadablePhotoError(
            f"the image is too large ({width}×{height} pixels; the limit is "
            f"{max_pixels // 1_000_000} megapixels)")


def probe(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> PhotoInfo:
    """Read type, size, orientation, EXIF values and ICC profile from the header only.

    Guarantees: no pixel data is decoded; an image over ``max_pixels`` is refused here.
    """
    info, _ = _probe(data, max_pixels)
    return info


def _probe(data: bytes, max_pixels: int) -> tuple[PhotoInfo, _Jpeg | None]:
    media_type = sniff(data)
    if media_type == "image/jpeg":
        layout = _parse_jpeg(data)
        check_pixels(layout.width, layout.height, max_pixels)
        values: dict[str, object] = {}
        if layout.exif:
            exif = Image.Exif()
            try:
                exif.load(layout.exif)
                values = _exif_values(exif)
            except Exception:  # a broken EXIF block costs us its values, not the photo
                values = {}
        return PhotoInfo(media_type, layout.width, layout.height,
                         icc_profile=layout.icc_profile, **values), layout  # type: ignore[arg-type]
    if media_type == "image/heic":
        _enable_heif()
    try:
        with Image.open(io.BytesIO(data)) as im:  # lazy: reads the header, decodes nothing
            width, height = im.size
            check_pixels(width, height, max_pixels)
            try:
                values = _exif_values(im.getexif())
            except Exception:
                values = {}
            icc = im.info.get("icc_profile") or None
    except UnreadablePhotoError:
        raise
    except Image.DecompressionBombError as exc:
        raise UnreadablePhotoError("the image is too large") from exc
    except Exception as exc:
        raise UnreadablePhotoError(f"the {media_type.split('/')[1].upper()} image "
                                   "cannot be read") from exc
    return PhotoInfo(media_type, width, height, icc_profile=icc, **values), None  # type: ignore[arg-type]


# --- producing the JPEG we store ---------------------------------------------------------------

def _is_ycbcr(layout: _Jpeg) -> bool:
    if len(layout.component_ids) != 3:
        return False
    if layout.adobe_transform is not None:
        return layout.adobe_transform == 1
    return layout.component_ids != b"RGB"


def prepare_for_dicom(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> PreparedPhoto:
    """Turn uploaded bytes into an upright baseline JPEG with no metadata segments.

    Guarantees: a baseline 8-bit YCbCr JPEG that needs no rotation is returned bit-exact apart
    from removed segments (``passthrough=True``); anything else is decoded and encoded exactly
    once. Raises :class:`UnreadablePhotoError` for anything we cannot accept.
    """
    info, layout = _probe(data, max_pixels)
    if (layout is not None and layout.sof == 0xC0 and layout.precision == 8
            and _is_ycbcr(layout) and info.orientation == 1):
        jpeg = b"".join(data[a:b] for a, b in layout.keep)
        return PreparedPhoto(jpeg, layout.width, layout.height, info, passthrough=True)
    rgb = _decode_rgb(data, info)
    jpeg = encode_jpeg(rgb, rgb_order=True)
    height, width = rgb.shape[:2]
    return PreparedPhoto(jpeg, width, height, info, passthrough=False)


def strip_jpeg(data: bytes) -> bytes:
    """The JPEG stream without metadata segments or trailing bytes (bit-exact otherwise)."""
    layout = _parse_jpeg(data)
    return b"".join(data[a:b] for a, b in layout.keep)


def encode_jpeg(pixels: np.ndarray, *, rgb_order: bool = False,
                quality: int = JPEG_QUALITY) -> bytes:
    """Encode an 8-bit 3-channel image (BGR unless ``rgb_order``) as baseline JPEG, 4:2:2.

    Guarantees: SOF0, 8-bit YCbCr, no metadata segments (ready for DICOM JPEG Baseline).
    """
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if rgb_order else pixels
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality,
                                         cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                         cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422])
    if not ok:  # pragma: no cover - encoding a valid array does not fail
        raise UnreadablePhotoError("the image could not be encoded")
    return strip_jpeg(buf.tobytes())


# --- pixels ----------------------------------------------------------------------------------

_DCT_SCALES = (2, 4, 8)  # reductions libjpeg does inside the decoder
_ORIENT = {  # EXIF orientation → (mirror first, then rotate) to make the stored image upright
    2: (True, None), 3: (False, cv2.ROTATE_180), 4: (True, cv2.ROTATE_180),
    5: (True, cv2.ROTATE_90_COUNTERCLOCKWISE), 6: (False, cv2.ROTATE_90_CLOCKWISE),
    7: (True, cv2.ROTATE_90_CLOCKWISE), 8: (False, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    mirror, rotate = _ORIENT.get(orientation, (False, None))
    if mirror:
        pixels = cv2.flip(pixels, 1)
    if rotate is not None:
        pixels = cv2.rotate(pixels, rotate)
    return pixels


def _decode_rgb(data: bytes, info: PhotoInfo) -> np.ndarray:
    """Decode any accepted format to an upright RGB uint8 array (header already checked)."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            im = ImageOps.exif_transpose(opened)
            if im.mode not in ("RGB", "L"):
                im = im.convert("RGBA").convert("RGB") if "A" in im.mode or im.mode == "P" \
                    else im.convert("RGB")
            rgb = np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise UnreadablePhotoError(
            f"the {info.media_type.split('/')[1].upper()} image is corrupt or truncated") from exc
    return np.ascontiguousarray(rgb)


def load_pixels(data: bytes, *, reduce: int = 1,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode to an upright (EXIF-oriented) BGR uint8 array, optionally reduced ``reduce``×.

    JPEG is reduced inside libjpeg (DCT scaling, 2/4/8), which is several times faster than
    decoding at full size; other formats are decoded and resized with area averaging.
    Guarantees: the header is checked against ``max_pixels`` before any decoder runs.
    """
    info, layout = _probe(data, max_pixels)
    return _decode(data, info, layout, reduce)


def load_pixels_within(data: bytes, max_output_pixels: int, *,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, int]:
    """`load_pixels` reduced by `reduction_for` the photo's size and ``max_output_pixels``
    (0: full size); returns the pixels and the factor used. The header is read once."""
    info, layout = _probe(data, max_pixels)
    factor = reduction_for(info.width * info.height, max_output_pixels)
    return _decode(data, info, layout, factor), factor


def _decode(data: bytes, info: PhotoInfo, layout: _Jpeg | None, reduce: int) -> np.ndarray:
    if layout is not None:
        scale = reduce if reduce in _DCT_SCALES else 1
        # libjpeg-turbo through simplejpeg: the same pixels as cv2.imdecode (DCT scaling,
        # CMYK, damaged entropy data decoded as far as it goes), a quarter less CPU at 12 MP.
        try:
            bgr = simplejpeg.decode_jpeg(data, "BGR", strict=False,
                                         min_height=-(-layout.height // scale),
                                         min_width=-(-layout.width // scale))
        except ValueError as exc:
            raise UnreadablePhotoError("the JPEG is corrupt") from exc
        bgr = _orient(bgr, info.orientation)
        if scale != reduce and reduce > 1:
            bgr = _shrink(bgr, reduce)
        return bgr
    bgr = cv2.cvtColor(_decode_rgb(data, info), cv2.COLOR_RGB2BGR)
    return _shrink(bgr, reduce) if reduce > 1 else bgr


def reduction_for(pixels: int, max_output_pixels: int) -> int:
    """The smallest of the JPEG DCT scale factors 1, 2, 4, 8 that brings an image of ``pixels``
    within ``max_output_pixels`` (8 when none does; 1 when ``max_output_pixels`` is 0)."""
    if max_output_pixels <= 0:
        return 1
    return next((f for f in (1, 2, 4) if pixels <= max_output_pixels * f * f), 8)


def _shrink(pixels: np.ndarray, factor: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    size = (max(1, w // factor), max(1, h // factor))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
