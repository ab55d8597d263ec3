"""Barcodes in a photo: zxing-cpp and zbar (pyzbar) chained, cheap passes first.

The chain stops at the first pass that yields a plausible symbol:

1. zxing-cpp on a *reduced* grey image (JPEG: libjpeg DCT scaling), fast settings;
2. zbar on the same image (it reads some small or blurred Code 128 / QR that zxing-cpp misses);
3. both readers at full resolution, only when the photo was reduced;
4. rescue passes on the working image: zxing-cpp with every option, with a global binarizer,
   on each dominant bar direction turned upright (zxing-cpp reads PDF417 and linear codes only
   within ~15° of the axes), sharpened, and — for small images — enlarged twice.

Misreads are worse than "not found", so results are filtered: zxing-cpp results must be valid
(error correction / checksum passed); linear payloads shorter than ``MIN_LINEAR_LENGTH`` are
dropped (Code 39 has no checksum; short reads are fragments); two different payloads of one
symbology at the same place cancel each other; and a *weak* read — a 2D symbol that needed all
of its error correction, or a zbar linear read from fewer than ``MIN_ZBAR_LINEAR_QUALITY`` scan
lines — counts only once another pass has read the same payload. On the test photos every
misread either reader produced was weak in this sense, and right weak reads were nearly always
read again by another pass.
Only Code 128, Code 39, QR Code, PDF417 and Data Matrix (what wristbands carry) are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import zxingcpp

from app.pipeline.decode import DEFAULT_MAX_PIXELS, load_pixels, probe, sniff

try:
    from pyzbar import pyzbar
except (ImportError, OSError):  # libzbar0 absent (ImportError) or unloadable (OSError)
    pyzbar = None

ZBAR_AVAILABLE = pyzbar is not None
"""Whether zbar (libzbar0, through pyzbar) could be loaded. Without it every pass is
zxing-cpp's alone: wristbands are still read, the few that only zbar reads are not."""

SYMBOLOGIES = ("Code128", "Code39", "QRCode", "PDF417", "DataMatrix")
"""Symbologies we read, by the names used in :attr:`Barcode.symbology`."""

LINEAR = frozenset({"Code128", "Code39"})

WORK_LONG_SIDE = 1600
"""A photo is reduced 2×, 4× or 8× while its long side stays at least this many pixels."""

MIN_LINEAR_LENGTH = 4
"""Shortest Code 128 / Code 39 payload returned (no wristband ID is shorter)."""

MIN_ZBAR_LINEAR_QUALITY = 2
"""zbar's quality counts the scan lines that agreed; its misreads on our photos are all at 1."""

LABEL_LONG_SIDE = 500
"""The label scan (:func:`read_label_barcodes`) reduces a photo 2×, 4× or 8× while its long side
stays at least this many pixels (12 MP: about 500 × 380)."""

SMALL_LONG_SIDE = 1024
"""Images whose long side is at most this are also tried enlarged 2× (thin bars, tiny crops)."""

_ZXING_NAMES = {
    zxingcpp.BarcodeFormat.Code128: "Code128",
    zxingcpp.BarcodeFormat.Code39: "Code39",
    zxingcpp.BarcodeFormat.QRCode: "QRCode",
    zxingcpp.BarcodeFormat.PDF417: "PDF417",
    zxingcpp.BarcodeFormat.DataMatrix: "DataMatrix",
}
_ZXING_FORMATS = zxingcpp.BarcodeFormats(tuple(_ZXING_NAMES))
_ZBAR_NAMES = {"CODE128": "Code128", "CODE39": "Code39", "QRCODE": "QRCode"}
_ZBAR_SYMBOLS = [pyzbar.ZBarSymbol.CODE128, pyzbar.ZBarSymbol.CODE39,
                 pyzbar.ZBarSymbol.QRCODE] if pyzbar is not None else []

Point = tuple[float, float]


@dataclass(frozen=True)
class Barcode:
    """One symbol read from a photo.

    ``payload`` is the decoded text: GS1 data in plain element-string form (AIs without
    parentheses, GS between variable-length fields, no leading FNC1); binary content as
    ISO-8859-1 characters. ``raw`` holds the bytes the reader reported. ``gs1`` is true when
    the reader saw FNC1 (GS1) mode — zbar cannot report it, so it is false for zbar reads.
    ``reader`` is ``"<library>:<pass>"``: library ``zxing-cpp`` or ``zbar``; pass ``image`` (as
    given), ``reduced``, ``full``, ``thorough``, ``global``, ``upright``, ``sharpened`` or
    ``enlarged`` (see the module docstring).
    ``corners`` outline the symbol in the EXIF-oriented full-resolution image: zxing-cpp gives
    its four corners, zbar a polygon around the scan lines that read it.
    """

    symbology: str
    payload: str
    raw: bytes
    gs1: bool
    reader: str
    corners: tuple[Point, ...]


@dataclass(frozen=True)
class _View:
    """A grey image a reader sees, and the 2×3 affine map from its pixels to the full image."""

    gray: np.ndarray
    to_full: np.ndarray

    def points(self, pts: list[Point]) -> tuple[Point, ...]:
        """Map points of this view into the full-resolution image."""
        mapped = np.asarray(pts, np.float64) @ self.to_full[:, :2].T + self.to_full[:, 2]
        return tuple((round(float(x), 1), round(float(y), 1)) for x, y in mapped)


@dataclass(frozen=True)
class _Read:
    """A reader's result; a ``weak`` one needs the same payload from another pass."""

    barcode: Barcode
    weak: bool


def _scaled(gray: np.ndarray, sx: float, sy: float) -> _View:
    return _View(gray, np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0]]))


def _then(to_full: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``to_full`` after ``inner`` (both 2×3 affines)."""
    composed: np.ndarray = to_full @ np.vstack([inner, [0.0, 0.0, 1.0]])
    return composed


def _gray(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        return pixels
    code = cv2.COLOR_BGRA2GRAY if pixels.shape[2] == 4 else cv2.COLOR_BGR2GRAY
    return cv2.cvtColor(pixels, code)


def _reduction(long_side: int) -> int:
    """Largest of 1, 2, 4, 8 that keeps the long side at least ``WORK_LONG_SIDE``."""
    factor = 1
    while factor < 8 and long_side // (factor * 2) >= WORK_LONG_SIDE:
        factor *= 2
    return factor


# --- readers ----------------------------------------------------------------------------------

def _zxing(view: _View, name: str, *, thorough: bool = False,
           binarizer: zxingcpp.Binarizer = zxingcpp.Binarizer.LocalAverage) -> list[_Read]:
    """Valid zxing-cpp results in ``view``; weak when no error correction was left unused."""
    found = zxingcpp.read_barcodes(
        view.gray, formats=_ZXING_FORMATS, try_rotate=True, try_downscale=thorough,
        try_invert=thorough, binarizer=binarizer, text_mode=zxingcpp.TextMode.Plain)
    out = []
    for b in found:
        symbology = _ZXING_NAMES.get(b.format)
        if symbology is None or not b.valid:
            continue
        p = b.position
        corners = view.points([(c.x, c.y) for c in (p.top_left, p.top_right, p.bottom_right,
                                                    p.bottom_left)])
        barcode = Barcode(symbology, b.text, b.bytes, b.content_type == zxingcpp.ContentType.GS1,
                          f"zxing-cpp:{name}", corners)
        extra = b.extra  # a dict of symbology details, typed as object by zxing-cpp
        unused_ec = extra.get("UEC", 1.0) if isinstance(extra, dict) else 1.0
        out.append(_Read(barcode, weak=unused_ec <= 0.0))
    return out


def _zbar(view: _View, name: str) -> list[_Read]:
    """zbar results in ``view`` (none without zbar, see :data:`ZBAR_AVAILABLE`); linear ones
    under ``MIN_ZBAR_LINEAR_QUALITY`` are weak."""
    out: list[_Read] = []
    if pyzbar is None:
        return out
    for d in pyzbar.decode(view.gray, symbols=_ZBAR_SYMBOLS):
        symbology = _ZBAR_NAMES.get(d.type)
        if symbology is None:
            continue
        linear = symbology in LINEAR
        # Linear symbols default to ISO-8859-1; zbar converts QR text to UTF-8.
        text = d.data.decode("latin-1") if linear else _utf8_or_latin1(d.data)
        barcode = Barcode(symbology, text, d.data, False, f"zbar:{name}",
                          view.points([(pt.x, pt.y) for pt in d.polygon]))
        out.append(_Read(barcode, weak=linear and d.quality < MIN_ZBAR_LINEAR_QUALITY))
    return out


def _utf8_or_latin1(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# --- views for the rescue passes --------------------------------------------------------------

def _rotated(view: _View, degrees: float) -> _View:
    """``view`` turned counter-clockwise by ``degrees`` on a canvas that holds all of it."""
    h, w = view.gray.shape
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    cos, sin = abs(rot[0, 0]), abs(rot[0, 1])
    nw, nh = round(h * sin + w * cos), round(h * cos + w * sin)
    rot[0, 2] += nw / 2 - w / 2
    rot[1, 2] += nh / 2 - h / 2
    gray = cv2.warpAffine(view.gray, rot, (nw, nh), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return _View(gray, _then(view.to_full, cv2.invertAffineTransform(rot)))


def _bar_directions(gray: np.ndarray, most: int = 2, axis_margin: float = 5.0) -> list[float]:
    """Dominant directions (degrees, 0..180) of strongly oriented texture such as bars.

    Uses the structure tensor over 15-pixel blocks of an 800-pixel copy: blocks with high
    energy and coherence vote with their gradient angle; the histogram's peaks (at least 20°
    apart) are returned strongest first, except those within ``axis_margin`` of 0° or 90°, which
    the readers already handle.
    """
    scale = 800 / max(gray.shape)
    small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) \
        if scale < 1 else gray
    g = small.astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    jxx, jyy, jxy = (cv2.blur(a, (15, 15)) for a in (gx * gx, gy * gy, gx * gy))
    energy = jxx + jyy
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (energy + 1e-6)
    angle = np.degrees(0.5 * np.arctan2(2 * jxy, jxx - jyy)) % 180
    mask = (coherence > 0.6) & (energy > np.percentile(energy, 90))
    hist = np.bincount(angle[mask].astype(int) % 180, weights=(energy * coherence)[mask],
                       minlength=180)
    smoothed = np.convolve(np.r_[hist[-3:], hist, hist[:3]], np.ones(7), "valid")
    peaks: list[float] = []
    while len(peaks) < most and smoothed.max() > 0:
        top = int(np.argmax(smoothed))
        smoothed[[(top + d) % 180 for d in range(-10, 11)]] = 0
        if min(top % 90, 90 - top % 90) >= axis_margin:
            peaks.append(float(top))
    return peaks


def _sharpened(view: _View) -> _View:
    blurred = cv2.GaussianBlur(view.gray, (0, 0), 2)
    return _View(cv2.addWeighted(view.gray, 1.8, blurred, -0.8, 0), view.to_full)


def _enlarged(view: _View) -> _View:
    gray = cv2.resize(view.gray, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    return _View(gray, _then(view.to_full, np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])))


# --- the chain --------------------------------------------------------------------------------

FullImage = Callable[[], np.ndarray]
"""Loads the full-resolution grey image when the work image is a reduced copy of it."""


def _passes(work: _View, load_full: FullImage | None) -> Iterator[list[_Read]]:
    """Each pass's results, cheapest first; the caller stops at the first plausible one."""
    name = "image" if load_full is None else "reduced"
    yield _zxing(work, name)
    yield _zbar(work, name)
    if load_full is not None:
        full = _scaled(load_full(), 1.0, 1.0)
        yield _zxing(full, "full")
        yield _zbar(full, "full")
    yield _zxing(work, "thorough", thorough=True)
    yield _zxing(work, "global", thorough=True, binarizer=zxingcpp.Binarizer.GlobalHistogram)
    for degrees in _bar_directions(work.gray):
        upright = _rotated(work, degrees)
        yield _zxing(upright, "upright") + _zbar(upright, "upright")
    yield _zxing(_sharpened(work), "sharpened")
    if max(work.gray.shape) <= SMALL_LONG_SIDE:
        enlarged = _enlarged(work)
        yield _zxing(enlarged, "enlarged") + _zbar(enlarged, "enlarged")


def _overlap(a: tuple[Point, ...], b: tuple[Point, ...], slack: float = 4.0) -> bool:
    """Whether the bounding boxes of two outlines (grown by ``slack`` pixels) intersect."""
    ax: tuple[float, ...]
    ay: tuple[float, ...]
    bx: tuple[float, ...]
    by: tuple[float, ...]
    ax, ay = zip(*a, strict=True)
    bx, by = zip(*b, strict=True)
    return (min(ax) - slack <= max(bx) and min(bx) - slack <= max(ax)
            and min(ay) - slack <= max(by) and min(by) - slack <= max(ay))


def _plausible(found: list[_Read]) -> dict[tuple[str, bytes], _Read]:
    """One pass's reads by (symbology, raw), without short linear payloads and without
    different payloads of one symbology read at the same place; strong beats weak."""
    unique: dict[tuple[str, bytes], _Read] = {}
    for r in found:
        b = r.barcode
        if b.symbology in LINEAR and len(b.payload) < MIN_LINEAR_LENGTH:
            continue
        key = (b.symbology, b.raw)
        if key not in unique or unique[key].weak:
            unique[key] = r
    reads = [r.barcode for r in unique.values()]
    return {key: r for key, r in unique.items()
            if not any(o.symbology == r.barcode.symbology and o.raw != r.barcode.raw
                       and o.corners and r.barcode.corners
                       and _overlap(o.corners, r.barcode.corners) for o in reads)}


def _read(work: np.ndarray, width: int, height: int,
          load_full: FullImage | None) -> list[Barcode]:
    """The first pass's strong reads, plus its weak reads that an earlier pass also made.

    ``work`` is the grey image (maybe reduced) of a ``width``×``height`` upright image.
    """
    view = _scaled(work, width / work.shape[1], height / work.shape[0])
    return _first_accepted(_passes(view, load_full))


def _first_accepted(passes: Iterator[list[_Read]]) -> list[Barcode]:
    """The first pass's strong reads, plus its weak reads that an earlier pass also made."""
    earlier: set[tuple[str, bytes]] = set()
    for found in passes:
        reads = _plausible(found)
        accepted = [r.barcode for key, r in reads.items() if not r.weak or key in earlier]
        if accepted:
            return accepted
        earlier |= reads.keys()
    return []


def read_barcodes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Barcode]:
    """Read the barcodes in an encoded photo (JPEG, PNG, HEIC, TIFF, WebP).

    Guarantees: the header is checked (type, ``max_pixels``) before any pixel is decoded, and
    :class:`~app.pipeline.decode.UnreadablePhotoError` is raised for bytes that are no photo;
    EXIF orientation is applied; the result is the plausible symbols of the first pass that
    found any (see the module docstring), distinct by (symbology, raw), possibly empty.
    """
    if sniff(data) != "image/jpeg":  # decoded at full size anyway; no DCT scaling to use
        return read_barcodes_array(load_pixels(data, max_pixels=max_pixels))
    width, height = probe(data, max_pixels).oriented_size
    factor = _reduction(max(width, height))
    work = _gray(load_pixels(data, reduce=factor, max_pixels=max_pixels))
    if factor == 1:
        return _read(work, width, height, None)
    return _read(work, width, height,
                 lambda: _gray(load_pixels(data, max_pixels=max_pixels)))


def read_label_barcodes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                        size: tuple[int, int] | None = None) -> list[Barcode]:
    """A cheap scan for label frames (batch sorting): zxing-cpp, then zbar, once, on the photo
    reduced (JPEG: DCT scaling) while its long side stays at least ``LABEL_LONG_SIDE`` pixels.

    ``size`` is the photo's upright (width, height) when the caller has probed these bytes
    already (saves reading the header twice). Guarantees: the same header checks, filtering
    and ``corners`` (full upright image) as :func:`read_barcodes`, but no full-resolution or
    rescue pass: a label photographed to fill the frame reads at that scale, and a photo
    without any barcode costs tens of milliseconds at 12 MP instead of the whole chain's
    second or more. Raises ``UnreadablePhotoError``.
    """
    width, height = size or probe(data, max_pixels).oriented_size
    factor = 1
    while factor < 8 and max(width, height) // (factor * 2) >= LABEL_LONG_SIDE:
        factor *= 2
    work = _gray(load_pixels(data, reduce=factor, max_pixels=max_pixels))
    view = _scaled(work, width / work.shape[1], height / work.shape[0])
    return _first_accepted(_label_passes(view))


def _label_passes(view: _View) -> Iterator[list[_Read]]:
    yield _zxing(view, "label")
    yield _zbar(view, "label")


def read_barcodes_array(pixels: np.ndarray) -> list[Barcode]:
    """Read the barcodes in an upright image array (BGR, BGRA or grey, uint8).

    Same chain and guarantees as :func:`read_barcodes`; a large image is first reduced with
    area averaging. Corners are in ``pixels`` coordinates.
    """
    gray = _gray(pixels)
    height, width = gray.shape
    factor = _reduction(max(width, height))
    if factor == 1:
        return _read(gray, width, height, None)
    work = cv2.resize(gray, (width // factor, height // factor), interpolation=cv2.INTER_AREA)
    return _read(work, width, height, lambda: gray)
