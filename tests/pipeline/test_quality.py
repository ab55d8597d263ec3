"""Photo quality (app.pipeline.quality) on the real chart photos and on copies made worse in
known ways: blurred, over- and under-exposed, with a specular highlight, too large."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.pipeline import quality
from app.pipeline.color.detect import find_chart
from app.pipeline.decode import UnreadablePhotoError, encode_jpeg
from tests.conftest import CHARTS


def _read(name: str) -> np.ndarray:
    bgr = cv2.imread(str(CHARTS / name))
    assert bgr is not None
    return bgr


def _checks(q: quality.Quality) -> dict[str, quality.Check]:
    return {c.id: c for c in q.checks}


def _frame(bgr: np.ndarray, side: int = 640) -> np.ndarray:
    scale = side / max(bgr.shape[:2])
    return cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def test_a_chart_photo_passes_with_its_chart_tilt_and_scale() -> None:
    bgr = _read("jtvd_mini_05.jpg")
    q = quality.assess(bgr, find_chart(bgr))
    body = q.as_json()
    assert [c["id"] for c in body["checks"]] == list(quality.CHECK_IDS)
    checks = _checks(q)
    assert body["chart"]["found"] and body["chart"]["type"] == "mini24"
    assert checks["chart"].ok and checks["sharpness"].ok and checks["exposure"].ok
    assert checks["glare"].ok and checks["tilt"].ok
    # the card lies flat and is photographed from above: plausible tilt
    assert 5 < body["chart"]["tilt_deg"] < 25
    # Mini pitch 14.9 mm over about 129 px
    assert body["chart"]["px_per_mm"] == pytest.approx(8.6, abs=0.3)
    assert checks["distance"].ok and checks["distance"].value == body["chart"]["px_per_mm"]
    assert body["ok"] is True and body["advice"] == quality.TEXTS["all_ok"]


@pytest.mark.parametrize("name", ["oycq_meeting_room_iphone.jpg", "oycq_tree_shade_iphone.jpg",
                                  "oycq_window_side_iphone.jpg"])
def test_strongly_tilted_board_photos_warn_about_tilt(name: str) -> None:
    bgr = _read(name)
    checks = _checks(quality.assess(bgr, find_chart(bgr)))
    assert checks["tilt"].value is not None and checks["tilt"].value > quality.MAX_TILT_DEG
    assert checks["tilt"].ok is False and checks["tilt"].text == quality.TEXTS["tilt_bad"]


def test_a_photo_taken_square_on_has_almost_no_tilt() -> None:
    bgr = _read("qiu_passport.jpg")
    tilt = _checks(quality.assess(bgr, find_chart(bgr)))["tilt"]
    assert tilt.ok and tilt.value is not None and tilt.value < 5


def test_blurred_copy_fails_sharpness_where_the_original_passes() -> None:
    bgr = _read("jtvd_classic_06.jpg")
    chart = find_chart(bgr)
    sharp = _checks(quality.assess(bgr, chart))["sharpness"]
    blurred = cv2.GaussianBlur(bgr, (0, 0), 3)
    soft = _checks(quality.assess(blurred, find_chart(blurred)))["sharpness"]
    assert sharp.ok and sharp.value is not None and sharp.value > 10 * quality.MIN_SHARPNESS_PHOTO
    assert soft.ok is False and soft.text == quality.TEXTS["sharpness_bad"]
    assert soft.value is not None and soft.value < quality.MIN_SHARPNESS_PHOTO


def test_blurred_preview_frame_fails_sharpness() -> None:
    frame = _frame(_read("oycq_data_iphone.jpg"))
    ok = _checks(quality.assess(frame, find_chart(frame), preview=True))["sharpness"]
    blurred = cv2.GaussianBlur(frame, (0, 0), 3)
    bad = _checks(quality.assess(blurred, find_chart(blurred), preview=True))["sharpness"]
    assert ok.ok is True and bad.ok is False


def test_no_chart_photo_reports_no_chart_and_cannot_measure_distance_or_tilt() -> None:
    bgr = _read("karnehen_cam2_nochart.jpg")
    assert find_chart(bgr) is None
    body = quality.assess(bgr, None).as_json()
    assert body["chart"] == {"found": False, "type": None, "tilt_deg": None, "px_per_mm": None}
    by_id = {c["id"]: c for c in body["checks"]}
    assert by_id["chart"]["ok"] is False
    assert by_id["distance"] == {"id": "distance", "ok": None, "value": None,
                                 "text": quality.TEXTS["distance_unknown"]}
    assert by_id["tilt"]["ok"] is None and by_id["tilt"]["value"] is None
    assert body["ok"] is False and body["advice"] == quality.TEXTS["chart_missing"]


def test_overexposed_copy_fails_on_its_clipped_white_patch() -> None:
    bgr = _read("jtvd_classic_06.jpg")
    bright = cv2.convertScaleAbs(bgr, alpha=1.5)
    chart = find_chart(bright)
    assert chart is not None and chart.clipped[quality.WHITE_PATCH]
    exposure = _checks(quality.assess(bright, chart))["exposure"]
    assert exposure.ok is False and exposure.text == quality.TEXTS["exposure_bright"]
    assert _checks(quality.assess(bgr, find_chart(bgr)))["exposure"].ok is True


def test_overexposed_copy_without_a_chart_fails_on_clipped_pixels() -> None:
    bright = cv2.convertScaleAbs(_read("karnehen_cam2_nochart.jpg"), alpha=1.6)
    exposure = _checks(quality.assess(bright, None))["exposure"]
    assert exposure.ok is False and exposure.text == quality.TEXTS["exposure_bright"]


def test_darkened_copy_fails_as_too_dark() -> None:
    bgr = _read("jtvd_classic_06.jpg")
    dark = cv2.convertScaleAbs(bgr, alpha=0.2)
    exposure = _checks(quality.assess(dark, find_chart(dark)))["exposure"]
    assert exposure.ok is False and exposure.text == quality.TEXTS["exposure_dark"]
    assert exposure.value is not None and exposure.value < quality.MIN_MEAN_LUMA


def test_a_specular_highlight_on_the_colour_patches_is_glare() -> None:
    bgr = _read("jtvd_classic_06.jpg")
    chart = find_chart(bgr)
    assert chart is not None
    shiny = bgr.copy()
    centre = chart.corners.mean(axis=0).astype(int)
    cv2.circle(shiny, (int(centre[0]), int(centre[1])), int(chart.pitch_px), (255, 255, 255), -1)
    assert _checks(quality.assess(bgr, chart))["glare"].ok is True
    glare = _checks(quality.assess(shiny, chart))["glare"]
    assert glare.ok is False and glare.value is not None and glare.value > 0.05


def test_a_chart_filling_the_frame_is_too_close() -> None:
    bgr = _read("sio_classic.jpg")
    chart = find_chart(bgr)
    assert chart is not None
    lo, hi = chart.corners.min(axis=0), chart.corners.max(axis=0)
    x0, y0 = np.maximum(lo - 0.05 * (hi - lo), 0).astype(int)
    x1, y1 = (hi + 0.05 * (hi - lo)).astype(int)
    crop = np.ascontiguousarray(bgr[y0:y1, x0:x1])  # the chart and a thin border
    close = _checks(quality.assess(crop, find_chart(crop)))
    assert _checks(quality.assess(bgr, chart))["distance"].text != quality.TEXTS[
        "distance_close"]
    assert close["distance"].ok is False and close["distance"].text == quality.TEXTS[
        "distance_close"]


def test_preview_distance_speaks_of_the_photo() -> None:
    bgr = _read("jtvd_mini_05.jpg")
    frame = _frame(bgr)
    chart = find_chart(frame)
    photo = quality.assess(frame, chart, photo_width=bgr.shape[1]).px_per_mm
    own = quality.assess(frame, chart).px_per_mm
    assert photo is not None and own is not None
    assert photo == pytest.approx(own * bgr.shape[1] / frame.shape[1], rel=0.01)
    assert photo == pytest.approx(8.6, abs=0.4)  # as measured on the photo itself


def test_assess_frame_decodes_and_refuses_large_or_broken_frames() -> None:
    frame = _frame(_read("jtvd_mini_05.jpg"))
    body = quality.assess_frame(encode_jpeg(frame), photo_width=1530).as_json()
    assert body["chart"]["found"] and body["chart"]["px_per_mm"] == pytest.approx(8.6, abs=0.4)
    with pytest.raises(UnreadablePhotoError, match="640"):
        quality.assess_frame(encode_jpeg(_frame(_read("jtvd_mini_05.jpg"), 641)))
    with pytest.raises(UnreadablePhotoError):
        quality.assess_frame(b"\xff\xd8\xff\xe0 not really a JPEG")
    with pytest.raises(UnreadablePhotoError):
        quality.assess_frame(b"plain text")


def test_sharpness_is_the_laplacian_variance_of_the_central_crop() -> None:
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (1200, 1500, 3), dtype=np.uint8)
    luma = (0.299 * bgr[..., 2] + 0.587 * bgr[..., 1] + 0.114 * bgr[..., 0])
    y0, x0 = (1200 - 1024) // 2, (1500 - 1024) // 2
    crop = luma[y0:y0 + 1024, x0:x0 + 1024]
    lap = (crop[:-2, 1:-1] + crop[2:, 1:-1] + crop[1:-1, :-2] + crop[1:-1, 2:]
           - 4 * crop[1:-1, 1:-1])
    assert quality.sharpness(bgr) == pytest.approx(lap.var(), rel=1e-4)


def test_client_config_carries_the_module_thresholds() -> None:
    config = quality.client_config()
    assert config["minSharpness"] == quality.MIN_SHARPNESS_PHOTO
    assert config["sharpnessCrop"] == quality.SHARPNESS_CROP
    assert config["minMeanLuma"] == quality.MIN_MEAN_LUMA
    assert config["texts"]["sharpness_bad"] == quality.TEXTS["sharpness_bad"]
