"""Measurement on the chart's plane: real board photos with equal ArUco markers, the chart's own
known pitch located by independent ground truth, EXIF orientation, and bad input."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from functools import cache

import cv2
import numpy as np
import pytest
from PIL import Image

from app.pipeline.color import find_chart
from app.pipeline.color.detect import CHART_QUAD, Chart
from app.pipeline.decode import load_pixels
from app.pipeline.geometry import (
    EXTREME_TILT,
    FAR_FROM_CHART,
    Calibration,
    GeometryError,
    calibrate,
    calibrate_photo,
    check_polygon,
)
from tests.conftest import CHARTS

GROUND_TRUTH = json.loads((CHARTS / "groundtruth.json").read_text())["images"]
TILTED = "jtvd_classic_02.jpg"  # board seen at about 25 degrees, markers 2x apart in pixels


@cache
def calibration(name: str) -> Calibration:
    return calibrate_photo((CHARTS / name).read_bytes())


def marker_corners(name: str) -> list[np.ndarray]:
    """The 4 x 4 ArUco markers printed on the board (all the same size), 4 x 2 corners each."""
    detector = cv2.aruco.ArucoDetector(
        cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50), cv2.aruco.DetectorParameters()
    )
    corners, ids, _ = detector.detectMarkers(load_pixels((CHARTS / name).read_bytes()))
    assert ids is not None and len(ids) == 4
    return [c.reshape(4, 2).astype(np.float64) for c in corners]


def sides(quad: np.ndarray) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    return [(tuple(quad[i]), tuple(quad[(i + 1) % 4])) for i in range(4)]


def spread(values: list[float]) -> float:
    return max(values) / min(values) - 1


def test_equal_markers_measure_equal_on_a_tilted_photo_and_not_with_one_scale() -> None:
    cal = calibration(TILTED)
    quads = marker_corners(TILTED)
    measured = [cal.length_mm(p, q) for quad in quads for p, q in sides(quad)]
    single = [
        float(np.linalg.norm(np.subtract(q, p))) / cal.px_per_mm
        for quad in quads
        for p, q in sides(quad)
    ]
    lengths = [m.value for m in measured]
    assert spread(lengths) <= 0.06, lengths
    assert spread(single) >= 0.5, single  # the photo is tilted enough to tell them apart
    centre = float(np.median(lengths))
    assert all(abs(m.value - centre) <= 3 * m.uncertainty for m in measured)
    areas = [cal.area_mm2([tuple(p) for p in quad]).value for quad in quads]
    assert spread(areas) <= 0.08, areas


@pytest.mark.parametrize(
    "name", ["oycq_cloudy_bush_iphone.jpg", "oycq_window_side_iphone.jpg", "oycq_grille_iphone.jpg"]
)
def test_five_pitches_across_the_chart_measure_230_mm(name: str) -> None:
    """Patch 1 to patch 6 centres (5 x 46 mm on a Classic), placed from the ground-truth quad,
    which comes from the board's AprilTags, not from our detector. (Its vertical extent follows
    the MCC model's frame margins and reads about 3.5 % short on every photo, so only the
    horizontal is a known length.)"""
    truth = cv2.getPerspectiveTransform(
        CHART_QUAD.astype(np.float32), np.array(GROUND_TRUTH[name]["quad"], dtype=np.float32)
    )
    ends = cv2.perspectiveTransform(np.array([[[0.0, 0.0]], [[5.0, 0.0]]]), truth).reshape(2, 2)
    cal = calibration(name)
    assert cal.chart_type == "classic24" and cal.tilt_deg > 15
    length = cal.length_mm(tuple(ends[0]), tuple(ends[1]))
    assert length.value == pytest.approx(230.0, rel=0.02)
    assert length.warnings == ()


def test_an_exif_rotated_copy_measures_the_same() -> None:
    """The same displayed image stored sideways with Orientation 6: the coordinates of the
    displayed image give the same mm (the chart is found in the displayed frame)."""
    original = (CHARTS / TILTED).read_bytes()
    with Image.open(io.BytesIO(original)) as im:
        stored = im.transpose(Image.Transpose.ROTATE_90)  # displayed = stored turned clockwise
        exif = Image.Exif()
        exif[0x0112] = 6
        buffer = io.BytesIO()
        stored.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    rotated = calibrate_photo(buffer.getvalue())
    straight = calibration(TILTED)
    assert rotated.image_size == straight.image_size == (1530, 2040)
    quad = marker_corners(TILTED)[0]
    for p, q in [*sides(quad), ((200.0, 300.0), (1300.0, 1800.0))]:
        assert rotated.length_mm(p, q).value == pytest.approx(
            straight.length_mm(p, q).value, rel=0.01
        )


def test_no_chart_or_a_chart_of_unknown_size_cannot_calibrate() -> None:
    with pytest.raises(GeometryError, match="no colour chart"):
        calibrate_photo((CHARTS / "karnehen_cam2_nochart.jpg").read_bytes())
    chart = find_chart(load_pixels((CHARTS / TILTED).read_bytes()))
    assert chart is not None
    with pytest.raises(GeometryError, match="size is unknown"):
        calibrate(replace(chart, type="colorchecker24"), (1530, 2040))
    with pytest.raises(GeometryError, match="patch centres"):
        calibrate(replace(chart, patch_centres=None), (1530, 2040))


def test_points_outside_the_image_are_refused() -> None:
    cal = calibration(TILTED)
    for p in [(-1.0, 10.0), (10.0, 2040.5), (1531.0, 5.0), (float("nan"), 5.0)]:
        with pytest.raises(GeometryError, match="outside the 1530 x 2040 image"):
            cal.length_mm(p, (100.0, 100.0))
    with pytest.raises(GeometryError, match="same point"):
        cal.length_mm((5.0, 5.0), (5.0, 5.0))


@pytest.mark.parametrize(
    ("polygon", "message"),
    [
        ([(0, 0), (10, 10)], "at least 3 vertices"),
        ([(0, 0), (10, 10), (20, 20)], "no area"),
        ([(0, 0), (10, 0), (10, 0), (0, 10)], "repeats a vertex"),
        ([(0, 0), (10, 10), (10, 0), (0, 10)], "edges 1 and 3 cross"),  # a bow tie
        ([(0, 0), (1e200, 0), (0, 1e200)], "beyond any image"),  # overflowed the cross test
        ([(0, 0), (float("nan"), 0), (0, 10)], "beyond any image"),
    ],
)
@pytest.mark.filterwarnings("error")
def test_degenerate_polygons_are_refused(polygon: list[tuple[float, float]], message: str) -> None:
    with pytest.raises(GeometryError, match=message):
        check_polygon(polygon)
    with pytest.raises(GeometryError, match=message):
        calibration(TILTED).area_mm2(polygon)


def synthetic_chart(tilt_deg: float) -> tuple[Chart, np.ndarray]:
    """A Classic chart on a plane turned ``tilt_deg`` about its x axis, seen by a pinhole camera
    (f = 500 px, 2000 x 1500 image, centred on the chart) 600 mm away, patch centres with
    0.5 px noise; returns the chart and the plane mm -> image homography."""
    angle = np.radians(tilt_deg)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    camera = np.array([[500.0, 0, 1000], [0, 500, 750], [0, 0, 1]])
    centre = np.array([2.5, 1.5]) * 46.0
    translation = np.array([0, 0, 600.0]) - rotation @ np.r_[centre, 0]
    h = camera @ np.c_[rotation[:, :2], translation]
    h = h / h[2, 2]
    rows, cols = np.divmod(np.arange(24), 6)
    centres = cv2.perspectiveTransform(
        (np.c_[cols, rows] * 46.0).reshape(-1, 1, 2).astype(np.float64), h
    ).reshape(-1, 2)
    centres += np.random.default_rng(7).normal(0, 0.5, centres.shape)
    corners = cv2.perspectiveTransform((CHART_QUAD * 46.0).reshape(-1, 1, 2), h).reshape(-1, 2)
    pitch_px = float(np.linalg.norm(centres[1] - centres[0]))
    chart = Chart(
        "classic24",
        corners,
        np.zeros((24, 3)),
        np.zeros(24, dtype=bool),
        0.0,
        pitch_px,
        0.88,
        centres,
    )
    return chart, h


@pytest.mark.parametrize("tilt", [20.0, 70.0])
def test_synthetic_tilt_is_measured_and_extreme_tilt_is_flagged(tilt: float) -> None:
    chart, h = synthetic_chart(tilt)
    cal = calibrate(chart, (2000, 1500))
    assert cal.tilt_deg == pytest.approx(tilt, abs=4)
    assert cal.rms_residual_px == pytest.approx(0.5 * np.sqrt(2), rel=0.35)
    # A 100 mm segment on the plane, across the tilt, measured from its pixels.
    ends = cv2.perspectiveTransform(np.array([[[50.0, 20.0]], [[50.0, 120.0]]]), h).reshape(2, 2)
    length = cal.length_mm(tuple(ends[0]), tuple(ends[1]))
    assert length.value == pytest.approx(100.0, rel=0.01)
    assert (EXTREME_TILT in length.warnings) == (tilt > 60)
    assert [w["code"] for w in cal.as_json()["warnings"]] == ([EXTREME_TILT] if tilt > 60 else [])


def test_far_from_the_chart_is_flagged_and_less_certain() -> None:
    chart, h = synthetic_chart(20.0)
    cal = calibrate(chart, (2000, 1500))
    near = cv2.perspectiveTransform(np.array([[[0.0, 0.0]], [[50.0, 0.0]]]), h).reshape(2, 2)
    far = cv2.perspectiveTransform(np.array([[[-700.0, 0.0]], [[-650.0, 0.0]]]), h).reshape(2, 2)
    assert all(0 <= x <= 2000 and 0 <= y <= 1500 for x, y in far)
    near_m = cal.length_mm(tuple(near[0]), tuple(near[1]))
    far_m = cal.length_mm(tuple(far[0]), tuple(far[1]))
    assert near_m.value == pytest.approx(50.0, rel=0.02) and near_m.warnings == ()
    assert far_m.warnings == (FAR_FROM_CHART,)
    assert far_m.uncertainty > near_m.uncertainty


@pytest.mark.parametrize(
    ("tilt", "visible_y", "beyond_y"), [(70.0, 10.0, 1490.0), (-70.0, 1490.0, 10.0)]
)
def test_points_beyond_the_planes_horizon_are_refused(
    tilt: float, visible_y: float, beyond_y: float
) -> None:
    """Seen at 70 degrees the plane's horizon crosses the image, above or below the chart."""
    cal = calibrate(synthetic_chart(tilt)[0], (2000, 1500))
    assert cal.length_mm((1000, visible_y), (1010, visible_y)).value > 0
    with pytest.raises(GeometryError, match="horizon"):
        cal.length_mm((1000, beyond_y), (1010, beyond_y))
