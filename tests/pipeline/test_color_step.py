"""The colour step on photo bytes, as intake and `ebiw normalize` use it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from app.pipeline.color import normalize_photo
from app.pipeline.decode import reduction_for
from tests.conftest import CHARTS

GROUND_TRUTH = json.loads((CHARTS / "groundtruth.json").read_text())["images"]


def test_chart_photo_gives_report_and_a_normalized_jpeg() -> None:
    name = "luimoli_d65.jpg"
    outcome = normalize_photo((CHARTS / name).read_bytes())
    report = outcome.as_json()
    corners = np.array(report["chart"]["corners"])
    truth = np.array(GROUND_TRUTH[name]["quad"])
    diagonal = np.linalg.norm(truth[0] - truth[2])
    assert np.linalg.norm(corners - truth, axis=1).mean() < 0.03 * diagonal
    assert report["delta_e_after"]["loo_mean"] < report["delta_e_before"]["mean"]
    assert report["reliable"] and report["pixel_spacing_mm"] > 0
    assert outcome.jpeg is not None
    image = Image.open(io.BytesIO(outcome.jpeg))
    assert image.size == (outcome.width, outcome.height) == tuple(GROUND_TRUTH[name]["image_wh"])
    assert "CIEDE2000 before mean" in outcome.derivation_description()


def test_no_chart_is_a_result_not_an_error() -> None:
    outcome = normalize_photo((CHARTS / "karnehen_cam2_nochart.jpg").read_bytes())
    assert outcome.chart is None and outcome.jpeg is None and outcome.pixel_spacing_mm is None
    assert outcome.as_json()["chart"] is None


def test_a_pixel_cap_runs_the_step_on_a_reduced_decode_with_the_same_answer() -> None:
    """EBIW_COLOR_MAX_PIXELS: a 12 MP photo capped at 4 MP is normalized at half size; the
    report (corners, spacing) stays in the photo's pixels and agrees with the full-size run."""
    name = "oycq_data_iphone.jpg"
    data = (CHARTS / name).read_bytes()
    full = normalize_photo(data)
    half = normalize_photo(data, output_max_pixels=4_000_000)
    width, height = GROUND_TRUTH[name]["image_wh"]
    assert (half.scale, half.width, half.height) == (2, width // 2, height // 2)
    assert Image.open(io.BytesIO(half.jpeg)).size == (half.width, half.height)
    a, b = full.as_json(), half.as_json()
    truth = np.array(GROUND_TRUTH[name]["quad"])
    diagonal = np.linalg.norm(truth[0] - truth[2])
    assert np.abs(np.array(b["chart"]["corners"]) - a["chart"]["corners"]).max() < 0.005 * diagonal
    assert b["pixel_spacing_mm"] == pytest.approx(a["pixel_spacing_mm"], rel=0.005)
    assert half.pixel_spacing_mm == pytest.approx(2 * half.photo_pixel_spacing_mm)
    assert b["delta_e_after"]["loo_mean"] == pytest.approx(a["delta_e_after"]["loo_mean"], abs=0.1)
    assert b["model"] == a["model"] and b["reliable"]


@pytest.mark.parametrize(("pixels", "cap", "factor"), [
    (12_000_000, 0, 1), (12_000_000, 12_000_000, 1), (12_000_000, 4_000_000, 2),
    (12_000_000, 2_999_999, 4), (48_000_000, 4_000_000, 4), (48_000_000, 100, 8)])
def test_reduction_for_picks_the_smallest_dct_factor_that_fits(pixels: int, cap: int,
                                                               factor: int) -> None:
    assert reduction_for(pixels, cap) == factor
