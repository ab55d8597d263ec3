"""Photo quality: is this frame or photo good enough to compare wounds over time?

One function, `assess`, looks at a decoded image (and the chart the colour step found in it,
if any) and returns six checks, always in this order:

- ``chart``: a 24-patch ColorChecker was found (value: None; ``ok`` False without one).
- ``distance``: pixels per mm at the chart plane *in the photo* (a preview frame is scaled
  to the photo's width). Too far below `MIN_PX_PER_MM`; too close when the chart covers more
  than `MAX_CHART_AREA` of the frame (then the wound beside it cannot fit, and the phone is
  usually too close to focus). Not measurable (``ok`` None) without a chart of known size.
- ``tilt``: angle in degrees between the chart plane and the image plane, from the chart's
  corners by `cv2.solvePnP` (IPPE) with an assumed phone camera: square pixels, principal
  point at the centre, focal length `FOCAL_PER_LONG_SIDE` x the long side (a 26 mm
  full-frame-equivalent main camera on a 4:3 sensor). Past `MAX_TILT_DEG` scale and colour
  vary across the chart. ``ok`` None without a chart.
- ``sharpness``: variance of the 4-neighbour Laplacian ([[0,1,0],[1,-4,1],[0,1,0]], interior
  pixels only) of the luma Y = 0.299 R + 0.587 G + 0.114 B (float, 0-255) of a square crop of
  at most `SHARPNESS_CROP` pixels at the image's own resolution: centred on the chart when
  there is one, else on the image centre. ``static/js/quality.js`` computes the same number
  on the central crop. Photos and preview frames have their own threshold
  (`MIN_SHARPNESS_PHOTO`, `MIN_SHARPNESS_PREVIEW`): a reduced frame looks sharper.
- ``exposure``: mean luma of the image (value); too dark below `MIN_MEAN_LUMA`; too bright
  when the chart's white patch is clipped, or without a chart when more than
  `MAX_CLIPPED_FRACTION` of the pixels have luma >= `CLIP_LUMA`.
- ``glare``: fraction of specular pixels (every channel >= `GLARE_LEVEL`: white and
  saturated) on the chart's 18 coloured patches, which are never white (the chart's own
  neutrals are left to ``exposure``); without a chart, on the whole image with a looser limit.

Thresholds are the named constants below, the one source of truth: the capture page gets them
through `client_config` for ``static/js/quality.js``. They were calibrated on the shared
colour-chart photos against Gaussian-blurred copies (``bench/bench_quality.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from app.pipeline.color.correct import PITCH_MM
from app.pipeline.color.detect import CHART_QUAD, Chart, find_chart
from app.pipeline.decode import UnreadablePhotoError, load_pixels, probe

# Live guidance frames: JPEG or PNG, at most this many bytes and this long a side.
FRAME_TYPES = ("image/jpeg", "image/png")
MAX_FRAME_BYTES = 256 * 1024
MAX_FRAME_SIDE = 640

MIN_PX_PER_MM = 5.0
MAX_CHART_AREA = 0.5  # share of the frame covered by the chart's outer quad
FOCAL_PER_LONG_SIDE = 0.75  # 26 mm equivalent: f = 26 / 43.3 x the 4:3 diagonal
MAX_TILT_DEG = 25.0
SHARPNESS_CROP = 1024
MIN_SHARPNESS_PHOTO = 15.0
MIN_SHARPNESS_PREVIEW = 35.0
MIN_MEAN_LUMA = 40.0
CLIP_LUMA = 250.0
MAX_CLIPPED_FRACTION = 0.05
GLARE_LEVEL = 250
MAX_GLARE_CHART = 0.005
MAX_GLARE_FRAME = 0.05

CHECK_IDS = ("chart", "distance", "tilt", "sharpness", "exposure", "glare")
WHITE_PATCH = 18  # patch 19, index 18
_COLOUR_PATCHES = np.arange(18)

# The short texts shown beside each check, and the advice line (the first failing check's).
TEXTS: dict[str, str] = {
    "chart_ok": "Chart found",
    "chart_missing": "No colour chart in view",
    "distance_ok": "Distance ok",
    "distance_far": "Move closer: the chart is too small",
    "distance_close": "Move back: the chart fills the frame",
    "distance_unknown": "Distance unknown",
    "tilt_ok": "Straight on",
    "tilt_bad": "Hold the phone parallel to the chart",
    "tilt_unknown": "Tilt unknown",
    "sharpness_ok": "Sharp",
    "sharpness_bad": "Blurry: hold still",
    "exposure_ok": "Exposure ok",
    "exposure_dark": "Too dark: add light",
    "exposure_bright": "Too bright: white is clipped",
    "glare_ok": "No glare",
    "glare_bad": "Glare: tilt slightly or move the light",
    "all_ok": "Good: hold still",
}


@dataclass(frozen=True)
class Check:
    """One check: ``ok`` None when it cannot be measured (``value`` None then too)."""

    id: str
    ok: bool | None
    value: float | None
    text: str

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "ok": self.ok, "value": self.value, "text": self.text}


@dataclass(frozen=True)
class Quality:
    """The six checks (in `CHECK_IDS` order) and what was seen of the chart.

    ``ok`` is True when no check failed (checks that cannot be measured do not fail);
    ``advice`` is the text of the first failing check, or a go-ahead line.
    """

    checks: tuple[Check, ...]
    chart_type: str | None
    tilt_deg: float | None
    px_per_mm: float | None

    @property
    def ok(self) -> bool:
        return all(check.ok is not False for check in self.checks)

    @property
    def advice(self) -> str:
        failed = next((c for c in self.checks if c.ok is False), None)
        return failed.text if failed else TEXTS["all_ok"]

    def as_json(self) -> dict[str, Any]:
        """The contract JSON: ``ok``, ``advice``, ``checks`` and ``chart``."""
        return {
            "ok": self.ok,
            "advice": self.advice,
            "checks": [check.as_json() for check in self.checks],
            "chart": {
                "found": self.chart_type is not None,
                "type": self.chart_type,
                "tilt_deg": self.tilt_deg,
                "px_per_mm": self.px_per_mm,
            },
        }


def client_config() -> dict[str, Any]:
    """Thresholds and texts for ``static/js/quality.js`` (the capture page's ``data-quality``)."""
    return {
        "sharpnessCrop": SHARPNESS_CROP,
        "minSharpness": MIN_SHARPNESS_PHOTO,
        "minMeanLuma": MIN_MEAN_LUMA,
        "clipLuma": CLIP_LUMA,
        "maxClippedFraction": MAX_CLIPPED_FRACTION,
        "texts": {key: TEXTS[key] for key in (
            "sharpness_ok", "sharpness_bad", "exposure_ok", "exposure_dark", "exposure_bright")},
    }


def assess(bgr: np.ndarray, chart: Chart | None, *, photo_width: int | None = None,
           preview: bool = False) -> Quality:
    """Assess an oriented BGR uint8 image and the chart found in it (None: no chart).

    ``photo_width``: width in pixels of the photo this frame previews (default: the image's
    own), so that ``distance`` speaks of the photo. ``preview`` selects the preview-frame
    sharpness threshold. Pure: the input is not modified; about 2 ms for a 640 px frame,
    about 10 ms for a 12 MP photo (the crop and a reduced copy are all it reads).
    """
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ValueError("expected an H x W x 3 uint8 BGR image")
    h, w = bgr.shape[:2]
    small = _reduced(bgr)
    luma = _luma(small)
    px_per_mm = _px_per_mm(chart, (photo_width or w) / w)
    tilt = _tilt_deg(chart, (w, h))
    sharp = sharpness(bgr, _crop_box(chart, (w, h)))
    checks = (
        Check("chart", chart is not None, None,
              TEXTS["chart_ok"] if chart else TEXTS["chart_missing"]),
        _distance_check(chart, px_per_mm, (w, h)),
        Check("tilt", None if tilt is None else tilt <= MAX_TILT_DEG,
              None if tilt is None else round(tilt, 1),
              TEXTS["tilt_unknown"] if tilt is None
              else TEXTS["tilt_ok"] if tilt <= MAX_TILT_DEG else TEXTS["tilt_bad"]),
        _sharpness_check(sharp, MIN_SHARPNESS_PREVIEW if preview else MIN_SHARPNESS_PHOTO),
        _exposure_check(luma, chart),
        _glare_check(bgr, small, chart),
    )
    return Quality(checks, chart.type if chart else None,
                   None if tilt is None else round(tilt, 1),
                   None if px_per_mm is None else round(px_per_mm, 2))


def assess_frame(data: bytes, *, photo_width: int | None = None) -> Quality:
    """Decode a live preview frame (JPEG or PNG, upright by its EXIF orientation), find the
    chart and `assess` it as a preview of a photo ``photo_width`` pixels wide.

    Raises `UnreadablePhotoError` (a message for the user) when the bytes are no JPEG or PNG
    frame, cannot be decoded, or have a side longer than `MAX_FRAME_SIDE` (checked from the
    header, before any pixel is decoded).
    """
    info = probe(data)
    if info.media_type not in FRAME_TYPES:
        raise UnreadablePhotoError("a guidance frame must be a JPEG or PNG image")
    if max(info.width, info.height) > MAX_FRAME_SIDE:
        raise UnreadablePhotoError(
            f"the frame is {info.width}×{info.height} pixels: its longest side must be at most "
            f"{MAX_FRAME_SIDE} pixels")
    bgr = load_pixels(data)
    return assess(bgr, find_chart(bgr), photo_width=photo_width, preview=True)


def sharpness(bgr: np.ndarray, box: tuple[int, int, int, int] | None = None) -> float:
    """Variance of the 4-neighbour Laplacian of the luma of ``bgr[y0:y1, x0:x1]``
    (``box`` = x0, y0, x1, y1; default: the central `SHARPNESS_CROP` square)."""
    h, w = bgr.shape[:2]
    x0, y0, x1, y1 = box or _crop_box(None, (w, h))
    luma = _luma(bgr[y0:y1, x0:x1])
    if min(luma.shape) < 3:
        return 0.0
    lap = cv2.Laplacian(luma, cv2.CV_32F, ksize=1)[1:-1, 1:-1]
    _, std = cv2.meanStdDev(lap)  # accumulates in double precision
    return float(std[0, 0]) ** 2


_LUMA_WEIGHTS = np.array([[0.114, 0.587, 0.299]], dtype=np.float32)  # B, G, R


def _luma(bgr: np.ndarray) -> np.ndarray:
    """Y = 0.299 R + 0.587 G + 0.114 B as float32 (0-255), one channel."""
    luma: np.ndarray = cv2.transform(bgr.astype(np.float32), _LUMA_WEIGHTS)
    return luma


def _reduced(bgr: np.ndarray, side: int = 640) -> np.ndarray:
    """A copy at most ``side`` pixels long for the whole-image statistics (every n-th pixel:
    means and fractions need no filtering)."""
    step = max(1, math.ceil(max(bgr.shape[:2]) / side))
    return bgr[::step, ::step]


def _crop_box(chart: Chart | None, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The sharpness crop (x0, y0, x1, y1): at most `SHARPNESS_CROP` square, on the chart's
    centre or the image's (x0 = floor(centre - side / 2), as quality.js), inside the image."""
    w, h = size
    cx, cy = (chart.corners.mean(axis=0) if chart is not None else (w / 2, h / 2))
    side_w, side_h = min(SHARPNESS_CROP, w), min(SHARPNESS_CROP, h)
    x0 = min(max(math.floor(cx - side_w / 2), 0), w - side_w)
    y0 = min(max(math.floor(cy - side_h / 2), 0), h - side_h)
    return x0, y0, x0 + side_w, y0 + side_h


def _px_per_mm(chart: Chart | None, photo_scale: float) -> float | None:
    pitch_mm = PITCH_MM.get(chart.type) if chart is not None else None
    if chart is None or pitch_mm is None:
        return None
    return chart.pitch_px * photo_scale / pitch_mm


def _chart_area(chart: Chart, size: tuple[int, int]) -> float:
    return float(cv2.contourArea(chart.corners.astype(np.float32))) / (size[0] * size[1])


def _distance_check(chart: Chart | None, px_per_mm: float | None,
                    size: tuple[int, int]) -> Check:
    if chart is not None and _chart_area(chart, size) > MAX_CHART_AREA:
        value = None if px_per_mm is None else round(px_per_mm, 2)
        return Check("distance", False, value, TEXTS["distance_close"])
    if px_per_mm is None:
        return Check("distance", None, None, TEXTS["distance_unknown"])
    ok = px_per_mm >= MIN_PX_PER_MM
    return Check("distance", ok, round(px_per_mm, 2),
                 f"{px_per_mm:.1f} px/mm" if ok else TEXTS["distance_far"])


def _tilt_deg(chart: Chart | None, size: tuple[int, int]) -> float | None:
    """Angle between the chart's normal and the optical axis of the assumed camera."""
    if chart is None:
        return None
    w, h = size
    f = FOCAL_PER_LONG_SIDE * max(w, h)
    camera = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], dtype=np.float64)
    plane = np.c_[CHART_QUAD, np.zeros(4)].astype(np.float64)
    found, rvec, _ = cv2.solvePnP(plane, chart.corners.astype(np.float64), camera, None,
                                  flags=cv2.SOLVEPNP_IPPE)
    if not found:
        return None
    rotation, _ = cv2.Rodrigues(rvec)
    return math.degrees(math.acos(min(1.0, abs(float(rotation[2, 2])))))


def _sharpness_check(value: float, minimum: float) -> Check:
    ok = value >= minimum
    return Check("sharpness", ok, round(value, 1),
                 TEXTS["sharpness_ok"] if ok else TEXTS["sharpness_bad"])


def _exposure_check(luma: np.ndarray, chart: Chart | None) -> Check:
    mean = float(luma.mean())
    if chart is not None:
        bright = bool(chart.clipped[WHITE_PATCH]) and chart.patches_srgb[WHITE_PATCH].min() > 128
    else:
        bright = float((luma >= CLIP_LUMA).mean()) > MAX_CLIPPED_FRACTION
    dark = mean < MIN_MEAN_LUMA
    text = TEXTS["exposure_dark"] if dark else TEXTS["exposure_bright"] if bright \
        else TEXTS["exposure_ok"]
    return Check("exposure", not (dark or bright), round(mean, 1), text)


def _glare_check(bgr: np.ndarray, small: np.ndarray, chart: Chart | None) -> Check:
    if chart is not None:
        fraction, limit = _chart_glare(bgr, chart), MAX_GLARE_CHART
    else:
        fraction, limit = _specular(small.reshape(-1, 3)), MAX_GLARE_FRAME
    ok = fraction <= limit
    return Check("glare", ok, round(fraction, 4), TEXTS["glare_ok"] if ok else TEXTS["glare_bad"])


def _specular(pixels: np.ndarray) -> float:
    return float((pixels.min(axis=1) >= GLARE_LEVEL).mean()) if len(pixels) else 0.0


def _chart_glare(bgr: np.ndarray, chart: Chart) -> float:
    """Specular share of the 18 coloured patches (central 80 % of each cell), sampled on a
    rectified 16 px-per-patch view."""
    px = 16
    to_chart = np.array([[1 / px, 0, -0.5], [0, 1 / px, -0.5], [0, 0, 1]])
    rect = cv2.warpPerspective(bgr, chart.homography @ to_chart, (6 * px, 4 * px),
                               flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
    cells = rect.reshape(4, px, 6, px, 3)[:, 2:-2, :, 2:-2].transpose(0, 2, 1, 3, 4)
    return _specular(cells.reshape(24, -1, 3)[_COLOUR_PATCHES].reshape(-1, 3))
