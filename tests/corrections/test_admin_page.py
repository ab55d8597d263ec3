"""The admin page /admin/corrections: the same two corrections as the CLI, by form, with the
session's CSRF token, for admins only; a refused one answers 422 and changes nothing."""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlalchemy import select

from app.db.models import AuditEvent
from app.workflow.accounts import create_user
from tests.conftest import PASSWORD, log_in
from tests.corrections.conftest import add_patient, archived, snapshot
from tests.corrections.test_reject import PACS
from tests.delivery.conftest import NOCHART, Deployment

RIGHT = ("00234567", "HOSP-A")


def test_admin_rejects_and_moves_by_form(deploy: Callable[..., Deployment]) -> None:
    d = deploy(PACS, emr_notifiers="local")
    add_patient(d, *RIGHT, "RIGHT", "BOB")
    for name, role in (("ada", "admin"), ("cal", "capture")):
        create_user(d.services.db, name, PASSWORD, role)
    session = d.open_session()
    study = session["study_instance_uid"]
    first = d.upload(session, NOCHART)["sop_instance_uid"]
    second = d.upload(session, NOCHART)["sop_instance_uid"]
    browser = d.app.test_client()

    log_in(browser, "cal")
    assert browser.get("/admin/corrections").status_code == 403
    browser = d.app.test_client()
    csrf = log_in(browser, "ada")
    page = browser.get("/admin/corrections")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    html = page.get_data(as_text=True)
    assert 'action="/admin/corrections/reject"' in html and "Incorrect Modality" in html

    before = snapshot(d)
    assert browser.post("/admin/corrections/reject", data={
        "instance": first, "reason": "quality"}).status_code == 403  # no CSRF token
    refused = browser.post("/admin/corrections/reject", data={
        "csrf_token": csrf, "instance": "1.2.3.4", "reason": "quality"})
    assert refused.status_code == 422
    assert "no archived instance has SOP Instance UID 1.2.3.4" in refused.get_data(as_text=True)
    same = browser.post("/admin/corrections/patient", data={
        "csrf_token": csrf, "study": study, "patient_id": "00123456", "issuer": "HOSP-A",
        "reason": "test"})
    assert same.status_code == 422
    assert "already belongs to this patient" in same.get_data(as_text=True)
    assert snapshot(d) == before

    done = browser.post("/admin/corrections/reject", data={
        "csrf_token": csrf, "instance": first, "reason": "quality"})
    assert done.status_code == 200, done.get_data(as_text=True)
    text = done.get_data(as_text=True)
    kos = archived(d, first)[0].rejected_by_kos
    assert kos and kos in text and "Rejected for Quality Reasons" in text

    moved = browser.post("/admin/corrections/patient", data={
        "csrf_token": csrf, "study": study, "patient_id": RIGHT[0], "issuer": RIGHT[1],
        "reason": "wrong wristband"})
    assert moved.status_code == 200, moved.get_data(as_text=True)
    link = re.search(r'href="/studies/([0-9.]+)"', moved.get_data(as_text=True))
    assert link is not None and link[1] != study
    assert d.instances(link[1]) and archived(d, second)[0].rejection_code == "113037"
    with d.services.db.session() as db:
        actors = {e.action: e.actor for e in db.scalars(select(AuditEvent).where(
            AuditEvent.action.like("correction.%")))}
    assert actors == {"correction.reject": "ada", "correction.patient": "ada",
                      "correction.notice": "ada"}
