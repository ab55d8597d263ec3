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

import pytest

from tests.e2e.conftest import PhoneAudit
from tests.e2e.test_capture_app import (
    fill_details,
    identify_typed,
    log_in,
    screen,
    send_and_wait,
    shoot,
)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_capture_screen_fits_a_phone_and_is_accessible(
        phone_audit: Callable[[str, str, str], PhoneAudit], scheme: str) -> None:
    audit = phone_audit("chart-blurred", scheme, "capture")
    page, check = audit.page, audit.check
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
    audit.assert_clean("patient", "details", "camera", "review", "photo-view", "done")
