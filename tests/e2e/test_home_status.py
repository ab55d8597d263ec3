"""The capture app on a phone (Pixel 7, 390×844): the home screen says where the user's recent
studies went and opens them in the viewer; a sent photo shows "processing" until the server
answers; consent is required in the capture details."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from app.db.models import Photo
from app.pipeline.dicom.kos import RejectionReason
from app.workflow import corrections
from app.workflow.delivery import drain
from tests.conftest import services
from tests.e2e.conftest import ARTIFACTS, LiveApp
from tests.e2e.test_capture_app import (
    fill_details,
    identify_typed,
    log_in,
    screen,
    send_and_wait,
    shoot,
)


def test_home_lists_the_sent_study_with_its_state_and_viewer_link(
        live: LiveApp, page_for: Callable[[str, LiveApp], Any]) -> None:
    page = page_for("chart", live)
    log_in(page)
    assert page.inner_text("#recent-status") == "No studies in the last 24 hours."
    page.click("#start")
    identify_typed(page, "00123456")
    page.click("[data-confirm='0']")
    fill_details(page, "forearm", "Forearm", "L")
    page.click("#details-form button[type=submit]")
    shoot(page, 1)
    page.click("#camera-done")
    screen(page, "review")
    send_and_wait(page)
    uuid = page.get_attribute("#review-list li", "data-uuid")
    # Every byte sent is not yet stored: until the server answers, the photo is "processing".
    page.evaluate("""async (uuid) => {
        const { showProgress } = await import("/static/js/review.js");
        showProgress({ results: new Map() }, uuid, 1000, 1000);
    }""", uuid)
    assert page.inner_text("#review-list .state") == "Sent — processing on the server…"
    page.click("#finish")
    screen(page, "done")
    [session] = live.sessions()

    page.goto("/")
    screen(page, "home")
    card = page.locator(f"#recent-list li[data-study='{session.study_uid}']")
    card.wait_for()
    assert card.get_attribute("data-state") == "stored"  # the EMR notice is still queued
    text = card.inner_text()
    assert "DEMO, Alice" in text and "MRN 00123456" in text and "Forearm, left" in text
    assert "1 photo" in text and "Stored, being sent on" in text

    svc = services(live.flask)
    drain(svc.db, svc.archive, svc.registry)
    page.reload()
    screen(page, "home")
    card.wait_for()
    assert card.get_attribute("data-state") == "in_emr"
    assert "In the patient record" in card.inner_text()
    page.screenshot(path=str(ARTIFACTS / "390x844-home-recent.png"), full_page=True)
    assert card.locator("a").bounding_box()["height"] >= 48

    with page.expect_navigation() as navigation:
        card.locator("a", has_text="Open in the viewer").click()
    assert navigation.value.status == 200
    assert page.url == f"{live.url}/studies/{session.study_uid}"
    page.wait_for_function("() => document.querySelector('#study-site').textContent"
                           ".includes('left')")
    assert not [url for url in page.urls if "00123456" in url or "DEMO" in url]

    # An admin rejects the photo (IHE IOCM): the clinician who took it sees it on the card.
    with svc.db.session() as db:
        photo = db.scalar(select(Photo.sop_uid).where(Photo.session_id == session.id))
    corrections.reject(svc, photo, RejectionReason.QUALITY, actor="admin-user")
    page.goto("/")
    screen(page, "home")
    card.wait_for()
    assert card.locator(".correction").inner_text() == \
        "1 photo corrected: Rejected for Quality Reasons"
    assert page.errors == []


def test_consent_is_required_before_continuing(live: LiveApp,
                                               page_for: Callable[[str, LiveApp], Any]) -> None:
    page = page_for("chart", live)
    log_in(page)
    page.click("#start")
    identify_typed(page, "00123456")
    page.click("[data-confirm='0']")
    screen(page, "details")
    legend = page.locator("#details-form legend", has_text="Consent to photography")
    assert legend.inner_text() == "Consent to photography (required)"
    group = page.locator("#consent-group")
    assert (group.get_attribute("role"), group.get_attribute("aria-required")) == (
        "radiogroup", "true")
    assert page.evaluate("document.querySelector('input[name=consent]').required")

    page.fill("#site-search", "forearm")
    page.get_by_label("Forearm", exact=True).check()
    page.locator("input[name=laterality][value=R]").check()
    page.click("#details-form button[type=submit]")
    assert page.inner_text("#details-error") == (
        "Consent is required: record whether the patient gave it (given, declined or not "
        "required).")
    assert group.get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.name") == "consent"
    screen(page, "details")  # still here: no camera without consent

    page.locator("input[name=consent][value=not-required]").check()
    assert group.get_attribute("aria-invalid") is None
    page.click("#details-form button[type=submit]")
    screen(page, "camera")
    assert page.errors == []
