"""Find a 24-patch ColorChecker (Classic, Mini, Passport page) and its orientation in a photo.

How it works, and why it can be trusted:

1. On a copy reduced to at most `WORK_SIDE` pixels, bright convex quadrilaterals (patch
   candidates) are collected from adaptive thresholds of the max(R, G, B) channel: every patch
   is lighter than the black frame around it, whatever the colour cast.
2. Candidates of similar size are grown into a lattice (a homography from integer lattice
   coordinates to the image), seeded from each well-supported candidate.
3. Every placement of the 4 x 6 chart on every lattice, in every non-mirrored orientation, is
   a hypothesis. A hypothesis is scored by how well its 24 patch colours can be mapped onto the
   reference colours by a 3 x 3 matrix in linear RGB (mean CIEDE2000 after the fit), trying
   sRGB-encoded and linear data. A right placement scores about 2-9, a wrong one 20 or more.
4. The best hypothesis is refined at full resolution (patch centroids in a rectified view of
   the chart, homography refitted with RANSAC), resampled and checked again: colour fit,
   monotonic neutral ramp, plausible geometry. Anything that fails is reported as no chart.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from app.pipeline.color.colorimetry import REFERENCE_LAB_D50, delta_e_2000, linear_srgb_to_lab
from app.pipeline.color.colorimetry import srgb_decode as _srgb_decode
from app.pipeline.color.reference import NEUTRALS, REFERENCE_LINEAR_SRGB

# Longest side of the reduced image used to find candidates: images are halved while their
# longest side stays at least MIN_WORK_SIDE (a 12 MP photo: 1008 px); an image too small to be
# halved is brought to WORK_SIDE (see `_reduce`).
WORK_SIDE = 1280
MIN_WORK_SIDE = 800
# A chart is accepted when its patches fit the reference this well (mean CIEDE2000 after a
# 3 x 3 fit); on the test photos right placements score <= 9, wrong ones >= 16.
MAX_MATCH_DELTA_E = 12.0

# Chart coordinates: patch (row r, column c) has its centre at (c, r), pitch 1. The outer quad
# follows OpenCV mcc's MCC24 model (and so the ground truth): it lies 1.5 / 2.75 pitch beyond
# the outer patch centres.
QUAD_MARGIN = 1.5 / 2.75
CHART_QUAD: np.ndarray = np.array(
    [
        [-QUAD_MARGIN, -QUAD_MARGIN],
        [5 + QUAD_MARGIN, -QUAD_MARGIN],
        [5 + QUAD_MARGIN, 3 + QUAD_MARGIN],
        [-QUAD_MARGIN, 3 + QUAD_MARGIN],
    ]
)
_CELLS: np.ndarray = np.array([(c, r) for r in range(4) for c in range(6)], dtype=np.float64)

_BLOCK_SIZES = (15, 31, 63)  # adaptive-threshold windows at WORK_SIDE
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
_MIN_GRID_CELLS = 8
# A chart whose lattice continues with more patches outside the 4 x 6 block than inside is part
# of a larger target (the Digital SG carries the 24 colours as an inner block; 90 outside), so
# its physical size is unknown. An open Passport's other page adds about 10.
_EMBEDDED_CELLS = 24
_SAMPLE_HALF = 0.2  # half-size of the sampled square, in pitches (central 40 % of a cell)
_RECT_PX = 48  # pixels per pitch in the rectified view used for refinement and sampling


@dataclass(frozen=True, eq=False)
class Chart:
    """A verified 24-patch chart in an image.

    Attributes:
        type: ``"classic24"`` (ColorChecker Classic card), ``"mini24"`` (the small target of
            the Classic Mini card and of the Passport's classic page, which are identical), or
            ``"colorchecker24"`` when the two cannot be told apart or the 24 patches are a block
            of a larger target (ColorChecker Digital SG). They share layout and
            colours; they are told apart by the patch side / pitch ratio, measured at 0.87-0.89
            on Classic cards and 0.78-0.81 on Mini/Passport targets in the test photos.
        corners: 4 x 2 float image coordinates of the outer quad: 0 = outer corner of patch 1
            (dark skin), 1 = patch 6 (bluish green), 2 = patch 24 (black), 3 = patch 19 (white).
        patches_srgb: 24 x 3 float, robust mean 8-bit (R, G, B) of the central 40 % of each
            cell, patch order 1..24, sampled at full resolution.
        clipped: 24 bools, True where more than 2 % of a patch's samples are at 0 or 255.
        match_delta_e: mean CIEDE2000 of the patches after the best 3 x 3 linear fit used to
            verify the chart (lower is better; always <= `MAX_MATCH_DELTA_E`).
        pitch_px: mean distance between neighbouring patch centres, in pixels.
        patch_fraction: measured patch side / pitch (about 0.8 to 0.9), NaN if not measured.
        patch_centres: 24 x 2 image coordinates of the patch centroids measured in the last
            refinement pass, patch order 1..24, NaN where a patch was not measured: the points
            the homography was fitted to (for a fit residual). None when not measured.
    """

    type: str
    corners: np.ndarray
    patches_srgb: np.ndarray
    clipped: np.ndarray
    match_delta_e: float
    pitch_px: float
    patch_fraction: float
    patch_centres: np.ndarray | None = None

    @property
    def homography(self) -> np.ndarray:
        """3 x 3 map from chart coordinates (patch (r, c) centred at (c, r)) to the image."""
        return cv2.getPerspectiveTransform(
            CHART_QUAD.astype(np.float32), np.asarray(self.corners, dtype=np.float32)
        ).astype(np.float64)


def find_chart(bgr: np.ndarray) -> Chart | None:
    """Find the 24-patch ColorChecker in an oriented BGR uint8 image.

    Returns the chart with oriented corners, or None when no candidate passes every check
    (so a wrong chart comes back as None, never as a bad placement). Charts seen mirrored
    (a selfie camera's preview) are not found. Runs in about 0.1-0.3 s on one core for
    photos of any size; the input is not modified.
    """
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ValueError("expected an H x W x 3 uint8 BGR image")
    work, scale = _reduce(bgr)
    best: tuple[float, np.ndarray, int] | None = None
    for lattice_h, cells in _grids(_nodes(_candidates(work))):
        hyp = _best_hypothesis(work, lattice_h, cells)
        if hyp is not None and (best is None or hyp[0] < best[0]):
            best = hyp
    if best is None or best[0] > MAX_MATCH_DELTA_E:
        return None
    to_full = np.diag([1 / scale, 1 / scale, 1.0])
    return _refine_and_verify(bgr, to_full @ best[1], embedded=best[2] >= _EMBEDDED_CELLS)


def _reduce(bgr: np.ndarray) -> tuple[np.ndarray, float]:
    """The image reduced for the candidate search, and the scale applied.

    The image is halved (2 x 2 area average, after dropping an odd last row or column) while
    its longest side stays at least `MIN_WORK_SIDE`: a 12 MP photo becomes 1008 x 756. Halving
    takes OpenCV's vectorized 2 x 2 path, four times faster than one area resize by 3 or 4.
    Images up to `WORK_SIDE` are used as they are; larger ones that cannot be halved (under
    2 x `MIN_WORK_SIDE`) are resized to `WORK_SIDE` with area averaging.
    """
    h, w = bgr.shape[:2]
    if max(h, w) <= WORK_SIDE:
        return bgr, 1.0
    if max(h, w) < 2 * MIN_WORK_SIDE:
        scale = WORK_SIDE / max(h, w)
        return cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), scale
    work, factor = bgr, 1
    while max(work.shape[:2]) >= 2 * MIN_WORK_SIDE:
        hh, ww = work.shape[0] // 2, work.shape[1] // 2
        work = cv2.resize(work[: 2 * hh, : 2 * ww], (ww, hh), interpolation=cv2.INTER_AREA)
        factor *= 2
    return work, 1.0 / factor


# --- candidates -------------------------------------------------------------------------------


@dataclass
class _Nodes:
    centers: np.ndarray  # (N, 2)
    sizes: np.ndarray  # (N,) sqrt(area) of the median-sized member contour
    quads: np.ndarray  # (N, 4, 2) quad of that member
    support: np.ndarray  # (N,) number of thresholds that found it


def _candidates(work: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return centres (N, 2), sizes (N,) and quads (N, 4, 2) of bright convex quadrilaterals."""
    value = cv2.max(cv2.max(work[..., 0], work[..., 1]), work[..., 2])
    h, w = value.shape
    min_area, max_area = 30.0, 0.05 * h * w
    centers, sizes, quads = [], [], []
    for block in _BLOCK_SIZES:
        bw = cv2.adaptiveThreshold(
            value, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block, -2
        )
        # Cut one-pixel bridges between neighbours, then keep only blobs whose size and
        # bounding-box fill could be a patch before tracing their outlines.
        # (Spaghetti is named explicitly: twice as fast as the default for 4-connectivity.)
        bw = cv2.erode(bw, _CROSS)
        _, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
            bw, 4, cv2.CV_32S, cv2.CCL_SPAGHETTI
        )
        bw_w, bw_h, bw_area = stats[:, 2], stats[:, 3], stats[:, 4]
        keep = (
            (bw_area >= min_area)
            & (bw_area <= max_area)
            & (bw_area >= 0.35 * bw_w * bw_h)
            & (np.maximum(bw_w, bw_h) <= 4 * np.minimum(bw_w, bw_h))
        )
        keep[0] = False
        if not keep.any():
            continue
        # labels is already int32 (CV_32S): asarray only tells the type checker it is an index.
        mask = np.take(keep.astype(np.uint8) * 255, np.asarray(labels, dtype=np.int32))
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            if len(contour) < 4:
                continue
            area = cv2.contourArea(contour)
            if not min_area <= area <= max_area:
                continue
            hull = cv2.convexHull(contour)
            if area < 0.85 * cv2.contourArea(hull):
                continue
            poly = cv2.approxPolyDP(hull, 0.08 * cv2.arcLength(hull, True), True)
            if len(poly) != 4:
                continue
            quad = poly.reshape(4, 2).astype(np.float64)
            sides = np.linalg.norm(quad - np.roll(quad, 1, axis=0), axis=1)
            if sides.max() > 2.5 * sides.min():
                continue
            m = cv2.moments(contour)
            centers.append((m["m10"] / m["m00"], m["m01"] / m["m00"]))
            sizes.append(np.sqrt(area))
            quads.append(quad)
    if not centers:
        return np.zeros((0, 2)), np.zeros(0), np.zeros((0, 4, 2))
    return np.array(centers), np.array(sizes), np.array(quads)


def _nodes(cands: tuple[np.ndarray, np.ndarray, np.ndarray]) -> _Nodes:
    """Merge candidates that are the same patch seen by several thresholds."""
    centers, sizes, quads = cands
    order = np.argsort(-sizes)
    centers, sizes, quads = centers[order], sizes[order], quads[order]
    n = len(sizes)
    free = np.ones(n, dtype=bool)
    out_c, out_s, out_q, out_n = [], [], [], []
    for i in range(n):
        if not free[i]:
            continue
        d2 = ((centers - centers[i]) ** 2).sum(axis=1)
        members = free & (d2 < (0.25 * sizes[i]) ** 2) & (sizes > 0.67 * sizes[i])
        free &= ~members
        rep = np.flatnonzero(members)[members.sum() // 2]  # median-sized member
        # The median centre, as np.median(axis=0) (a few members: sorting them costs a tenth).
        group = np.sort(centers[members], axis=0)
        out_c.append((group[(len(group) - 1) // 2] + group[len(group) // 2]) / 2)
        out_s.append(sizes[rep])
        out_q.append(quads[rep])
        out_n.append(int(members.sum()))
    return _Nodes(
        np.array(out_c).reshape(-1, 2),
        np.array(out_s),
        np.array(out_q).reshape(-1, 4, 2),
        np.array(out_n),
    )


# --- lattices ---------------------------------------------------------------------------------


def _transform(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 1, 2)
    return cv2.perspectiveTransform(pts, h).reshape(-1, 2)


def _grids(nodes: _Nodes) -> list[tuple[np.ndarray, dict[tuple[int, int], int]]]:
    """Grow lattices from seeds; return (lattice -> work image homography, cell -> node) pairs."""
    used = np.zeros(len(nodes.sizes), dtype=bool)
    grids = []
    for seed in np.argsort(-nodes.support, kind="stable"):
        if used[seed] or nodes.support[seed] < 2:
            continue
        grown = _grow(nodes, int(seed))
        if grown is None:
            continue
        used[list(grown[1].values())] = True
        if len(grown[1]) >= _MIN_GRID_CELLS:
            grids.append(grown)
    return grids


def _grow(nodes: _Nodes, seed: int) -> tuple[np.ndarray, dict[tuple[int, int], int]] | None:
    """Lattice through the seed: neighbours are placed with the seed's own axes and the
    pitch of its nearest axial neighbours, then a homography is refitted three times while
    every similar-sized node within 0.22 pitch of a lattice point joins (one per point)."""
    centers, sizes = nodes.centers, nodes.sizes
    c0, s0, quad = centers[seed], sizes[seed], nodes.quads[seed]
    basis = np.stack([quad[1] - quad[0], quad[3] - quad[0]], axis=1)
    if abs(np.linalg.det(basis)) < 1e-6:
        return None
    near = (sizes > 0.6 * s0) & (sizes < 1.6 * s0) & (np.hypot(*(centers - c0).T) < 4.5 * s0)
    idx = np.flatnonzero(near)
    ab = np.linalg.solve(basis, (centers[idx] - c0).T).T
    mag = np.abs(ab)
    axial = ((mag[:, 1] < 0.35 * mag[:, 0]) | (mag[:, 0] < 0.35 * mag[:, 1])) & (
        (mag.max(axis=1) > 0.9) & (mag.max(axis=1) < 2.0)
    )
    if not axial.any():
        return None
    lat = ab / np.median(mag[axial].max(axis=1))
    keys = np.round(lat)
    ok = np.abs(lat - keys).max(axis=1) < 0.25
    if ok.sum() < 4 or np.linalg.matrix_rank(np.c_[keys[ok], np.ones(ok.sum())]) < 3:
        return None
    h, _ = cv2.findHomography(keys[ok], centers[idx[ok]], 0)
    cells: dict[tuple[int, int], int] = {}
    for _ in range(3):
        if h is None or abs(np.linalg.det(h)) < 1e-12:
            return None
        lat = _transform(np.linalg.inv(h), centers)
        keys = np.round(lat)
        resid = np.abs(lat - keys).max(axis=1)
        half_u, half_v = np.array([0.5, 0.0]), np.array([0.0, 0.5])
        du = _transform(h, keys + half_u) - _transform(h, keys - half_u)
        dv = _transform(h, keys + half_v) - _transform(h, keys - half_v)
        local_pitch = np.sqrt(np.abs(du[:, 0] * dv[:, 1] - du[:, 1] * dv[:, 0]))
        ok = (
            (resid < 0.22)
            & (sizes > 0.5 * local_pitch)
            & (sizes < 1.05 * local_pitch)
            & (np.abs(keys).max(axis=1) <= 12)
        )
        cells = {}
        for i in np.flatnonzero(ok):
            key = (int(keys[i, 0]), int(keys[i, 1]))
            if key not in cells or resid[i] < resid[cells[key]]:
                cells[key] = int(i)
        if len(cells) < 4:
            return None
        src = np.array(list(cells.keys()), dtype=np.float64)
        h, _ = cv2.findHomography(src, centers[list(cells.values())], 0)
    if h is None:
        return None
    return h, cells


# --- hypotheses -------------------------------------------------------------------------------

# The 8 ways to lay chart axes (column step, row step) on lattice axes.
_AXES: tuple[np.ndarray, ...] = tuple(
    np.array([[dc[0], dr[0]], [dc[1], dr[1]]], dtype=np.float64)
    for dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
    for dr in ((dc[1], dc[0]), (-dc[1], -dc[0]))
)


def _lattice_colours(
    work: np.ndarray, lattice_h: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Mean sRGB8 (R, G, B) around each lattice point in [lo, hi]; NaN outside the image."""
    px = 8
    nx, ny = int(hi[0] - lo[0]) + 1, int(hi[1] - lo[1]) + 1
    to_lattice = np.array([[1 / px, 0, lo[0] - 0.5], [0, 1 / px, lo[1] - 0.5], [0, 0, 1]])
    m = lattice_h @ to_lattice
    rect = cv2.warpPerspective(
        work, m, (nx * px, ny * px), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    )
    inside = cv2.warpPerspective(
        np.full(work.shape[:2], 255, np.uint8),
        m,
        (nx * px, ny * px),
        flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
    )
    cells = rect.reshape(ny, px, nx, px, 3)[:, 2:6, :, 2:6].astype(np.float64)
    valid = inside.reshape(ny, px, nx, px)[:, 2:6, :, 2:6].min(axis=(1, 3)) > 0
    colours = cells.mean(axis=(1, 3))[..., ::-1]
    colours[~valid] = np.nan
    by_xy: np.ndarray = colours.transpose(1, 0, 2)  # indexed [x, y]
    return by_xy


def _best_hypothesis(
    work: np.ndarray, lattice_h: np.ndarray, cells: dict[tuple[int, int], int]
) -> tuple[float, np.ndarray, int] | None:
    """Best placement on this lattice: (match ΔE, chart -> work homography, lattice patches
    found outside the placed 4 x 6 block)."""
    keys = np.array(list(cells.keys()), dtype=np.int64)
    lo, hi = keys.min(axis=0), keys.max(axis=0)
    need = min(10, len(keys))
    colours = _lattice_colours(work, lattice_h, lo - 5, hi + 5)
    transforms, samples, outside = [], [], []
    for axes in _AXES:
        offsets = np.rint(_CELLS @ axes.T).astype(np.int64)
        omin, omax = offsets.min(axis=0), offsets.max(axis=0)
        # Lattice patches inside the block at every shift o, counted at once (a shift is
        # tried only when enough of them are inside).
        xs = np.arange(lo[0] - omax[0], hi[0] - omin[0] + 1)
        ys = np.arange(lo[1] - omax[1], hi[1] - omin[1] + 1)
        in_x = (keys[:, 0] >= xs[:, None] + omin[0]) & (keys[:, 0] <= xs[:, None] + omax[0])
        in_y = (keys[:, 1] >= ys[:, None] + omin[1]) & (keys[:, 1] <= ys[:, None] + omax[1])
        counts = in_x.astype(np.int64) @ in_y.T.astype(np.int64)  # [x shift, y shift]
        for ix, iy in zip(*np.nonzero(counts >= need), strict=True):
            ox, oy, inside = int(xs[ix]), int(ys[iy]), int(counts[ix, iy])
            o = np.array([ox, oy])
            t = np.array([[*axes[0], ox], [*axes[1], oy], [0, 0, 1]], dtype=np.float64)
            quad = _transform(lattice_h @ t, CHART_QUAD)
            v1, v3 = quad[1] - quad[0], quad[3] - quad[0]
            if v1[0] * v3[1] - v1[1] * v3[0] <= 0:  # mirrored
                continue
            idx = offsets + o - (lo - 5)
            rgb = colours[idx[:, 0], idx[:, 1]]
            if np.isnan(rgb).any():
                continue
            transforms.append(lattice_h @ t)
            samples.append(rgb)
            outside.append(len(keys) - inside)
    if not samples:
        return None
    scores = _match_delta_e(np.array(samples))
    best = int(np.argmin(scores))
    return float(scores[best]), transforms[best], outside[best]


def _match_delta_e(patches_srgb: np.ndarray) -> np.ndarray:
    """Mean CIEDE2000 of 24 patch colours after the best 3 x 3 fit to the reference.

    `patches_srgb` is (..., 24, 3) 8-bit (R, G, B); the data are tried both as sRGB-encoded
    and as linear, and the better fit is returned, shape (...).
    """
    rgb = np.asarray(patches_srgb, dtype=np.float64) / 255.0

    def fit(lin: np.ndarray) -> np.ndarray:
        xtx = np.swapaxes(lin, -1, -2) @ lin + 1e-9 * np.eye(3)
        xty = np.swapaxes(lin, -1, -2) @ REFERENCE_LINEAR_SRGB
        fitted = lin @ np.linalg.solve(xtx, xty)
        de: np.ndarray = delta_e_2000(linear_srgb_to_lab(fitted), REFERENCE_LAB_D50).mean(axis=-1)
        return de

    best: np.ndarray = np.minimum(fit(_srgb_decode(rgb)), fit(rgb))
    return best


# --- refinement and verification --------------------------------------------------------------


def _rectify(bgr: np.ndarray, chart_h: np.ndarray) -> np.ndarray:
    """Chart view with R = `_RECT_PX` pixels per pitch; cell (r, c) centred at ((c+1)R, (r+1)R)."""
    r = _RECT_PX
    to_chart = np.array([[1 / r, 0, -1.0], [0, 1 / r, -1.0], [0, 0, 1]])
    return cv2.warpPerspective(
        bgr, chart_h @ to_chart, (7 * r, 5 * r), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    )


def _patch_centres(rect: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroids (rect px) and side / pitch of the patches found in a rectified chart view."""
    r = _RECT_PX
    value = rect.max(axis=2)
    found, centres, fractions = [], [], []
    for i, (c, row) in enumerate(_CELLS.astype(int)):
        x0, y0 = int((c + 0.5) * r), int((row + 0.5) * r)
        win = value[y0 : y0 + r, x0 : x0 + r]
        _, bw = cv2.threshold(win, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        _, labels, stats, cents = cv2.connectedComponentsWithStats(bw, connectivity=4)
        label = labels[r // 2, r // 2]
        if label == 0:
            continue
        x, y, w, h, area = stats[label]
        if x == 0 or y == 0 or x + w >= r or y + h >= r or not 0.4 * r * r < area < 0.95 * r * r:
            continue
        found.append(i)
        centres.append(cents[label] + (x0, y0))
        fractions.append(np.sqrt(area) / r)
    return np.array(found, dtype=int), np.array(centres).reshape(-1, 2), np.array(fractions)


def _sample_patches(bgr: np.ndarray, chart_h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Robust mean sRGB8 (R, G, B) of the central 40 % of each cell, and the clipped flags.

    `chart_h` maps chart coordinates to `bgr`. The mean drops the 10 % lowest and highest
    samples per channel; a patch is clipped when over 2 % of its samples are 0 or 255.
    """
    rect = _rectify(bgr, chart_h)
    r = _RECT_PX
    a, b = round(r * (0.5 - _SAMPLE_HALF)), round(r * (0.5 + _SAMPLE_HALF))
    cells = rect[r // 2 : r // 2 + 4 * r, r // 2 : r // 2 + 6 * r]
    cells = cells.reshape(4, r, 6, r, 3)[:, a:b, :, a:b].transpose(0, 2, 1, 3, 4)
    cells = cells.reshape(24, -1, 3)
    clipped = ((cells == 255) | (cells == 0)).any(axis=2).mean(axis=1) > 0.02
    ordered = np.sort(cells, axis=1).astype(np.float64)
    k = ordered.shape[1] // 10
    means = ordered[:, k : ordered.shape[1] - k].mean(axis=1)[:, ::-1]
    return means, clipped


def _refine_and_verify(bgr: np.ndarray, chart_h: np.ndarray, *, embedded: bool) -> Chart | None:
    fractions = np.zeros(0)
    measured = np.full((24, 2), np.nan)
    for _ in range(2):
        found, centres, fractions = _patch_centres(_rectify(bgr, chart_h))
        if len(found) < 12:
            break
        rect_to_image = chart_h @ np.array(
            [[1 / _RECT_PX, 0, -1.0], [0, 1 / _RECT_PX, -1.0], [0, 0, 1]]
        )
        measured = np.full((24, 2), np.nan)
        measured[found] = _transform(rect_to_image, centres)
        refined, inliers = cv2.findHomography(
            _CELLS[found], measured[found], cv2.RANSAC, _pitch(chart_h) * 0.08
        )
        if refined is None or inliers.sum() < 12:
            break
        chart_h = refined / refined[2, 2]
    patches, clipped = _sample_patches(bgr, chart_h)
    score = float(_match_delta_e(patches))
    corners = _transform(chart_h, CHART_QUAD)
    if score > MAX_MATCH_DELTA_E or not _plausible(corners, patches, bgr.shape):
        return None
    fraction = float(np.median(fractions)) if len(fractions) else float("nan")
    return Chart(
        type="colorchecker24" if embedded else _chart_type(fraction),
        corners=corners,
        patches_srgb=patches,
        clipped=clipped,
        match_delta_e=score,
        pitch_px=_pitch(chart_h),
        patch_fraction=fraction,
        patch_centres=measured,
    )


def _chart_type(patch_fraction: float) -> str:
    if patch_fraction >= 0.855:
        return "classic24"
    if patch_fraction <= 0.825:
        return "mini24"
    return "colorchecker24"


def _pitch(chart_h: np.ndarray) -> float:
    """Mean image distance between horizontally and vertically neighbouring patch centres."""
    centres = _transform(chart_h, _CELLS).reshape(4, 6, 2)
    steps = np.concatenate(
        [
            np.linalg.norm(np.diff(centres, axis=1), axis=2).ravel(),
            np.linalg.norm(np.diff(centres, axis=0), axis=2).ravel(),
        ]
    )
    return float(steps.mean())


def _plausible(corners: np.ndarray, patches: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Convex quad inside the image, sane aspect, and a neutral ramp that gets darker."""
    h, w = shape[:2]
    if not cv2.isContourConvex(corners.astype(np.float32).reshape(-1, 1, 2)):
        return False
    if (corners < -0.02 * max(h, w)).any() or (corners[:, 0] > 1.02 * w).any():
        return False
    if (corners[:, 1] > 1.02 * h).any():
        return False
    sides = np.linalg.norm(corners - np.roll(corners, 1, axis=0), axis=1)
    if not 0.6 < sides[[1, 3]].mean() / sides[[0, 2]].mean() < 3.5:
        return False
    ramp = patches[list(NEUTRALS)].mean(axis=1)
    flat_ends = ((ramp[:-1] >= 250) & (ramp[1:] >= 250)) | ((ramp[:-1] <= 5) & (ramp[1:] <= 5))
    return bool(np.all((np.diff(ramp) < 0) | flat_ends))
