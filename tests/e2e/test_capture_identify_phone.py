"""Identifying the patient in the capture app at phone size (390×844, light): a wristband
scanned offline is matched only against the patients confirmed before on the phone, never
listing the others; an MRN nobody has is said so and can be corrected; the server's messages
read as sentences. Every screen shown is audited (axe-core, 44 px tap targets), so these
contexts bypass the CSP to inject axe."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.e2e.conftest import WRISTBAND_MRN, PhoneAudit
from tests.e2e.test_capture_app import identify_typed, log_in, screen

# Linux Chromium has no BarcodeDetector (Android Chrome has): this one stands in for the
# phone's decoder, reading what the fake camera shows (zx_code128-2_05.png, Code 128).
PHONE_DECODER = """((payload) => {
  window.BarcodeDetector = class {
    static async getSupportedFormats() { return ["code_128"]; }
    async detect() { return [{ rawValue: payload, format: "code_128" }]; }
  };
})(""" + json.dumps(WRISTBAND_MRN) + ");"


def audited(phone_audit: Callable[[str, str, str], PhoneAudit], prefix: str,
            decoder: bool = False, camera: str = "wristband") -> tuple[PhoneAudit, Any]:
    """A phone with the wristband (or another ``camera``) in front of its camera, logged in;
    every URL it asks for is recorded in ``page.urls``."""
    audit = phone_audit(camera, "light", prefix)
    page = audit.page
    page.urls = []
    page.on("request", lambda request: page.urls.append(request.url))
    if decoder:
        page.add_init_script(PHONE_DECODER)
    page.goto("/")
    log_in(page)
    return audit, page


def confirm_online(page: Any, mrn: str | None = None) -> None:
    """Identify a patient online (the typed ``mrn``, else the wristband) and confirm them: the
    phone keeps them for identifying offline. Then back home."""
    page.click("#start")
    if mrn:
        identify_typed(page, mrn)
    else:
        scan(page)
        screen(page, "patient")
    page.click("[data-confirm='0']")
    screen(page, "details")
    page.click("#screen-details [data-action=discard]")
    screen(page, "home")


def scan(page: Any) -> None:
    """Scan the wristband on the identify screen, once the camera shows it."""
    screen(page, "identify")
    page.wait_for_function("() => document.querySelector('#scan-video').videoWidth > 0")
    page.click("#scan")


def patient_cards(page: Any) -> list[str]:
    """The names on the patient cards shown."""
    return page.locator("#patient-list article").evaluate_all(
        "(cards) => cards.map((card) => card.getAttribute('aria-label'))")


def test_offline_a_wristband_the_phone_cannot_decode_lists_nobody(
        phone_audit: Callable[[str, str, str], PhoneAudit]) -> None:
    audit, page = audited(phone_audit, "identify-offline-undecoded")
    for mrn in ("00123456", "00234567"):
        confirm_online(page, mrn)
    page.context.set_offline(True)
    page.click("#start")
    scan(page)  # only the server could read this frame
    page.wait_for_selector("#scan-status >> text=Scanning needs a connection")
    assert page.inner_text("#scan-status") == "Scanning needs a connection — type the MRN."
    assert page.is_visible("#screen-identify") and page.is_hidden("#screen-patient")
    audit.check("identify")
    audit.assert_clean("identify")


def test_offline_a_scanned_wristband_matches_only_that_patient(
        phone_audit: Callable[[str, str, str], PhoneAudit]) -> None:
    audit, page = audited(phone_audit, "identify-offline-scanned", decoder=True)
    for mrn in ("00123456", "00234567"):
        confirm_online(page, mrn)

    page.context.set_offline(True)  # BAND, Erin was never confirmed on this phone
    page.click("#start")
    scan(page)
    screen(page, "patient")
    assert page.inner_text("#patient-title") == "No patient found"
    assert page.inner_text("#patient-read") == f"Read: {WRISTBAND_MRN}"
    assert patient_cards(page) == []
    assert page.inner_text("#patient-warning") == (
        "Offline: no patient you confirmed before on this device has this wristband. This "
        "patient cannot be identified offline: type or scan again when you are back online. To "
        "take the photos now, use “Capture now, identify later”.")
    audit.check("no-match")

    page.context.set_offline(False)
    page.click("[data-action=identify-again] >> visible=true")
    scan(page)
    screen(page, "patient")
    assert patient_cards(page) == ["BAND, Erin"]  # the server knows her: confirm her
    page.click("[data-confirm='0']")
    screen(page, "details")
    page.click("#screen-details [data-action=discard]")
    screen(page, "home")

    page.context.set_offline(True)  # now the phone knows her, among three
    page.click("#start")
    scan(page)
    screen(page, "patient")
    assert page.inner_text("#patient-read") == f"Read: {WRISTBAND_MRN}"
    assert patient_cards(page) == ["BAND, Erin"]
    assert page.inner_text("#patient-warning").startswith("Offline: found among the patients")
    audit.check("match")
    assert not [url for url in page.urls if WRISTBAND_MRN in url]
    audit.assert_clean("no-match", "match")


def test_an_mrn_nobody_has_is_said_and_kept_for_correcting(
        phone_audit: Callable[[str, str, str], PhoneAudit]) -> None:
    audit, page = audited(phone_audit, "identify-unknown", camera="chart")
    page.click("#start")
    scan(page)  # a colour chart, no wristband: the server's message, as a sentence
    page.wait_for_selector("#scan-status >> text=barcode")
    message = page.inner_text("#scan-status")
    assert message.startswith("No barcode was found in the photo") and message.endswith(".")
    audit.check("scan-failed")

    identify_typed(page, "99999999")
    assert page.inner_text("#patient-title") == "No patient found"
    assert page.inner_text("#patient-warning") \
        == "No patient with MRN 99999999 found. Check the MRN and try again."
    assert patient_cards(page) == []
    again = page.locator("#screen-patient [data-action=identify-again]")
    assert again.inner_text() == "Try again"
    audit.check("not-found")
    again.click()
    screen(page, "identify")
    assert page.input_value("#mrn") == "99999999"
    assert page.evaluate("() => document.activeElement.id") == "mrn"

    identify_typed(page, "00123456")  # corrected
    assert page.inner_text("#patient-title") == "Confirm the patient"
    assert patient_cards(page) == ["DEMO, Alice"]
    assert again.inner_text() == "Not this patient — identify again"
    again.click()  # another patient: the field starts empty
    screen(page, "identify")
    assert page.input_value("#mrn") == ""
    assert not [url for url in page.urls if "99999999" in url or "00123456" in url]
    audit.assert_clean("scan-failed", "not-found")
