"""The viewer in Debian's Chromium (Playwright): thumbnails, banner, original/normalized toggle,
ΔE report, measuring a ColorChecker whose size is known, the uncalibrated warning, comparison
with an earlier study, and screenshots at phone and desktop sizes into tests/.artifacts/.

Playwright runs in a thread of its own, so these tests coexist with other browser tests of the
same pytest session (Playwright's sync API allows one instance per thread).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import ARTIFACTS, Browser
from tests.viewer.conftest import (
    CARD_WIDTH_MM,
    CHART,
    QUAD_MM,
    StoredStudy,
    chart_quad,
    chart_spacing_mm,
    photo,
    store_derived,
    store_earlier_study,
    upload_study,
)


def open_viewer(browser: Any, url: str, token: str | None, size: tuple[int, int],
                problems: list[str]) -> Any:
    """A page at ``size`` with the bearer token in sessionStorage, console errors collected."""
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    if token:
        page.add_init_script(f"sessionStorage.setItem('ebiw.token', {token!r})")
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(url)
    return page


def image_to_screen(page: Any, selector: str, point: np.ndarray,
                    size: tuple[int, int]) -> tuple[float, float]:
    """Screen position of an image pixel of the image shown by ``selector``."""
    box = page.locator(selector).bounding_box()
    return (box["x"] + point[0] / size[0] * box["width"],
            box["y"] + point[1] / size[1] * box["height"])


def show_normalized(page: Any) -> None:
    """Switch the main stage to the normalized image and wait until it is calibrated."""
    page.click("[data-variant=normalized]")
    wait_until(page, "document.querySelector('#calibration').textContent"
                     ".startsWith('Calibrated:')")
    page.wait_for_timeout(300)


def draw_length(page: Any, a: np.ndarray, b: np.ndarray, size: tuple[int, int]) -> None:
    """With the length tool, drag on the main image from pixel ``a`` to ``b`` (image ``size``)."""
    page.click("[data-tool=length]")
    page.mouse.move(*image_to_screen(page, "#stage-main .image", a, size))
    page.mouse.down()
    page.mouse.move(*image_to_screen(page, "#stage-main .image", b, size), steps=8)
    page.mouse.up()


def wait_until(page: Any, expression: str, timeout: float = 20.0) -> None:
    """Poll a JS expression from outside the page (the page's CSP forbids Playwright's
    in-page eval of predicates)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(50)


def measurements(page: Any) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        "#measurements li", "items => items.map(i => ({...i.dataset, text: i.textContent}))")


def _token(auth: dict[str, dict[str, str]]) -> str:
    return auth["view"]["Authorization"].removeprefix("Bearer ")


def test_viewer_measures_the_chart_and_compares(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        chart_study: StoredStudy, live_server: str, chromium: Browser) -> None:
    earlier = store_earlier_study(app, photo("jtvd_classic_01.jpg"),
                                  datetime(2024, 3, 5, 10, 0, tzinfo=UTC))
    quad = chart_quad()
    url = f"{live_server}/studies/{chart_study.study_uid}"
    problems: list[str] = []

    def scenario(browser: Any) -> dict[str, Any]:
        page = open_viewer(browser, url, _token(auth), (1280, 800), problems)
        page.wait_for_selector("body[data-ready=true]", timeout=20_000)
        wait_until(page, "[...document.querySelectorAll('.thumb img')]"
                         ".every(i => i.complete && i.naturalWidth > 0)")
        out: dict[str, Any] = {
            "name": page.text_content("#patient-name"),
            "mrn": page.text_content("#patient-id"),
            "born": page.text_content("#patient-birth"),
            "site": page.text_content("#study-site"),
            "thumbs": page.locator(".thumb img").count(),
            "report": page.text_content("#report-text"),
        }
        show_normalized(page)
        draw_length(page, quad[0], quad[1], (1600, 1200))
        page.click("[data-tool=area]")
        for corner in quad:
            page.mouse.click(*image_to_screen(page, "#stage-main .image", corner, (1600, 1200)))
        page.mouse.click(*image_to_screen(page, "#stage-main .image", quad[0], (1600, 1200)))
        out["measured"] = measurements(page)
        page.screenshot(path=str(ARTIFACTS / "viewer-1280x800.png"))
        page.click("[data-variant=original]")
        wait_until(page, "document.querySelector('#calibration').textContent"
                         ".startsWith('Calibrated from the normalized')")
        out["after_toggle"] = measurements(page)
        page.click(f".timeline-item[data-study='{earlier.study_uid}']")
        wait_until(page, "document.querySelector('#stage-compare .image')?.naturalWidth > 0")
        page.wait_for_timeout(300)
        out["stages"] = page.locator(".stage").count()
        out["compare_label"] = page.text_content("#stage-compare .stage-label")
        page.screenshot(path=str(ARTIFACTS / "viewer-compare-1280x800.png"))
        page.close()
        return out

    seen = chromium.run(scenario)
    assert problems == []
    assert (seen["name"], seen["mrn"], seen["born"]) == ("DEMO, ALICE", "00123456 (HOSP-A)",
                                                         "1950-03-14")
    assert seen["site"] == "Forearm, left"
    assert seen["thumbs"] == 4 and "ΔE2000 mean 1.9" in seen["report"]
    length, area = seen["measured"]
    assert (length["kind"], length["unit"], area["kind"], area["unit"]) == (
        "length", "mm", "area", "mm2")
    assert float(length["value"]) == pytest.approx(CARD_WIDTH_MM, rel=0.05)
    assert float(length["value"]) == pytest.approx(QUAD_MM[0], rel=0.05)
    assert float(area["value"]) == pytest.approx(QUAD_MM[0] * QUAD_MM[1], rel=0.05)
    assert [m["value"] for m in seen["after_toggle"]] == [m["value"] for m in seen["measured"]]
    assert seen["stages"] == 2 and seen["compare_label"] == "Earlier · 2024-03-05"


def test_measurements_follow_a_reduced_normalized_copy(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        live_server: str, chromium: Browser) -> None:
    """EBIW_COLOR_MAX_PIXELS: the normalized copy is half size. A length drawn on it keeps
    its place and its millimetres on the original (calibrated from the pair's spacing,
    scaled to the original's pixel grid)."""
    study = store_derived(app, upload_study(client, auth["capture"], [photo(CHART)]),
                          spacing_mm=2 * chart_spacing_mm(), report="reduced", reduce=2)
    quad = chart_quad() / 2  # in the half-size copy's pixels
    problems: list[str] = []

    def scenario(browser: Any) -> dict[str, Any]:
        page = open_viewer(browser, f"{live_server}/studies/{study.study_uid}", _token(auth),
                           (1280, 800), problems)
        page.wait_for_selector("body[data-ready=true]", timeout=20_000)
        show_normalized(page)
        draw_length(page, quad[0], quad[1], (800, 600))
        out = {"on_copy": measurements(page)}
        page.click("[data-variant=original]")
        wait_until(page, "document.querySelector('#calibration').textContent"
                         ".startsWith('Calibrated from the normalized')")
        out["on_original"] = measurements(page)
        out["line"] = page.eval_on_selector(
            "#stage-main svg line", "l => [l.x1, l.y1, l.x2, l.y2].map(v => v.baseVal.value)")
        page.close()
        return out

    seen = chromium.run(scenario)
    assert problems == []
    [on_copy], [on_original] = seen["on_copy"], seen["on_original"]
    assert on_copy["unit"] == on_original["unit"] == "mm"
    assert float(on_copy["value"]) == pytest.approx(QUAD_MM[0], rel=0.05)
    assert float(on_original["value"]) == pytest.approx(float(on_copy["value"]), rel=0.01)
    x1, y1, x2, y2 = seen["line"]  # on the original's grid: twice the copy's coordinates
    assert np.allclose([x1, y1], 2 * quad[0], atol=12) and np.allclose([x2, y2], 2 * quad[1],
                                                                        atol=12)


def test_viewer_on_a_phone_warns_when_uncalibrated(
        client: FlaskClient, auth: dict[str, dict[str, str]], live_server: str,
        chromium: Browser) -> None:
    study = upload_study(client, auth["capture"], [photo("oycq_data_huawei.jpg"),
                                                   photo("jtvd_classic_04.jpg")])
    url = f"{live_server}/studies/{study.study_uid}"
    problems: list[str] = []

    def scenario(browser: Any) -> dict[str, Any]:
        page = open_viewer(browser, url, _token(auth), (390, 844), problems)
        page.wait_for_selector("body[data-ready=true]", timeout=20_000)
        page.click("[data-tool=length]")
        box = page.locator("#stage-main").bounding_box()
        page.mouse.move(box["x"] + 60, box["y"] + 100)
        page.mouse.down()
        page.mouse.move(box["x"] + 300, box["y"] + 260, steps=6)
        page.mouse.up()
        wait_until(page, "[...document.querySelectorAll('.thumb img')]"
                         ".every(i => i.complete && i.naturalWidth > 0)")
        out = {"warning": page.text_content("#calibration"),
               "badge": page.evaluate("getComputedStyle(document.querySelector('#stage-main'),"
                                      " '::after').content"),
               "toggle_hidden": page.locator("#variant").is_hidden(),
               "measured": measurements(page),
               "overflow": page.evaluate("document.documentElement.scrollWidth")}
        page.screenshot(path=str(ARTIFACTS / "viewer-390x844.png"), full_page=True)
        page.close()
        return out

    seen = chromium.run(scenario)
    assert problems == []
    assert seen["warning"].startswith("Not calibrated")
    assert "Not calibrated" in seen["badge"]
    assert seen["toggle_hidden"]
    (length,) = seen["measured"]
    assert length["unit"] == "px" and length["text"].endswith(" px")
    assert seen["overflow"] <= 390  # nothing wider than the phone


def test_viewer_asks_to_sign_in_without_credentials(
        chart_study: StoredStudy, live_server: str, chromium: Browser) -> None:
    problems: list[str] = []

    def scenario(browser: Any) -> str:
        page = open_viewer(browser, f"{live_server}/studies/{chart_study.study_uid}", None,
                           (1280, 800), problems)
        page.wait_for_selector("#message:not([hidden])")
        text = page.text_content("#message")
        page.close()
        return text

    assert chromium.run(scenario).startswith("Please sign in")
    assert all("401" in p for p in problems)  # the refused fetch, nothing else


def test_viewer_page_is_a_phi_free_shell_under_a_strict_csp(
        client: FlaskClient, chart_study: StoredStudy) -> None:
    response = client.get(f"/studies/{chart_study.study_uid}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "DEMO" not in html and "00123456" not in html
    assert "<script>" not in html and " style=" not in html
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert client.get("/studies/not-a-uid").status_code == 404
