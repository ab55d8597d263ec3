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
from datetime import date

import pytest

from app.db.models import Patient
from tests.conftest import services
from tests.e2e.conftest import LiveApp, PhoneAudit
from tests.e2e.test_capture_app import (
    fill_details,
    identify_typed,
    log_in,
    screen,
    send_and_wait,
    shoot,
)
from tests.e2e.test_capture_review import to_camera

DRAWN_IN_FULL = """([selector, text]) => {
  // whether `text`, in one text node of the element, is drawn in full: inside the box of every
  // ancestor that clips its overflow (an ellipsis or a cut-off hides the rest)
  const walker = document.createTreeWalker(document.querySelector(selector), NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const at = node.data.indexOf(text);
    if (at < 0) continue;
    const range = document.createRange();
    range.setStart(node, at);
    range.setEnd(node, at + text.length);
    const box = range.getBoundingClientRect();
    for (let e = node.parentElement; e; e = e.parentElement) {
      const style = getComputedStyle(e);
      if (style.overflowX === "visible" && style.overflowY === "visible") continue;
      const clip = e.getBoundingClientRect();
      if (box.left < clip.left - 0.5 || box.right > clip.right + 0.5
          || box.top < clip.top - 0.5 || box.bottom > clip.bottom + 0.5) return false;
    }
    return box.width > 0;
  }
  return false;
}"""

LINE_HEIGHTS = """(selector) => {
  const line = document.querySelector(selector);
  return line.getBoundingClientRect().height / parseFloat(getComputedStyle(line).lineHeight);
}"""


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


def test_the_camera_shows_a_long_named_patient_in_two_lines_with_mrn_and_birth_date(
        live: LiveApp, phone_audit: Callable[[str, str, str], PhoneAudit]) -> None:
    svc = services(live.flask)
    with svc.db.session() as db:
        db.add(Patient(mrn="00999001", issuer=svc.settings.default_issuer,
                       family="VANDERMEULEN-OKONKWO-ABERNATHY", given="MARIA-GUADALUPE ALEXANDRA",
                       birth_date=date(1948, 12, 31), sex="F"))
    audit = phone_audit("chart", "light", "long-name")
    page = audit.page
    page.goto("/")
    to_camera(page, "00999001")
    line = "#screen-camera [data-patient-line]"
    assert page.evaluate(LINE_HEIGHTS, line) <= 2.05  # it took 5 lines off the viewfinder
    for shown in ("MRN 00999001", "born Dec 31, 1948"):
        assert page.evaluate(DRAWN_IN_FULL, [line, shown]), shown
    spoken = page.locator(line).aria_snapshot()
    for said in ("VANDERMEULEN-OKONKWO-ABERNATHY, Maria-Guadalupe Alexandra", "female",
                 "MRN 00999001 (LOCAL)", "born Dec 31, 1948"):
        assert said in spoken, (said, spoken)
    audit.check("camera")
    audit.assert_clean("camera")
