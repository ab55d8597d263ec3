"""The colour step on photo bytes, as intake and `ebiw normalize` use it."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from app.pipeline.color import normalize_photo
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
