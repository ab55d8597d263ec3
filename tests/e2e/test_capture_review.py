"""The end of a capture on a phone (390×844, Debian's Chromium, fake camera): Done on the camera
screen, the review screen's Send and the moves away from it. Each test replays a defect a
usability review found, and checks what the app does instead, in the browser and on the
server."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pydicom
from sqlalchemy import select

from app.db.models import Instance, Photo
from tests.conftest import services
from tests.e2e.conftest import LiveApp, PhoneAudit
from tests.e2e.test_capture_app import (
    fill_details,
    idb,
    identify_typed,
    log_in,
    screen,
    shoot,
)

CAMERA_LIVE = """() => {
  const stream = document.querySelector("#camera-video").srcObject;
  return Boolean(stream) && stream.getVideoTracks().every((t) => t.readyState === "live");
}"""

FINISHED = "() => document.querySelector('#finish').textContent === 'Finish'"


def to_camera(page: Any, mrn: str = "00123456") -> None:
    """Log in and open the camera for the patient with ``mrn`` (DEMO, Alice), right forearm,
    consent given."""
    log_in(page)
    page.click("#start")
    identify_typed(page, mrn)
    page.click("[data-confirm='0']")
    fill_details(page, "forearm", "Forearm", "R")
    page.click("#details-form button[type=submit]")
    screen(page, "camera")
    page.wait_for_function("() => document.querySelector('#camera-video').videoWidth > 0")


def test_done_without_a_photo_keeps_the_camera_running(live: LiveApp, page_for: Any) -> None:
    page = page_for("chart", live)
    to_camera(page)
    page.click("#camera-done")
    page.wait_for_selector("#camera-status:has-text('Take at least one photo')")
    assert page.evaluate(CAMERA_LIVE)  # the viewfinder still shows the wound
    assert page.inner_text("#camera-status") == "Take at least one photo first."
    shoot(page, 1)  # and the shutter works
    assert page.is_visible("#screen-camera")
    assert page.errors == []


def test_two_taps_on_send_send_one_study(live: LiveApp, page_for: Any) -> None:
    page = page_for("chart", live)
    to_camera(page)
    shoot(page, 2)
    page.click("#camera-done")
    screen(page, "review")
    page.evaluate("() => { const send = document.querySelector('#send'); send.click(); "
                  "send.click(); }")  # both in one tick, as a quick double tap may
    page.wait_for_function(FINISHED, timeout=60000)
    page.wait_for_selector("#queue", state="hidden", timeout=60000)  # nothing else to send
    assert [(s.status, s.photo_count) for s in live.sessions()] == [("complete", 2)]
    assert page.inner_text("#review-summary") == "All 2 photos stored."
    assert page.locator("#review-list .state", has_text="Stored").count() == 2
    assert page.errors == []


def test_after_send_the_focus_is_on_finish(live: LiveApp, page_for: Any) -> None:
    page = page_for("chart", live)
    to_camera(page)
    shoot(page, 1)
    page.click("#camera-done")
    screen(page, "review")
    page.focus("#send")  # as a keyboard or screen reader user reaches it
    page.keyboard.press("Enter")
    page.wait_for_selector("#finish:not([hidden])")
    assert page.evaluate("() => document.activeElement.id") == "finish"
    page.wait_for_function(FINISHED, timeout=60000)  # the button's words change: the focus stays
    assert page.evaluate("() => document.activeElement.id") == "finish"
    assert page.errors == []


def held_photos(page: Any) -> int:
    """How many photos the device keeps."""
    return idb(page)["ebiw-capture"]["photos"]


def test_discarding_photos_asks_first_and_keeps_them_unless_confirmed(
        phone_audit: Callable[[str, str, str], PhoneAudit]) -> None:
    audit = phone_audit("chart", "light", "discard")
    page = audit.page
    page.goto("/")
    to_camera(page)
    shoot(page, 2)
    page.click("#camera-done")
    screen(page, "review")

    def unchanged() -> None:
        assert page.is_visible("#screen-review")
        assert page.locator("#review-list li").count() == 2
        assert held_photos(page) == 2

    ask_and_keep(audit, "#screen-review [data-action=discard]", "discard-dialog",
                 ("Delete 2 photos of DEMO, Alice?",
                  "They have not been sent and cannot be recovered.", "Keep them"), unchanged)
    audit.assert_clean("discard-dialog")


def ask_and_keep(audit: PhoneAudit, opener: str, shot: str, said: tuple[str, str, str],
                 unchanged: Callable[[], None]) -> None:
    """Open the discard dialog with ``opener`` and keep, by Escape then by its Keep button.

    Each time the dialog says ``said`` (title, warning, Keep's label), Keep has the focus, and
    ``unchanged`` holds once it has closed; the open dialog is checked once (``shot``)."""
    page = audit.page
    title, warning, keep = said
    for dismiss in ("Escape", keep):
        page.click(opener)
        page.wait_for_selector("#discard-dialog[open]")
        assert page.inner_text("#discard-dialog-title") == title
        assert page.inner_text("#discard-warning") == warning
        assert page.evaluate("() => document.activeElement.textContent") == keep
        if dismiss == "Escape":
            audit.check(shot)
            page.keyboard.press("Escape")
        else:
            page.click(f"#discard-dialog button >> text='{dismiss}'")
        page.wait_for_selector("#discard-dialog", state="hidden")
        unchanged()


def review_uuids(page: Any) -> list[str]:
    """The photos the review screen lists, in order."""
    return page.eval_on_selector_all("#review-list li", "(items) => items.map((li) => "
                                     "li.dataset.uuid)")


def test_removing_a_photo_asks_first_and_keeps_it_unless_confirmed(
        phone_audit: Callable[[str, str, str], PhoneAudit]) -> None:
    audit = phone_audit("chart", "light", "remove")
    page = audit.page
    page.goto("/")
    to_camera(page)
    shoot(page, 2)
    page.click("#camera-done")
    screen(page, "review")
    first, second = review_uuids(page)
    remove = f"#review-list [data-remove='{second}']"

    def unchanged() -> None:
        assert review_uuids(page) == [first, second]
        assert held_photos(page) == 2
        assert page.evaluate("() => document.activeElement.dataset.remove") == second

    ask_and_keep(audit, remove, "remove-dialog",
                 ("Delete photo 2 of DEMO, Alice?",
                  "It has not been sent and cannot be recovered.", "Keep it"), unchanged)
    page.click(remove)
    page.click("#discard-dialog button[value=discard]")
    page.wait_for_selector(remove, state="detached")
    assert review_uuids(page) == [first]
    assert held_photos(page) == 1
    assert page.inner_text("#review-summary") == "1 photo ready to send."
    assert page.inner_text("#discard-dialog-title") == ""  # no patient left in the dialog
    # the focus stays in the list: on the Remove of the photo before, the last one left
    assert page.evaluate("() => document.activeElement.dataset.remove") == first
    audit.assert_clean("remove-dialog")


def test_discarding_on_the_details_screen_deletes_once_confirmed(live: LiveApp,
                                                                 page_for: Any) -> None:
    page = page_for("chart", live)
    log_in(page)
    page.click("#start-emergency")
    shoot(page, 1)
    page.click("#camera-done")
    screen(page, "review")
    page.click("#send")  # "Identify the patient to send"
    identify_typed(page, "00123456")
    page.click("[data-confirm='0']")
    screen(page, "details")
    page.click("#screen-details [data-action=discard]")  # "Discard photos and start again"
    page.wait_for_selector("#discard-dialog[open]")
    assert page.inner_text("#discard-dialog-title") == "Delete 1 photo of DEMO, Alice?"
    assert held_photos(page) == 1
    page.click("#discard-dialog button[value=discard]")
    screen(page, "home")
    assert held_photos(page) == 0
    assert page.inner_text("#discard-dialog-title") == ""  # no patient left on the page
    assert live.counts() == (0, 0, 0)
    assert page.errors == []


def stored_sites(live: LiveApp) -> set[tuple[str, str, str]]:
    """(code, meaning, laterality) of the anatomic region of every photo in the archive."""
    svc = services(live.flask)
    with svc.db.session() as db:
        files = [svc.archive.read(db.get(Instance, photo.sop_uid))
                 for photo in db.scalars(select(Photo))]
    found = set()
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        [region] = ds.AnatomicRegionSequence
        found.add((region.CodeValue, region.CodeMeaning, ds.ImageLaterality))
    return found


def test_the_site_can_be_changed_on_the_review_and_the_change_is_sent(
        live: LiveApp, phone_audit: Callable[[str, str, str], PhoneAudit]) -> None:
    audit = phone_audit("chart", "light", "change-details")
    page = audit.page
    page.goto("/")
    to_camera(page)  # the right forearm: the wrong site
    shoot(page, 2)
    page.click("#camera-done")
    screen(page, "review")
    assert page.inner_text("#review-site") == "Forearm, right · consent given"
    audit.check("review")
    page.click("#change-details")
    screen(page, "details")  # as it was filled in
    assert page.is_checked("#site-list input[value='14975008']")
    assert page.is_checked("input[name=laterality][value=R]")
    fill_details(page, "heel", "Skin of heel", "L", consent="not-required")
    page.click("#details-form button[type=submit]")
    screen(page, "review")
    assert page.locator("#review-list li").count() == 2  # the photos are kept
    assert page.inner_text("#review-site") == "Skin of heel, left · consent not required"
    page.click("#send")
    page.wait_for_function(FINISHED, timeout=60000)
    assert page.is_hidden("#change-details")  # sent: nothing to change any more
    [session] = live.sessions()
    assert (session.body_site, session.laterality, session.consent, session.photo_count) \
        == ("84607009", "L", "not-required", 2)
    assert stored_sites(live) == {("84607009", "Skin of heel", "L")}
    audit.assert_clean("review")
