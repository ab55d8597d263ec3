"""The corrections page on a phone (390×844) in Chromium, served under a deployment's CSP:
nothing wider than the screen, tap targets of at least 44×44 px, axe-core finding no serious
or critical violation, in the states a correction goes through. Nothing is corrected on one
tap: the first submit shows whom the correction concerns, only Confirm acts."""

from __future__ import annotations

import logging
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.db.models import AuditEvent, Instance, Patient
from tests.conftest import (
    ARTIFACTS,
    AXE_RUN,
    PASSWORD,
    PHONE,
    TAP_TARGETS,
    Browser,
    served_as_deployed,
    services,
)
from tests.delivery.conftest import NOCHART
from tests.viewer.conftest import upload_study


@pytest.fixture
def app_overrides() -> dict[str, object]:
    return {"color_normalization": False, "emr_notifiers": ""}


def phone_page(browser: Any, url: str, username: str) -> Any:
    """A page at phone size in a context logged in as ``username``; axe is injected into it,
    so its context bypasses the CSP (the CSP itself is checked by the other phone tests)."""
    context = browser.new_context(**PHONE, bypass_csp=True)
    assert context.request.post(f"{url}/login", data={
        "username": username, "password": PASSWORD}).ok
    return context.new_page()


def measured(page: Any, axe_script: Path, name: str) -> dict[str, Any]:
    """The page's width, its small tap targets, axe's violations and its text; a screenshot
    in tests/.artifacts/phone-<name>.png."""
    page.screenshot(path=str(ARTIFACTS / f"phone-{name}.png"), full_page=True)
    seen = {"width": page.evaluate("document.documentElement.scrollWidth"),
            "small": page.evaluate(TAP_TARGETS), "text": page.locator("main").inner_text()}
    page.add_script_tag(path=str(axe_script))
    seen["axe"] = page.evaluate(AXE_RUN)
    return seen


def test_an_error_naming_a_uid_wraps_and_reads_as_a_sentence(
        app: Flask, users: dict[str, str], chromium: Browser, axe_script: Path) -> None:
    unknown = f"2.25.{uuid.uuid4().int}.9"

    def scenario(browser: Any, url: str) -> dict[str, Any]:
        page = phone_page(browser, url, users["admin"])
        page.goto(f"{url}/admin/corrections")
        page.fill("#instance", unknown)
        page.click("form[action$='/reject'] button[type=submit]")
        page.wait_for_selector("p.alert")
        return measured(page, axe_script, "corrections-unknown-uid")

    with served_as_deployed(app) as (url, _):
        seen = chromium.run(lambda browser: scenario(browser, url))
    assert f"No archived instance has SOP Instance UID {unknown}." in seen["text"]
    assert seen["width"] <= 390 and seen["small"] == [] and seen["axe"] == []


def rejection_codes(app: Flask, study_uid: str) -> dict[str, str | None]:
    """SOP Instance UID → rejection code of the study's instances (None: not rejected)."""
    with services(app).db.session() as db:
        return {row.sop_uid: row.rejection_code for row in db.scalars(
            select(Instance).where(Instance.study_uid == study_uid))}


def test_a_move_and_a_rejection_show_whom_they_concern_and_wait_for_confirm(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        users: dict[str, str], chromium: Browser, axe_script: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with services(app).db.session() as db:
        db.add(Patient(mrn="00234567", issuer="HOSP-A", family="RIGHT", given="BOB",
                       birth_date=date(1972, 5, 9), sex="M"))

    def move_form(page: Any, url: str, mrn: str) -> None:
        page.goto(f"{url}/admin/corrections")
        page.fill("#study", wrong.study_uid)
        page.fill("#patient-id", mrn)
        page.fill("#issuer", "HOSP-A")
        page.fill("#move-reason", "wrong wristband")
        page.click("form[action$='/patient'] button[type=submit]")
        page.wait_for_load_state()

    def scenario(browser: Any, url: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        page = phone_page(browser, url, users["admin"])
        move_form(page, url, "00999998")  # nobody has this MRN
        seen["unknown"] = measured(page, axe_script, "corrections-move-unknown")
        seen["unknown_codes"] = rejection_codes(app, wrong.study_uid)

        move_form(page, url, "00234567")
        page.wait_for_selector(".confirm")
        seen["move_url"] = page.url
        seen["move_preview"] = measured(page, axe_script, "corrections-move-preview")
        seen["preview_codes"] = rejection_codes(app, wrong.study_uid)
        page.click(".confirm a:has-text('Cancel')")
        page.wait_for_selector("#study")
        seen["cancel_url"] = page.url
        seen["cancel_codes"] = rejection_codes(app, wrong.study_uid)

        move_form(page, url, "00234567")
        page.click(".confirm button:has-text('Confirm move')")
        page.wait_for_selector(".correction-result")
        seen["moved"] = measured(page, axe_script, "corrections-moved")
        seen["moved_codes"] = rejection_codes(app, wrong.study_uid)

        page.goto(f"{url}/admin/corrections")
        page.fill("#instance", other.originals[0])
        page.click("form[action$='/reject'] button[type=submit]")
        page.wait_for_selector(".confirm img")
        page.wait_for_function("document.querySelector('.confirm img').naturalWidth > 0")
        seen["reject_preview"] = measured(page, axe_script, "corrections-reject-preview")
        seen["reject_preview_codes"] = rejection_codes(app, other.study_uid)
        page.click(".confirm button:has-text('Confirm reject')")
        page.wait_for_selector(".correction-result")
        seen["rejected"] = measured(page, axe_script, "corrections-rejected")
        seen["rejected_codes"] = rejection_codes(app, other.study_uid)
        return seen

    with served_as_deployed(app) as (url, _):  # before any request: it adds a hook
        wrong = upload_study(client, auth["capture"], [NOCHART.read_bytes()] * 2)
        other = upload_study(client, auth["capture"], [NOCHART.read_bytes()])
        untouched = {**rejection_codes(app, wrong.study_uid),
                     **rejection_codes(app, other.study_uid)}
        seen = chromium.run(lambda browser: scenario(browser, url))

    for name in ("unknown", "move_preview", "moved", "reject_preview", "rejected"):
        assert seen[name]["width"] <= 390 and seen[name]["small"] == [] \
            and seen[name]["axe"] == [], name
    # an unknown patient is refused at the first step, and nothing is done before Confirm
    assert "The patient directory has no patient with this ID and issuer." \
        in seen["unknown"]["text"]
    for step in ("unknown_codes", "preview_codes", "cancel_codes"):
        assert seen[step] == {u: c for u, c in untouched.items() if u in seen[step]}, step
    assert seen["reject_preview_codes"] == {u: None for u in seen["reject_preview_codes"]}
    # the preview names both patients in the page, never in the URL
    preview = seen["move_preview"]["text"]
    assert seen["move_url"] == f"{url}/admin/corrections/patient"
    assert seen["cancel_url"] == f"{url}/admin/corrections"
    assert "Move this study to another patient?" in preview and "2 photos" in preview
    source, target = preview.split("From", 1)[1].split("\nTo\n", 1)
    for shown, expected in ((source, ("DEMO, ALICE", "00123456 (HOSP-A)", "14 Mar 1950")),
                            (target, ("RIGHT, BOB", "00234567 (HOSP-A)", "9 May 1972"))):
        assert all(value in shown for value in expected), shown
    assert "Reason: wrong wristband" in preview
    assert "Confirm move" in preview and "Cancel" in preview
    # Confirm acts; the result says from whom to whom
    assert [seen["moved_codes"][u] for u in wrong.originals] == ["113037", "113037"]
    assert "The photos moved from DEMO, ALICE, MRN 00123456 (HOSP-A) to RIGHT, BOB, " \
        "MRN 00234567 (HOSP-A)." in " ".join(seen["moved"]["text"].split())
    # the rejection shows the photo, its number and series, and the patient, then acts
    rejecting = " ".join(seen["reject_preview"]["text"].split())
    assert "Reject this photo?" in rejecting and "Photo 1 of series" in rejecting
    assert "DEMO, ALICE" in rejecting and "00123456 (HOSP-A)" in rejecting
    assert "Reason: Rejected for Quality Reasons" in rejecting
    assert seen["rejected_codes"][other.originals[0]] == "113001"
    # no patient's name or ID in the log
    for phi in ("00234567", "RIGHT", "ALICE", "00123456", "1972"):
        assert phi not in caplog.text, phi


def test_an_admin_corrects_a_study_from_the_viewer_without_typing_a_uid(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        users: dict[str, str], chromium: Browser, axe_script: Path) -> None:
    """The viewer's "Correct this study" (admins only) opens the corrections page with the
    study's patient and photos listed: a photo is rejected by its thumbnail's button (preview,
    then Confirm) and the move form only asks for the right patient's MRN; no UID is typed."""

    def scenario(browser: Any, url: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        page = phone_page(browser, url, users["admin"])
        page.goto(f"{url}/studies/{study.study_uid}")
        page.wait_for_selector("body[data-ready=true]")
        page.click("text=Correct this study")
        page.wait_for_selector(".own-study")
        page.wait_for_function(
            "[...document.querySelectorAll('.own-study img')].every(i => i.naturalWidth > 0)")
        seen["url"] = page.url
        seen["listed"] = measured(page, axe_script, "corrections-study-from-viewer")
        seen["move_fields"] = page.eval_on_selector_all(
            ".own-study form[action$='/patient'] input:not([type=hidden]), "
            ".own-study form[action$='/patient'] textarea", "f => f.map(e => e.name)")
        page.select_option("#reason-1-2", "quality")
        page.click("button:has-text('Reject photo 2')")
        page.wait_for_selector(".confirm")
        seen["preview_codes"] = rejection_codes(app, study.study_uid)
        page.click(".confirm button:has-text('Confirm reject')")
        page.wait_for_selector(".correction-result")
        seen["codes"] = rejection_codes(app, study.study_uid)
        page.context.close()
        return seen

    with served_as_deployed(app) as (url, _):
        study = upload_study(client, auth["capture"], [NOCHART.read_bytes()] * 2)
        seen = chromium.run(lambda browser: scenario(browser, url))

    assert seen["url"] == f"{url}/admin/corrections?study={study.study_uid}"
    listed = seen["listed"]
    assert listed["width"] <= 390 and listed["small"] == [] and listed["axe"] == []
    assert "DEMO, ALICE, MRN 00123456 (HOSP-A)" in " ".join(listed["text"].split())
    assert "Reject photo 1" in listed["text"] and "Reject photo 2" in listed["text"]
    assert seen["move_fields"] == ["patient_id", "issuer", "reason"]  # the study is given
    assert set(seen["preview_codes"].values()) == {None}
    assert [seen["codes"][uid] for uid in study.originals] == [None, "113001"]


def test_a_study_named_in_the_url_is_listed_for_admins_only(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    """An admin naming an unknown study is told so; a clinician's page ignores the study
    (they see only their own captures); the viewer links the page for admins only."""
    study = upload_study(client, auth["capture"], [NOCHART.read_bytes()])
    html = {"Accept": "text/html"}
    named = client.get(f"/admin/corrections?study={study.study_uid}",
                       headers={**auth["admin"], **html})
    assert named.status_code == 200 and "Reject photo 1" in named.get_data(as_text=True)
    unknown = client.get("/admin/corrections?study=1.2.3", headers={**auth["admin"], **html})
    assert unknown.status_code == 422
    assert "No study of ours has Study Instance UID 1.2.3." in unknown.get_data(as_text=True)
    with services(app).db.session() as db:
        [event] = db.scalars(select(AuditEvent).where(
            AuditEvent.action == "correction.preview")).all()
        assert {"patient:HOSP-A|00123456", f"study:{study.study_uid}"} <= set(event.entities)
    viewer = client.get(f"/studies/{study.study_uid}", headers={**auth["view"], **html})
    assert "Correct this study" not in viewer.get_data(as_text=True)
