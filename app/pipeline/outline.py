"""Assisted wound outline: one tap inside a wound → a proposed outline the user then adjusts.

`outline` works on a copy reduced to `WORK_SIZE` pixels on the long side, in two steps:

1. **Colour level sets seeded by the tap.** Each pixel's distance in CIELAB to the median
   colour of a small disc around the tap (lightness weighted `L_WEIGHT`: wound bed and skin
   differ mostly in a* / b*, while shading varies L). For a ladder of thresholds the connected
   region of pixels closer than the threshold that holds the tap is a candidate; the one whose
   boundary lies on the strongest colour edge (mean gradient magnitude along it) wins.
   Candidates larger than `MAX_AREA` of the image are not wounds (the region has leaked onto
   the whole foot or the sheet) and end the ladder.
2. **GrabCut initialised with that region** (not a rectangle), in a window around it: the
   region, grown by `GROW` of its size, is probable wound, its eroded core and the tap sure
   wound, the window's border sure not wound, the rest probable not wound. Colour models of
   both then settle the edge. A result beyond `MAX_AREA` of the image has spread onto the
   foot and is refused, like one that lost most of the region: the region is kept.

The outer boundary of the region holding the tap (holes filled) is traced at full size. On
the 39 FUSeg photos with a wound in ``../shared/testdata/wounds`` this reaches a mean Dice of
0.761 (first half 0.748, held-out half 0.775; 0.789 against the tapped wound alone), twice a
GrabCut from a rectangle around the same tap, in a median 21-35 ms (``bench/bench_outline.py``).
Its misses stop short at a rim whose colour differs from the tapped bed (slough, necrosis) or
leak onto callus of the wound's colour; even the best of the ladder's regions for each photo
would give 0.848, so a better choice among them alone cannot reach 0.85 (README).
"""

from __future__ import annotations

import cv2
import numpy as np

from app.pipeline.decode import DEFAULT_MAX_PIXELS, load_pixels_within, probe

WORK_SIZE = 256
"""Long side (px) of the reduced copy the outline is found on (512 x 512 photos: half size)."""
L_WEIGHT = 0.25
"""Weight of CIELAB lightness against a* and b* in colour distances and gradients."""
BLUR_SIGMA = 1.5
"""Gaussian smoothing (work-size px) of the Lab image before distances and gradients."""
SEED_RADIUS = 2
"""Radius (work-size px) of the disc around the tap whose median colour is the wound's."""
LEVELS = 40
"""Thresholds tried: quantiles of the distance map from 0.2 % to 30 % of the pixels."""
MAX_AREA = 0.12
"""A candidate covering more than this fraction of the image is not one wound."""
GRABCUT_ITERATIONS = 3
GRABCUT_SIZE = 128
"""Long side (px) the GrabCut window is reduced to: a large wound costs no more than this."""
GROW = 0.1
"""Probable wound for GrabCut reaches this fraction of the region's size beyond it: the colour
region tends to stop short of the wound's rim, whose colour differs from the tapped bed's."""
MIN_KEPT = 0.5
"""GrabCut may shrink the colour region to no less than this fraction of it."""
SIMPLIFY_PX = 1.0
"""Largest distance (full-size px) of the simplified polygon from the traced boundary."""

Polygon = list[tuple[int, int]]
Mask = np.ndarray
"""A 0/1 uint8 image."""


class SeedOutsideImageError(ValueError):
    """The tap is not on the image."""


def outline_photo(data: bytes, seed: tuple[int, int],
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Polygon:
    """`outline` of an encoded photo, ``seed`` and polygon in the coordinates of the photo as
    displayed (EXIF orientation applied, full size). A large photo is decoded reduced (JPEG: by
    libjpeg) to no less than twice `WORK_SIZE` on the long side, and the polygon scaled back.
    Raises `UnreadablePhotoError` for bytes that are not an accepted photo.
    """
    width, height = probe(data, max_pixels).oriented_size
    _check_seed(seed, width, height)
    bgr, factor = load_pixels_within(data, (2 * WORK_SIZE) ** 2, max_pixels=max_pixels)
    x, y = seed
    reduced = (min(bgr.shape[1] - 1, x // factor), min(bgr.shape[0] - 1, y // factor))
    polygon = outline(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), reduced)
    if factor == 1:
        return polygon
    return [(min(width - 1, px * factor + factor // 2), min(height - 1, py * factor + factor // 2))
            for px, py in polygon]


def _check_seed(seed: tuple[int, int], width: int, height: int) -> None:
    x, y = seed
    if not (0 <= x < width and 0 <= y < height):
        raise SeedOutsideImageError(f"the seed ({x}, {y}) is outside the {width} x {height} image")


def outline(rgb: np.ndarray, seed: tuple[int, int]) -> Polygon:
    """The proposed outline of the wound under ``seed`` (x, y in ``rgb``'s pixel coordinates).

    ``rgb`` is an upright H x W x 3 uint8 RGB image. Guarantees: a simple polygon (no
    self-intersection) of at least 3 vertices in image pixel coordinates (0 <= x < W,
    0 <= y < H), closed implicitly (the last vertex joins the first; none is repeated), that
    contains ``seed``; the same input gives the same polygon. Raises `SeedOutsideImageError`
    when ``seed`` is not on the image, ValueError when ``rgb`` is not H x W x 3 uint8.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError("expected an H x W x 3 uint8 RGB image")
    height, width = rgb.shape[:2]
    _check_seed(seed, width, height)
    x, y = seed
    scale = min(1.0, WORK_SIZE / max(height, width))
    small = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1 else rgb
    sx = min(small.shape[1] - 1, int(x * scale))
    sy = min(small.shape[0] - 1, int(y * scale))
    region = _refine(small, _colour_region(small, (sx, sy)), (sx, sy))
    return _trace(region, (width, height), seed)


def _colour_region(rgb: np.ndarray, seed: tuple[int, int]) -> Mask:
    """Step 1: the seeded colour level set whose boundary has the strongest mean edge."""
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    lab = cv2.GaussianBlur(lab, (0, 0), BLUR_SIGMA)
    weights = np.array([L_WEIGHT, 1, 1], np.float32)
    disc = np.zeros(rgb.shape[:2], np.uint8)
    cv2.circle(disc, seed, SEED_RADIUS, 1, -1)
    reference = np.median(lab[disc > 0], axis=0)
    distance = np.sqrt((((lab - reference) * weights) ** 2).sum(axis=-1))
    gx = cv2.Sobel(lab, cv2.CV_32F, 1, 0) * weights
    gy = cv2.Sobel(lab, cv2.CV_32F, 0, 1) * weights
    gradient = np.sqrt((gx**2 + gy**2).sum(axis=-1))
    kernel = np.ones((3, 3), np.uint8)
    best, best_score = disc, -1.0
    for threshold in np.quantile(distance, np.linspace(0.002, 0.3, LEVELS)):
        candidate = _component_at((distance <= threshold).astype(np.uint8), seed)
        if candidate is None:
            continue
        if int(candidate.sum()) > MAX_AREA * candidate.size:
            break
        edge = (candidate - cv2.erode(candidate, kernel)) > 0
        score = float(gradient[edge].mean()) if edge.any() else -1.0
        if score > best_score:
            best, best_score = candidate, score
    return best


def _refine(rgb: np.ndarray, region: Mask, seed: tuple[int, int]) -> Mask:
    """Step 2: GrabCut from ``region`` in a window around it (reduced to `GRABCUT_SIZE` on
    the long side); the part holding the seed, or ``region`` if GrabCut lost most of it or
    spread beyond `MAX_AREA` of the image (the same bound the region itself obeys)."""
    _, _, w, h = cv2.boundingRect(region)
    grow = max(1, int(max(w, h) * GROW))
    probable = cv2.dilate(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                            (2 * grow + 1, 2 * grow + 1)))
    left, top, w, h = cv2.boundingRect(probable)
    pad = max(w, h) // 2 + 4
    x0, y0 = max(0, left - pad), max(0, top - pad)
    x1, y1 = min(rgb.shape[1], left + w + pad), min(rgb.shape[0], top + h + pad)
    factor = min(1.0, GRABCUT_SIZE / max(x1 - x0, y1 - y0))
    size = (max(1, round((x1 - x0) * factor)), max(1, round((y1 - y0) * factor)))
    window = cv2.resize(np.ascontiguousarray(rgb[y0:y1, x0:x1, ::-1]), size,  # GrabCut: BGR
                        interpolation=cv2.INTER_AREA)
    inside = _resized(probable[y0:y1, x0:x1], size)
    core_size = max(1, round(max(w, h) * factor) // 4) | 1
    mask = np.full(inside.shape, cv2.GC_PR_BGD, np.uint8)
    mask[inside > 0] = cv2.GC_PR_FGD
    core = cv2.erode(inside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (core_size, core_size)))
    mask[core > 0] = cv2.GC_FGD
    mask[:1, :] = mask[-1:, :] = mask[:, :1] = mask[:, -1:] = cv2.GC_BGD
    local = (min(size[0] - 1, int((seed[0] - x0) * factor)),
             min(size[1] - 1, int((seed[1] - y0) * factor)))
    cv2.circle(mask, local, 1, cv2.GC_FGD, -1)
    cv2.setRNGSeed(0)  # GrabCut seeds its k-means from OpenCV's RNG: keep the result repeatable
    background = np.zeros((1, 65), np.float64)
    foreground = np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(window, mask, (0, 0, 0, 0), background, foreground, GRABCUT_ITERATIONS,
                    cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # too few pixels of one kind for its colour models (a tiny image)
        return region
    wound = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    refined = np.zeros_like(region)
    refined[y0:y1, x0:x1] = _resized(wound, (x1 - x0, y1 - y0))
    kept = _component_at(refined, seed)
    if kept is None or kept.sum() < MIN_KEPT * region.sum():
        return region  # GrabCut collapsed onto part of the wound: its models were not apart
    if kept.sum() > MAX_AREA * kept.size:
        return region  # GrabCut spread onto the foot: the region's colour edge was the better
    return kept


def _resized(mask: Mask, size: tuple[int, int]) -> Mask:
    """A 0/1 mask resampled to ``size`` (w, h), smooth-edged: linear, then half as the cut."""
    return (cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
            >= 0.5).astype(np.uint8)


def _component_at(binary: Mask, seed: tuple[int, int]) -> Mask | None:
    """The 4-connected component of ``binary`` holding ``seed`` (0/1), or None if off."""
    _, labels = cv2.connectedComponents(binary, connectivity=4)
    label = labels[seed[1], seed[0]]
    return (labels == label).astype(np.uint8) if label else None


def _trace(region: Mask, size: tuple[int, int], seed: tuple[int, int]) -> Polygon:
    """The outer boundary of ``region`` at full ``size`` (w, h), simplified, holding ``seed``."""
    full = _resized(region, size)
    cv2.circle(full, seed, 3, 1, -1)  # keeps the tap inside after resampling and simplifying
    opened = cv2.morphologyEx(full, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    cv2.circle(opened, seed, 3, 1, -1)
    blob = _component_at(opened, seed)
    assert blob is not None  # the disc drawn last holds the seed
    contours, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    boundary = max(contours, key=cv2.contourArea)
    simple = cv2.approxPolyDP(boundary, SIMPLIFY_PX, True)
    if len(simple) < 3 or cv2.pointPolygonTest(simple, (float(seed[0]), float(seed[1])),
                                               False) < 0:
        simple = boundary
    return [(int(px), int(py)) for px, py in simple.reshape(-1, 2)]
