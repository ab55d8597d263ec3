"""Leaving a capture half-way, on a phone (390×844): a reload, or the app bar's Capture tab,
loses neither the confirmed patient nor the capture details; resuming goes on where it was.
What the draft holds is kept encrypted in IndexedDB (never in localStorage, the URL or in
clear) and goes with the rest at logout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.conftest import PHONE
from tests.e2e.conftest import PhoneAudit
from tests.e2e.test_capture_app import (
    fill_details,
    idb,
    identify_typed,
    log_in,
    screen,
    send_and_wait,
    shoot,
)

MRN = "00123456"  # DEMO, Alice

KEPT_DRAFTS = """async () => {
  const db = await new Promise((ok, fail) => {
    const r = indexedDB.open("ebiw-capture");
    r.onsuccess = () => ok(r.result); r.onerror = fail; });
  const all = await new Promise((ok) => {
    const r = db.transaction("drafts").objectStore("drafts").getAll();
    r.onsuccess = () => ok(r.result); });
  db.close();
  return all.map((d) => ({ keys: Object.keys(d).sort(), iv: d.sealed.iv.length,
    text: new TextDecoder("latin1").decode(d.sealed.data) }));
}"""

STORAGE = "() => JSON.stringify([{...localStorage}, {...sessionStorage}])"


def start_capture(page: Any) -> None:
    """Log in, identify and confirm DEMO, Alice, Forearm right with consent: the camera."""
    log_in(page)
    page.click("#start")
    identify_typed(page, MRN)
    page.click("[data-confirm='0']")
    fill_details(page, "forearm", "Forearm", "R")
    page.click("#details-form button[type=submit]")
    screen(page, "camera")


def assert_nothing_in_clear(page: Any) -> None:
    drafts = page.evaluate(KEPT_DRAFTS)
    assert len(drafts) == 1
    assert drafts[0]["keys"] == ["createdAt", "id", "sealed", "user"]
    assert drafts[0]["iv"] == 12
    for clear in (MRN, "DEMO", "Alice", "forearm", "Forearm"):
        assert clear not in drafts[0]["text"]
    assert MRN not in page.evaluate(STORAGE) and MRN not in page.url


def test_reload_on_the_review_resumes_it_with_the_patient_and_site(
        phone_audit: Callable[[str, str, str], PhoneAudit], live: Any) -> None:
    audit = phone_audit("chart", "light", "resume")
    page = audit.page
    page.goto("/")
    start_capture(page)
    shoot(page, 2)
    page.click("#camera-done")
    screen(page, "review")
    page.reload()
    screen(page, "home")
    card = page.locator("#device-list [data-draft]")
    page.wait_for_function("() => document.querySelector('#device-list [data-draft]')")
    assert "2 photos taken" in card.inner_text() and "DEMO, Alice" in card.inner_text()
    assert "patient not identified" not in card.inner_text()
    assert_nothing_in_clear(page)
    audit.check("home")
    page.click("[data-resume]")
    screen(page, "review")
    assert MRN in page.inner_text("#screen-review [data-patient-line]")
    assert page.inner_text("#review-site").startswith("Forearm, right")
    assert page.locator("#review-list [data-view]").count() == 2
    audit.check("review")
    page.click("#change-details")  # the form shows what was chosen before the reload
    screen(page, "details")
    assert page.is_checked("input[name=site][value]") and page.is_checked(
        "input[name=laterality][value=R]") and page.is_checked("input[name=consent][value=given]")
    page.click("#details-form button[type=submit]")
    screen(page, "review")
    send_and_wait(page)
    [session] = live.sessions()
    assert (session.patient_id, session.laterality) == (MRN, "R")
    assert idb(page)["ebiw-capture"]["drafts"] == 0  # sent: nothing of it stays
    audit.assert_clean("home", "review")


def test_leaving_the_camera_by_the_app_bar_then_resuming_goes_on(live: Any,
                                                                  page_for: Any) -> None:
    page = page_for("chart", live)
    start_capture(page)
    shoot(page, 2)
    page.click("nav.appnav a >> text=Capture")
    screen(page, "home")
    page.wait_for_selector("#device-list [data-resume]")
    assert "DEMO, Alice" in page.inner_text("#device-list")
    page.click("[data-resume]")
    screen(page, "review")
    assert MRN in page.inner_text("#screen-review [data-patient-line]")
    assert page.locator("#review-list [data-view]").count() == 2
    assert page.errors == []


def test_a_draft_without_photos_resumes_at_the_camera_and_logout_purges_it(
        live: Any, page_for: Any) -> None:
    page = page_for("chart", live)
    start_capture(page)
    page.reload()
    screen(page, "home")
    page.wait_for_selector("#device-list [data-resume]")
    assert "no photo yet" in page.inner_text("#device-list")
    assert_nothing_in_clear(page)
    page.click("[data-resume]")
    screen(page, "camera")
    assert MRN in page.inner_text("#screen-camera [data-patient-line]")
    page.click("nav.appnav a >> text=Capture")
    screen(page, "home")
    page.wait_for_selector("#device-list [data-resume]")
    page.click("#logout")
    screen(page, "login")
    assert idb(page)["ebiw-capture"] == {"blobs": 0, "keys": 0, "photos": 0, "sessions": 0,
                                         "patients": 0, "drafts": 0, "meta": 0}
    assert page.errors == []


BOXES = """() => Object.fromEntries(["camera-back", "shutter", "camera-done", "retake", "record"]
  .map((id) => [id, document.getElementById(id).getBoundingClientRect().toJSON()])
  .concat([["viewfinder", document.querySelector("#screen-camera .viewfinder")
    .getBoundingClientRect().toJSON()]]))"""


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (a["left"] < b["right"] and b["left"] < a["right"] and a["top"] < b["bottom"]
            and b["top"] < a["bottom"])


def test_the_camera_has_a_back_button_to_the_details_or_the_review(
        phone_audit: Callable[[str, str, str], PhoneAudit]) -> None:
    audit = phone_audit("chart", "light", "camera-back")
    page = audit.page
    page.goto("/")
    start_capture(page)
    page.wait_for_function("() => document.querySelector('#camera-video').videoWidth > 0")
    boxes = page.evaluate(BOXES)
    back = boxes.pop("camera-back")
    assert back["width"] >= 44 and back["height"] >= 44
    size = PHONE["viewport"]
    assert back["left"] >= 0 and back["right"] <= size["width"]
    assert back["bottom"] <= size["height"]  # in sight without scrolling
    for name, box in boxes.items():
        assert not overlap(back, box), name
    audit.check("camera")
    page.click("#camera-back")  # no photo yet: back to the details, as they were chosen
    screen(page, "details")
    assert page.is_checked("input[name=laterality][value=R]")
    assert page.is_checked("input[name=consent][value=given]")
    page.click("#details-form button[type=submit]")
    shoot(page, 1)
    page.click("#camera-back")  # with a photo: to the review
    screen(page, "review")
    assert page.locator("#review-list [data-view]").count() == 1
    assert page.evaluate("() => document.querySelector('#camera-video').srcObject") is None
    audit.assert_clean("camera")


def test_the_phone_back_button_goes_back_through_the_screens(live: Any, page_for: Any) -> None:
    page = page_for("chart", live)
    home = page.url
    log_in(page)
    page.click("#start")
    identify_typed(page, MRN)
    page.go_back()  # the patient found: identify again
    screen(page, "identify")
    identify_typed(page, MRN)
    page.click("[data-confirm='0']")
    fill_details(page, "forearm", "Forearm", "R")
    page.click("#details-form button[type=submit]")
    screen(page, "camera")
    page.go_back()  # no photo: the details, as chosen
    screen(page, "details")
    assert page.is_checked("input[name=laterality][value=R]")
    page.click("#details-form button[type=submit]")
    shoot(page, 1)
    page.go_back()
    screen(page, "review")
    page.go_back()  # home, the draft kept to continue
    screen(page, "home")
    page.wait_for_selector("#device-list [data-resume]")
    assert "DEMO, Alice" in page.inner_text("#device-list")
    assert page.url == home and page.evaluate("() => history.state") == {"inApp": True}
    page.click("[data-resume]")
    screen(page, "review")
    page.go_back()
    screen(page, "home")
    page.go_back()  # from home, Back leaves the app
    page.wait_for_url("about:blank")
    assert page.errors == []


def test_discarding_a_kept_capture_from_home_asks_first(
        phone_audit: Callable[[str, str, str], PhoneAudit], live: Any) -> None:
    """Home's Discard on a capture with photos not sent asks, naming them and the patient, as
    the review's does: Keep (the default) changes nothing; Delete removes them and the card."""
    audit = phone_audit("chart", "light", "home-discard")
    page = audit.page
    page.goto("/")
    start_capture(page)
    shoot(page, 2)
    page.click("nav.appnav a >> text=Capture")
    screen(page, "home")
    page.wait_for_selector("#device-list [data-discard]")
    page.click("#device-list [data-discard]")
    page.wait_for_selector("#discard-dialog[open]")
    assert page.inner_text("#discard-dialog-title") == "Delete 2 photos of DEMO, Alice?"
    audit.check("home discard dialog")
    page.click("#discard-dialog button[value=keep]")
    page.wait_for_selector("#discard-dialog[open]", state="detached")
    assert idb(page)["ebiw-capture"]["photos"] == 2
    assert page.locator("#device-list [data-draft]").count() == 1
    page.click("#device-list [data-discard]")
    page.click("#discard-dialog button[value=discard]")
    page.wait_for_selector("#device-list [data-draft]", state="detached")
    assert idb(page)["ebiw-capture"]["photos"] == 0
    assert idb(page)["ebiw-capture"]["drafts"] == 0
    assert live.sessions() == []
    audit.assert_clean("home discard dialog")
