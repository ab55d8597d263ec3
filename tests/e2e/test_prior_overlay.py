"""The prior photo as a guide in a real browser (issue 16): for a patient and site that already
have a photo (uploaded through the API, a real chart photo), the camera shows it as an onion
skin (toggle, opacity, outline), the shutter still works beneath it, and review shows the new
photo beside it at the same scale once both have a chart; a new patient or site gets nothing.
The image stays in memory: no URL names the patient, no cache or IndexedDB store holds it;
offline it is not asked for.
Phone size, light and dark: axe-core clean, every control of the overlay at least 44 px."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests
from sqlalchemy import select

from app.db.models import CaptureSession, Photo
from app.workflow.tokens import create_token
from tests.conftest import services
from tests.e2e.conftest import CHART_PHOTO, LiveApp, PhoneAudit
from tests.e2e.test_capture_app import (
    IDB_COUNTS,
    fill_details,
    identify_typed,
    log_in,
    screen,
    send_and_wait,
    shoot,
)

ALICE = "00123456"  # a demo patient
BOB = "00234567"

OVERLAY_PIXELS = """() => {
  const canvas = document.querySelector('#prior-overlay');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let opaque = 0, clear = 0, lit = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] === 0) clear += 1; else opaque += 1;
    if (data[i] + data[i + 1] + data[i + 2] > 0) lit += 1;
  }
  const total = data.length / 4;
  return { total, opaque: opaque / total, clear: clear / total, lit: lit / total };
}"""

HIT_AT_VIDEO_CENTRE = """() => {
  const box = document.querySelector('#camera-video').getBoundingClientRect();
  return document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2).id;
}"""

CACHED_PATHS = """async () => {
  const out = [];
  for (const name of await caches.keys()) {
    for (const request of await (await caches.open(name)).keys()) {
      out.push(new URL(request.url).pathname);
    }
  }
  return out;
}"""


def seed_prior(live: LiveApp, mrn: str = ALICE, site: str = "14975008",
               laterality: str | None = "L") -> str:
    """A stored session of ``mrn`` with the real chart photo, through the API; its token."""
    token = create_token(services(live.flask).db, "seeder", "capture")
    headers = {"Authorization": f"Bearer {token}"}
    body: dict[str, Any] = {"patient": {"id": mrn}, "body_site": site}
    if laterality:
        body["laterality"] = laterality
    session = requests.post(f"{live.url}/api/v1/sessions", json=body, headers=headers,
                            timeout=30)
    assert session.status_code == 201, session.text
    put = requests.put(f"{live.url}/api/v1/sessions/{session.json()['id']}/photos/"
                       f"{uuid.uuid4()}", data=CHART_PHOTO.read_bytes(),
                       headers={**headers, "Content-Type": "image/jpeg"}, timeout=120)
    assert put.status_code == 201, put.text
    assert put.json()["pixel_spacing_mm"] and put.json()["normalized_sop_instance_uid"]
    return token


def to_camera(page: Any, mrn: str, search: str, meaning: str, side: str | None) -> int:
    """From the identify screen to the camera for ``mrn`` and the site; the status of the
    prior's answer."""
    identify_typed(page, mrn)
    page.click("[data-confirm='0']")
    fill_details(page, search, meaning, side)
    with page.expect_response(lambda r: r.url.endswith("/api/v1/prior")) as answer:
        page.click("#details-form button[type=submit]")
    screen(page, "camera")
    page.wait_for_function("() => document.querySelector('#camera-video').videoWidth > 0")
    return answer.value.status


def test_overlay_for_a_repeat_patient_and_site_and_none_for_a_new_one(
        live: LiveApp, page_for: Any) -> None:
    token = seed_prior(live)
    page = page_for("chart", live)
    log_in(page)
    page.click("#start")
    assert to_camera(page, ALICE, "forearm", "Forearm", "L") == 200
    page.wait_for_selector("#prior-overlay:not([hidden])")
    assert page.is_visible("#prior-controls")
    assert "Earlier photo of this site" in page.inner_text("#prior-note")
    photo = page.evaluate(OVERLAY_PIXELS)
    assert photo["total"] > 100_000  # drawn at the screen's resolution over the viewfinder
    assert photo["opaque"] > 0.95 and photo["lit"] > 0.9  # the prior covers the 4:3 view
    assert page.evaluate("getComputedStyle(document.querySelector('#prior-overlay')).opacity") \
        == "0.5"
    assert page.evaluate(HIT_AT_VIDEO_CENTRE) == "camera-video"  # taps go through it

    page.click("#prior-toggle")  # hide
    assert page.is_hidden("#prior-overlay")
    assert page.get_attribute("#prior-toggle", "aria-pressed") == "false"
    page.click("#prior-toggle")  # show again
    page.wait_for_selector("#prior-overlay:not([hidden])")

    page.focus("#prior-opacity")
    for _ in range(4):
        page.keyboard.press("ArrowRight")  # 50 % + 4 steps of 5 %
    assert page.evaluate("getComputedStyle(document.querySelector('#prior-overlay')).opacity") \
        == "0.7"

    page.click("#prior-outline")
    assert page.get_attribute("#prior-outline", "aria-pressed") == "true"
    outline = page.evaluate(OVERLAY_PIXELS)
    assert 0.02 < outline["opaque"] < 0.3  # lines: the strongest edges only
    assert outline["clear"] > 0.7
    page.click("#prior-outline")

    # the live guidance has seen the chart: its px/mm gives the scale until the photo is stored
    page.wait_for_selector("#guidance [data-check=chart][data-state=ok]", timeout=20000)
    shoot(page, 1)  # the shutter works with the overlay shown
    page.click("#camera-done")
    screen(page, "review")
    page.wait_for_selector("#prior-compare:not([hidden])")
    assert page.get_attribute("#prior-compare", "data-scale") == "estimated"
    assert "estimated from the live guidance" in page.inner_text("#compare-scale")
    estimated = page.evaluate("""() => ['#compare-prior', '#compare-new'].map(
        (s) => document.querySelector(s).getBoundingClientRect().width)""")

    send_and_wait(page)
    page.wait_for_function(
        "() => document.querySelector('#prior-compare').dataset.scale === 'same'")
    assert "Same scale" in page.inner_text("#compare-scale")
    widths = page.evaluate("""() => ['#compare-prior', '#compare-new'].map(
        (s) => document.querySelector(s).getBoundingClientRect().width)""")
    # mm per screen pixel equal: each width in mm (from the server's own numbers) over its
    # width on the screen
    prior = requests.post(f"{live.url}/api/v1/prior",
                          json={"patient": {"id": ALICE}, "body_site": "14975008",
                                "laterality": "L", "exclude_session": new_session(live)},
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert prior.status_code == 200
    prior_mm = 1280 / float(prior.headers["X-Prior-Px-Per-Mm"])
    with services(live.flask).db.session() as db:
        new = db.scalars(select(Photo).join(CaptureSession).where(
            CaptureSession.id == new_session(live))).one()
        new_mm = max(new.width, new.height) * new.pixel_spacing_mm
    assert widths[0] / prior_mm == pytest.approx(widths[1] / new_mm, rel=0.02)
    # the estimate from a 640 px preview frame was close to the stored photo's own scale
    assert estimated[0] / prior_mm == pytest.approx(estimated[1] / new_mm, rel=0.1)

    # the image was only in memory: no cache, no IndexedDB store holds it; no URL names anyone
    assert not [p for p in page.evaluate(CACHED_PATHS) if p.startswith("/api/")]
    assert set(page.evaluate(IDB_COUNTS)["ebiw-capture"]) == {
        "keys", "sessions", "photos", "blobs", "patients", "drafts", "meta"}
    assert [u for u in page.urls if "/api/v1/prior" in u] == [f"{live.url}/api/v1/prior"]
    assert not [u for u in page.urls if ALICE in u or "DEMO" in u]

    page.click("#finish")  # the capture ended: the prior is gone from the page
    screen(page, "done")
    assert page.is_hidden("#prior-controls")
    assert page.evaluate("document.querySelector('#prior-overlay').width") == 0

    # a new patient, then a new site of the same patient: no overlay, nothing alarming
    page.click("#new-capture")
    assert to_camera(page, BOB, "forearm", "Forearm", "L") == 204
    assert page.is_hidden("#prior-overlay") and page.is_hidden("#prior-controls")
    assert page.inner_text("#camera-status") == ""
    page.goto("/")  # the app again, still logged in
    screen(page, "home")
    page.click("#start")
    assert to_camera(page, ALICE, "abdomen", "Abdomen", None) == 204  # another site
    assert page.is_hidden("#prior-overlay") and page.is_hidden("#prior-controls")

    # offline (the app opened from its shell): the prior is not asked for, nothing is said
    page.wait_for_function("() => navigator.serviceWorker.controller !== null")
    page.context.set_offline(True)
    page.reload()
    screen(page, "home")
    asked = len([u for u in page.urls if u.endswith("/api/v1/prior")])
    page.click("#start")
    screen(page, "identify")
    page.click("#recent-patients")
    screen(page, "patient")
    page.locator("#patient-list > *", has_text="Alice").locator("button[data-confirm]").click()
    fill_details(page, "forearm", "Forearm", "L")
    page.click("#details-form button[type=submit]")
    screen(page, "camera")
    page.wait_for_function("() => document.querySelector('#camera-video').videoWidth > 0")
    page.wait_for_timeout(500)
    assert len([u for u in page.urls if u.endswith("/api/v1/prior")]) == asked
    assert page.is_hidden("#prior-overlay") and page.is_hidden("#prior-controls")
    assert page.inner_text("#camera-status") == ""
    assert page.errors == []


def new_session(live: LiveApp) -> str:
    """The id of the session the browser sent (the one not made by :func:`seed_prior`)."""
    with services(live.flask).db.session() as db:
        return db.scalars(select(CaptureSession.id).where(
            CaptureSession.created_by != "seeder")).one()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_overlay_controls_and_comparison_fit_a_phone_and_are_accessible(
        live: LiveApp, phone_audit: Callable[[str, str, str], PhoneAudit], scheme: str) -> None:
    seed_prior(live)
    audit = phone_audit("chart", scheme, "prior")
    page, check = audit.page, audit.check
    page.goto("/")
    log_in(page)
    page.click("#start")
    to_camera(page, ALICE, "forearm", "Forearm", "L")
    page.wait_for_selector("#prior-overlay:not([hidden])")
    check("camera")
    page.click("#prior-outline")
    check("camera-outline")
    shoot(page, 1)
    page.click("#camera-done")
    screen(page, "review")
    page.wait_for_selector("#prior-compare:not([hidden])")
    check("review")
    audit.assert_clean("camera", "camera-outline", "review")
