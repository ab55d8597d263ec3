"""Lengths and areas in mm on the chart's plane, from a found ColorChecker (tilt-corrected).

The model: the measured region lies in (or near) the plane of the chart. The chart's measured
patch centres and their known positions in mm give a homography from image pixels to that
plane, so perspective (a tilted phone) is undone exactly for points on the plane; the single
px-per-mm scale of the chart's pitch is exact only for a frontal photo. Straight lines stay
straight under a homography, so a segment or polygon drawn in the image maps to a segment or
polygon in the plane, measured there with plain Euclidean formulas.

Not modelled: lens distortion, and height above the plane (a region 1 cm in front of the chart,
seen at 30 cm, measures about 3 % large). Hence the warnings: `FAR_FROM_CHART` when a measured
point is more than `FAR_CHART_SIZES` chart diagonals from the chart's centre, where the
homography is an extrapolation and the plane assumption is weakest; `EXTREME_TILT` when the
chart is seen at more than `MAX_TILT_DEG` from straight on, where one axis is compressed more
than twice and a small error in the image is a large one in mm.

Uncertainty (one standard uncertainty, same unit as the value) combines three independent
parts, the first two propagated to first order:

- the homography fit: the 8 parameters of the chart-to-image homography are fitted by least
  squares to the patch centres (residuals in image pixels, RANSAC inliers). Their covariance is
  s^2 (J^T J)^-1, with s^2 = residual sum of squares / (2n - 8) and J the Jacobian of the
  projected centres; it is propagated to the value along the columns of its Cholesky factor.
  This part grows with the distance from the chart (the perspective terms are extrapolated).
- pixel quantisation of the given points: each coordinate is uniform within its pixel,
  standard deviation 1 / sqrt(12) px, propagated through the local derivative of the value.
- the model: `MODEL_RELATIVE` of a length (twice that of an area) for what the homography
  cannot see -- lens distortion, a chart not quite flat or raised off the surface. It is
  empirical: equal ArUco marker sides on the board photos of the test set, measured this way,
  scatter by 1.6 % (Classic board) and 1.1 % (Mini board) standard deviation, while the first
  two parts give about 0.6 % (``bench/bench_geometry.py`` prints how many sides fall within
  two uncertainties).

Not covered: a region well off the chart's plane, and the tolerance of the printed pitch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from app.pipeline.color.correct import PITCH_MM
from app.pipeline.color.detect import CHART_QUAD, Chart, find_chart
from app.pipeline.decode import DEFAULT_MAX_PIXELS, load_pixels

Point = tuple[float, float]

ASSUMPTION = "the measured region lies in the plane of the colour chart"
FAR_CHART_SIZES = 2.0
MAX_TILT_DEG = 60.0
PIXEL_SIGMA = 1 / math.sqrt(12)  # uniform quantisation within one pixel
MODEL_RELATIVE = 0.015  # see the module docstring
MIN_FIT_POINTS = 12  # measured patch centres needed for a fit with a residual
# RANSAC inlier threshold for the patch centres, in pitches (as the detector's refinement).
INLIER_PITCH = 0.08

FAR_FROM_CHART = "far_from_chart"
EXTREME_TILT = "extreme_tilt"
WARNINGS = {
    FAR_FROM_CHART: f"the region is more than {FAR_CHART_SIZES:g} chart diagonals from the "
    "chart: the plane is extrapolated, keep the chart beside what is measured",
    EXTREME_TILT: f"the chart is seen more than {MAX_TILT_DEG:g} degrees from straight on: "
    "lengths across the tilt are uncertain, photograph more squarely",
}


MAX_PIXELS = 65535
"""The most pixels an image has each way (DICOM's Rows and Columns are 16-bit)."""


class GeometryError(ValueError):
    """The input cannot be measured: no usable chart, a point outside the image or beyond the
    plane's horizon, or a degenerate polygon. The message says which."""


@dataclass(frozen=True)
class Measurement:
    """A length (mm) or area (mm^2) on the chart's plane.

    ``uncertainty`` is the combined standard uncertainty in the same unit (see the module
    docstring for what it covers); ``warnings`` are codes from `WARNINGS`.
    """

    value: float
    uncertainty: float
    warnings: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Calibration:
    """The map from a photo's pixels to the chart's plane in mm.

    Plane coordinates: origin at the centre of patch 1 (dark skin), x towards patch 6, y
    towards patch 19, in mm. Pixel coordinates: the photo as displayed (EXIF orientation
    applied), origin at the top-left corner of the image, x right, y down; the chart must
    have been found in that same frame.

    Attributes:
        chart_type: the chart's type (`Chart.type`), one with a known pitch.
        pitch_mm: the chart's patch pitch in mm.
        image_size: (width, height) of the photo in pixels; points must lie within it.
        chart_to_image: 3 x 3 homography from plane mm to pixels, fitted to the patch centres.
        covariance: 8 x 8 covariance of the first 8 entries of ``chart_to_image`` (row-major,
            the last entry fixed at 1).
        fit_points: patch centres used in the fit (RANSAC inliers).
        rms_residual_px: RMS distance between the measured and fitted patch centres, px.
        rms_residual_mm: the same on the plane, at the chart's local scale.
        tilt_deg: angle between the chart's normal and the line of sight to its centre, from
            the foreshortening of the chart: arccos(s2 / s1) for the singular values s1 >= s2
            of the homography's derivative at the chart centre (exact for weak perspective;
            needs no camera model).
        px_per_mm: the single scale (mean patch pitch in px / pitch in mm) that a frontal
            approximation uses, kept for comparison.
        chart_diagonal_mm: diagonal of the chart's outer quad, the unit of `FAR_CHART_SIZES`.
    """

    chart_type: str
    pitch_mm: float
    image_size: tuple[int, int]
    chart_to_image: np.ndarray
    covariance: np.ndarray
    fit_points: int
    rms_residual_px: float
    rms_residual_mm: float
    tilt_deg: float
    px_per_mm: float
    chart_diagonal_mm: float

    @property
    def image_to_chart(self) -> np.ndarray:
        """3 x 3 homography from pixels to plane mm."""
        inverse: np.ndarray = np.linalg.inv(self.chart_to_image)
        normalized: np.ndarray = inverse / inverse[2, 2]
        return normalized

    @property
    def warnings(self) -> tuple[str, ...]:
        """Warnings that hold for every measurement in this photo."""
        return (EXTREME_TILT,) if self.tilt_deg > MAX_TILT_DEG else ()

    def length_mm(self, p: Point, q: Point) -> Measurement:
        """Length on the plane of the segment from ``p`` to ``q`` (image pixels)."""
        if tuple(p) == tuple(q):
            raise GeometryError("the two ends of the line are the same point")
        return self._measure([p, q], _polyline_length, 1)

    def perimeter_mm(self, polygon: Sequence[Point]) -> Measurement:
        """Perimeter on the plane of a closed polygon (image pixels, see `check_polygon`)."""
        check_polygon(polygon)
        return self._measure(polygon, _perimeter, 1)

    def area_mm2(self, polygon: Sequence[Point]) -> Measurement:
        """Area on the plane of a closed polygon (image pixels, see `check_polygon`)."""
        check_polygon(polygon)
        return self._measure(polygon, _area, 2)

    def as_json(self) -> dict[str, object]:
        """The calibration as the CLI and API report it."""
        return {
            "chart_type": self.chart_type,
            "pitch_mm": self.pitch_mm,
            "assumption": ASSUMPTION,
            "image_to_chart_mm": [[float(v) for v in row] for row in self.image_to_chart],
            "fit_points": self.fit_points,
            "rms_residual_px": round(self.rms_residual_px, 3),
            "rms_residual_mm": round(self.rms_residual_mm, 3),
            "tilt_deg": round(self.tilt_deg, 1),
            "single_scale_px_per_mm": round(self.px_per_mm, 4),
            "warnings": [{"code": code, "message": WARNINGS[code]} for code in self.warnings],
        }

    def _checked(self, points: Sequence[Point]) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        w, h = self.image_size
        for x, y in pts:
            if not (math.isfinite(x) and math.isfinite(y) and 0 <= x <= w and 0 <= y <= h):
                raise GeometryError(
                    f"point ({x:g}, {y:g}) is outside the {w} x {h} image "
                    f"(x 0..{w}, y 0..{h}, origin top-left)"
                )
        # A point on the visible side of the plane's horizon has a projective denominator of
        # the same sign as the chart's own centre.
        g = self.image_to_chart
        centre = _apply(self.chart_to_image, CHART_QUAD.mean(axis=0).reshape(1, 2) * self.pitch_mm)
        side = (pts @ g[2, :2] + g[2, 2]) / (centre @ g[2, :2] + g[2, 2])
        if (side <= 1e-6).any():
            raise GeometryError("a point lies on or beyond the horizon of the chart's plane")
        return pts

    def _measure(
        self, points: Sequence[Point], value_of: Callable[[np.ndarray], float], dimension: int
    ) -> Measurement:
        """Measure ``value_of`` the points on the plane; ``dimension`` 1 for a length, 2 for an
        area (the power of a scale error that the value takes)."""
        pts = self._checked(points)
        inverse = self.image_to_chart
        plane = _apply(inverse, pts)
        value = value_of(plane)
        variance = (
            _fit_variance(self, pts, value_of)
            + _pixel_variance(inverse, pts, value_of)
            + (dimension * MODEL_RELATIVE * value) ** 2
        )
        centre = CHART_QUAD.mean(axis=0) * self.pitch_mm
        reach = float(np.linalg.norm(plane - centre, axis=1).max())
        warnings = self.warnings
        if reach > FAR_CHART_SIZES * self.chart_diagonal_mm:
            warnings = (*warnings, FAR_FROM_CHART)
        return Measurement(value, math.sqrt(variance), warnings)


def calibrate_photo(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Calibration:
    """Find the chart in encoded photo bytes, decoded upright (EXIF orientation applied) at
    full size, and calibrate: pixel coordinates are those of the photo as displayed.

    Raises `GeometryError` when no usable chart is found, ``UnreadablePhotoError`` for input
    the decode step refuses.
    """
    bgr = load_pixels(data, max_pixels=max_pixels)
    chart = find_chart(bgr)
    if chart is None:
        raise GeometryError("no colour chart found in the photo: nothing to measure with")
    return calibrate(chart, (bgr.shape[1], bgr.shape[0]))


def calibrate(chart: Chart, image_size: tuple[int, int]) -> Calibration:
    """Fit the pixel-to-plane map of a chart found in a photo of ``image_size`` (w, h).

    Raises `GeometryError` when the chart's physical size is unknown (a 24-patch block of a
    larger target) or fewer than `MIN_FIT_POINTS` patch centres were measured.
    """
    pitch_mm = PITCH_MM.get(chart.type)
    if pitch_mm is None:
        raise GeometryError(f"the chart's size is unknown (type {chart.type})")
    measured = chart.patch_centres
    if measured is None or np.isfinite(measured).all(axis=1).sum() < MIN_FIT_POINTS:
        raise GeometryError("too few of the chart's patch centres could be measured")
    found = np.isfinite(measured).all(axis=1)
    rows, cols = np.divmod(np.arange(24), 6)
    plane = np.c_[cols, rows].astype(np.float64)[found] * pitch_mm
    image = measured[found]
    h, inliers = cv2.findHomography(plane, image, cv2.RANSAC, INLIER_PITCH * chart.pitch_px)
    if h is None or inliers.sum() < MIN_FIT_POINTS:
        raise GeometryError("the chart's patch centres do not fit a plane")
    keep = inliers.ravel().astype(bool)
    plane, image = plane[keep], image[keep]
    h = h / h[2, 2]
    residuals = image - _apply(h, plane)
    jac = _projection_jacobian(h, plane)
    dof = 2 * len(plane) - 8
    variance = float((residuals**2).sum()) / dof
    covariance = variance * np.linalg.pinv(jac.T @ jac)
    rms_px = float(np.sqrt((residuals**2).sum(axis=1).mean()))
    corners_mm = CHART_QUAD * pitch_mm
    centre = corners_mm.mean(axis=0)
    singular = np.linalg.svd(_local_derivative(h, centre), compute_uv=False)
    return Calibration(
        chart_type=chart.type,
        pitch_mm=pitch_mm,
        image_size=image_size,
        chart_to_image=h,
        covariance=covariance,
        fit_points=len(plane),
        rms_residual_px=rms_px,
        rms_residual_mm=rms_px / math.sqrt(singular[0] * singular[1]),
        tilt_deg=math.degrees(math.acos(min(1.0, singular[1] / singular[0]))),
        px_per_mm=chart.pitch_px / pitch_mm,
        chart_diagonal_mm=float(np.linalg.norm(corners_mm[2] - corners_mm[0])),
    )


def check_polygon(polygon: Sequence[Point]) -> None:
    """Raise `GeometryError` unless ``polygon`` is a simple polygon: at least 3 vertices, no
    vertex repeated, non-zero area, and no two edges crossing. It is closed implicitly (do not
    repeat the first vertex). A homography keeps all of this, so checking pixels suffices.
    A vertex no image can hold (a coordinate beyond ±`MAX_PIXELS`, or not a number) is
    refused first, so the tests below never overflow."""
    pts = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    n = len(pts)
    if n < 3:
        raise GeometryError(f"a polygon needs at least 3 vertices, got {n}")
    if not np.all(np.abs(pts) <= MAX_PIXELS):
        raise GeometryError(f"a vertex lies beyond any image (coordinates within ±{MAX_PIXELS})")
    if len({(float(x), float(y)) for x, y in pts}) < n:
        raise GeometryError("the polygon repeats a vertex")
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbouring edges share a vertex
            if _segments_cross(pts[i], pts[(i + 1) % n], pts[j], pts[(j + 1) % n]):
                raise GeometryError(f"the polygon's edges {i + 1} and {j + 1} cross")
    if _area(pts) <= 1e-9:
        raise GeometryError("the polygon has no area (its vertices are on one line)")


# --- helpers ----------------------------------------------------------------------------------


def _apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    out: np.ndarray = cv2.perspectiveTransform(pts.reshape(-1, 1, 2).astype(np.float64), h)
    return out.reshape(-1, 2)


def _polyline_length(plane: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(plane, axis=0), axis=1).sum())


def _perimeter(plane: np.ndarray) -> float:
    return float(np.linalg.norm(plane - np.roll(plane, 1, axis=0), axis=1).sum())


def _area(plane: np.ndarray) -> float:
    x, y = plane[:, 0], plane[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _segments_cross(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> bool:
    """True when closed segments ab and cd share a point."""

    def orient(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> float:
        return float((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))

    def within(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> bool:
        return bool(np.all(np.minimum(p, q) <= r) and np.all(r <= np.maximum(p, q)))

    o1, o2, o3, o4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
    if o1 * o2 < 0 and o3 * o4 < 0:
        return True
    return (
        (o1 == 0 and within(a, b, c))
        or (o2 == 0 and within(a, b, d))
        or (o3 == 0 and within(c, d, a))
        or (o4 == 0 and within(c, d, b))
    )


def _projection_jacobian(h: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """d(projected points) / d(first 8 entries of h), shape (2n, 8), h[2, 2] = 1."""
    x, y = plane[:, 0], plane[:, 1]
    w = h[2, 0] * x + h[2, 1] * y + 1
    u = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w
    v = (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w
    zero, one = np.zeros_like(x), np.ones_like(x)
    du = np.stack([x, y, one, zero, zero, zero, -u * x, -u * y], axis=1) / w[:, None]
    dv = np.stack([zero, zero, zero, x, y, one, -v * x, -v * y], axis=1) / w[:, None]
    jac: np.ndarray = np.empty((2 * len(x), 8))
    jac[0::2], jac[1::2] = du, dv
    return jac


def _local_derivative(h: np.ndarray, point: np.ndarray) -> np.ndarray:
    """2 x 2 derivative of the homography ``h`` at ``point`` (central differences)."""
    step = 1e-3
    cols = [
        (_apply(h, (point + d).reshape(1, 2)) - _apply(h, (point - d).reshape(1, 2)))[0]
        / (2 * step)
        for d in (np.array([step, 0.0]), np.array([0.0, step]))
    ]
    return np.stack(cols, axis=1)


def _fit_variance(
    cal: Calibration, pts: np.ndarray, value_of: Callable[[np.ndarray], float]
) -> float:
    """Variance of the value from the homography's parameter covariance (first order, along
    its principal axes, each scaled to one standard deviation)."""
    eigenvalues, axes = np.linalg.eigh(cal.covariance)
    factor = axes * np.sqrt(np.clip(eigenvalues, 0.0, None))
    theta = cal.chart_to_image.ravel()[:8]
    eps = 1e-3

    def value_at(params: np.ndarray) -> float:
        h = np.append(params, 1.0).reshape(3, 3)
        return value_of(_apply(np.linalg.inv(h), pts))

    total = 0.0
    for column in factor.T:
        slope = (value_at(theta + eps * column) - value_at(theta - eps * column)) / (2 * eps)
        total += slope**2
    return total


def _pixel_variance(
    image_to_chart: np.ndarray, pts: np.ndarray, value_of: Callable[[np.ndarray], float]
) -> float:
    """Variance of the value from `PIXEL_SIGMA` on every given coordinate (first order)."""
    step = 0.01
    total = 0.0
    for index in np.ndindex(*pts.shape):
        plus, minus = pts.copy(), pts.copy()
        plus[index] += step
        minus[index] -= step
        slope = (
            value_of(_apply(image_to_chart, plus)) - value_of(_apply(image_to_chart, minus))
        ) / (2 * step)
        total += (slope * PIXEL_SIGMA) ** 2
    return total
