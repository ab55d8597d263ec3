"""The EHR launch in Debian's Chromium (Playwright): the EMR (the stub, at ``localhost``) opens
the app (at ``127.0.0.1``, another site), which ends on the patient's studies with the study's
thumbnail, or in the capture app with the patient and encounter already chosen.

Playwright runs in a thread of its own, so these tests coexist with other browser tests of the
same pytest session (Playwright's sync API allows one instance per thread).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flask import Flask
from sqlalchemy import select

from app.db.models import CaptureSession
from tests.conftest import ARTIFACTS, Browser, services
from tests.launch.conftest import (
    ENCOUNTER,
    FAMILY,
    ISSUER,
    MRN,
    PHI,
    Emr,
    Stored,
    jpeg,
)


def launch_url(live_url: str, emr: Emr, **params: str) -> str:
    return f"{live_url}/launch?" + urlencode({"iss": emr.iss, "launch": emr.new_launch(),
                                              **params})


def open_page(browser: Any, urls: list[str], problems: list[str]) -> Any:
    """A page that records every URL it requests and every script error."""
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    page.set_default_timeout(20000)
    page.on("request", lambda request: urls.append(request.url))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    return page


def assert_no_phi_in(urls: list[str]) -> None:
    for url in urls:
        for value in PHI:
            assert value not in url, url


def test_a_launch_ends_on_the_patients_studies_with_the_thumbnail(
        chromium: Browser, live_url: str, emr: Emr, studies: dict[str, Stored]) -> None:
    own, other = studies["own"].study_uid, studies["other"].study_uid
    urls: list[str] = []
    problems: list[str] = []

    def run(browser: Any) -> dict[str, Any]:
        page = open_page(browser, urls, problems)
        page.goto(launch_url(live_url, emr))
        page.wait_for_url(f"{live_url}/launch/patient")
        thumbnail = page.locator(f'a[data-study="{own}"] img:not(.missing)')
        thumbnail.wait_for()
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0",
                               arg=thumbnail.element_handle())
        page.screenshot(path=str(ARTIFACTS / "launch-patient-studies.png"), full_page=True)
        seen = {"name": page.text_content("#patient-name"),
                "mrn": page.text_content("#patient-id"),
                "studies": page.eval_on_selector_all(
                    "a[data-study]", "(links) => links.map((a) => a.dataset.study)"),
                "urls": list(urls)}  # the launch's own requests (the viewer's are its own)
        page.click(f'a[data-study="{own}"]')
        page.wait_for_function("(name) => document.getElementById('patient-name')"
                               ".textContent.startsWith(name)", arg=FAMILY)
        seen["problems"] = list(problems)  # the refusal below logs its 403 on the console
        refused = page.goto(f"{live_url}/studies/{other}")
        seen["other_status"] = refused.status if refused else None
        seen["other_text"] = page.text_content("body")
        page.context.close()
        return seen

    seen = chromium.run(run)
    assert seen["name"] and seen["name"].startswith(FAMILY)
    assert seen["mrn"] == f"{MRN} ({ISSUER})"
    assert seen["studies"] == [own]
    assert seen["other_status"] == 403
    assert all(value not in seen["other_text"] for value in PHI)
    assert_no_phi_in(seen["urls"])
    assert seen["problems"] == []


def test_a_capture_launch_opens_the_app_with_the_patient_chosen(
        chromium: Browser, live_url: str, emr: Emr, registered: Flask,
        tmp_path: Path) -> None:
    photo = tmp_path / "wound.jpg"
    photo.write_bytes(jpeg(3))
    urls: list[str] = []
    problems: list[str] = []

    def run(browser: Any) -> dict[str, Any]:
        page = open_page(browser, urls, problems)
        page.goto(launch_url(live_url, emr, target="capture"))
        page.wait_for_selector("#screen-details:not([hidden])")
        seen = {"line": page.text_content("#screen-details [data-patient-line]"),
                "department": page.input_value("#department")}
        page.screenshot(path=str(ARTIFACTS / "launch-capture-details.png"), full_page=True)
        page.fill("#site-search", "forearm")
        page.get_by_label("Forearm", exact=True).check()
        page.locator("input[name=laterality][value=L]").check()
        page.locator("input[name=consent][value=given]").check()
        page.click("#details-form button[type=submit]")
        page.wait_for_selector("#screen-camera:not([hidden])")
        page.set_input_files("#file-input", str(photo))
        page.wait_for_function("() => document.querySelectorAll('#shots canvas').length === 1")
        page.click("#camera-done")
        page.wait_for_selector("#screen-review:not([hidden])")
        page.click("#send")
        page.wait_for_function("() => document.querySelector('#finish').textContent "
                               "=== 'Finish'", timeout=60000)
        page.context.close()
        return seen

    seen = chromium.run(run)
    assert seen["line"] and FAMILY in seen["line"].upper()
    assert seen["department"] == "Wound care"
    with services(registered).db.session() as db:
        [session] = db.scalars(select(CaptureSession)).all()
        assert (session.patient_id, session.issuer, session.encounter) == (MRN, ISSUER,
                                                                           ENCOUNTER)
        assert session.identification.method == "emr-launch"
        assert session.status == "complete" and session.photo_count == 1
    assert not any("/api/v1/identify" in u or "/patients/search" in u for u in urls)
    assert_no_phi_in(urls)
    assert problems == []
