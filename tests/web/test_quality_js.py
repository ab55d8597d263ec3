"""static/js/quality.js in Debian's Chromium agrees with app/pipeline/quality.py: the same
sharpness (within a few %) of a real 12 MP photo decoded by the browser, the same verdicts on
a blurred copy, and the thresholds the capture page carries are the module's."""

from __future__ import annotations

from typing import Any

import cv2
import pytest
from flask import Flask

from app.pipeline import quality
from app.pipeline.decode import encode_jpeg, load_pixels
from tests.conftest import CHARTS, Browser, served

PHOTOS = {"sharp": (CHARTS / "oycq_data_iphone.jpg").read_bytes()}
PHOTOS["blurred"] = encode_jpeg(cv2.GaussianBlur(load_pixels(PHOTOS["sharp"]), (0, 0), 3))

MEASURE = """async (name) => {
  const quality = await import("/static/js/quality.js");
  const blob = await (await fetch(`/test-photos/${name}.jpg`)).blob();
  const bitmap = await createImageBitmap(blob, { imageOrientation: "from-image" });
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  return { sharpness: quality.sharpness(canvas), checks: quality.photoChecks(canvas),
           thresholds: quality.thresholds(), size: [canvas.width, canvas.height] };
}"""


@pytest.fixture
def measured(app: Flask, chromium: Browser) -> dict[str, dict[str, Any]]:
    """quality.js's figures for each photo, on the capture page (its data-quality)."""
    with served(app) as url:
        def scenario(browser: Any) -> dict[str, dict[str, Any]]:
            page = browser.new_page()
            page.route("**/test-photos/*.jpg", lambda route: route.fulfill(
                body=PHOTOS[route.request.url.rsplit("/", 1)[1][:-4]],
                content_type="image/jpeg"))
            page.goto(url + "/")
            out = {name: page.evaluate(MEASURE, name) for name in PHOTOS}
            page.close()
            return out

        return chromium.run(scenario)


def test_js_and_python_sharpness_agree_and_both_flag_the_blurred_copy(
        measured: dict[str, dict[str, Any]]) -> None:
    for name, data in PHOTOS.items():
        bgr = load_pixels(data)
        js = measured[name]
        assert js["size"] == [bgr.shape[1], bgr.shape[0]]
        python = quality.sharpness(bgr)
        assert js["sharpness"] == pytest.approx(python, rel=0.03), name
        checks = {c["id"]: c for c in js["checks"]["checks"]}
        record = {c.id: c for c in quality.assess(bgr, None).checks}
        assert checks["sharpness"]["ok"] is record["sharpness"].ok
        assert checks["sharpness"]["text"] == record["sharpness"].text
        assert checks["exposure"]["ok"] is record["exposure"].ok
        assert checks["exposure"]["value"] == pytest.approx(record["exposure"].value, abs=1.0)
    assert measured["sharp"]["checks"]["ok"] is True
    assert measured["blurred"]["checks"]["ok"] is False
    assert measured["blurred"]["sharpness"] < quality.MIN_SHARPNESS_PHOTO < \
        measured["sharp"]["sharpness"]


def test_the_capture_page_carries_the_modules_thresholds(
        measured: dict[str, dict[str, Any]]) -> None:
    assert measured["sharp"]["thresholds"] == quality.client_config()
