"""Every screen of the capture flow on a phone (Pixel 7, 390×844), light and dark, with the
fake camera: nothing wider than the screen, every control at least 44×44 px, axe-core finding
no serious or critical violation. tests/web/test_pages_phone.py checks the server pages and the
app's first screens; this walks the screens behind them (patient, details, camera with its
guidance row, review asking "Retake?" of a blurred photo, the photo full screen, done), which
need a patient and photos.

axe is injected as a script, so this context bypasses the CSP; test_capture_app.py walks the
same flow under the deployment's CSP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AXE_RUN, PHONE, TAP_TARGETS
from tests.e2e.conftest import ARTIFACTS, LiveApp
from tests.e2e.test_capture_app import (
    fill_details,
    identify_typed,
    log_in,
    screen,
    send_and_wait,
    shoot,
)

WIDTH = "() => document.documentElement.scrollWidth"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_capture_screen_fits_a_phone_and_is_accessible(
        live: LiveApp, browsers: Callable[[str], Any], axe_script: Path, scheme: str) -> None:
    context = browsers("chart-blurred").new_context(**PHONE, base_url=live.url, bypass_csp=True,
                                            color_scheme=scheme)
    context.set_default_timeout(30000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    found: dict[str, dict[str, Any]] = {}

    def check(name: str) -> None:
        page.add_script_tag(path=str(axe_script))
        found[name] = {"width": page.evaluate(WIDTH), "small": page.evaluate(TAP_TARGETS),
                       "axe": page.evaluate(AXE_RUN)}
        page.screenshot(path=str(ARTIFACTS / f"phone-capture-{name}-{scheme}.png"),
                        full_page=True)

    try:
        page.goto("/")
        log_in(page)
        page.click("#start")
        identify_typed(page, "00123456")
        check("patient")
        page.click("[data-confirm='0']")
        fill_details(page, "forearm", "Forearm", "L")
        check("details")
        page.click("#details-form button[type=submit]")
        page.wait_for_selector("#guidance [data-check=sharpness][data-state=warn]")
        shoot(page, 1)
        check("camera")
        page.click("#camera-done")
        screen(page, "review")
        page.wait_for_selector(".retake [data-keep]")
        check("review")
        page.click("[data-view]")
        page.wait_for_function("() => document.querySelector('#photo-view').open")
        check("photo-view")
        page.keyboard.press("Escape")
        send_and_wait(page)
        page.click("#finish")
        screen(page, "done")
        check("done")
    finally:
        context.close()
    assert set(found) == {"patient", "details", "camera", "review", "photo-view", "done"}
    for name, seen in found.items():
        assert seen["width"] <= 390, (name, seen["width"])
        assert seen["small"] == [], (name, seen["small"])
        assert seen["axe"] == [], (name, seen["axe"])
    assert errors == []
