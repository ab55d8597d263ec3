"""The admin page /admin/corrections: the same two corrections as the CLI, by form, with the
session's CSRF token, for admins only; the first post of each only previews it, naming the
patients, and changes nothing; a refused one answers 422 and changes nothing."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select

from app.db.models import AuditEvent, CaptureSession, utcnow
from app.workflow.accounts import create_user
from app.workflow.tokens import create_token
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
    assert "No archived instance has SOP Instance UID 1.2.3.4." in refused.get_data(as_text=True)
    same = browser.post("/admin/corrections/patient", data={
        "csrf_token": csrf, "study": study, "patient_id": "00123456", "issuer": "HOSP-A",
        "reason": "test"})
    assert same.status_code == 422
    assert "already belongs to this patient" in same.get_data(as_text=True)
    assert snapshot(d) == before

    preview = browser.post("/admin/corrections/reject", data={
        "csrf_token": csrf, "instance": first, "reason": "quality"})
    assert preview.status_code == 200, preview.get_data(as_text=True)
    shown = preview.get_data(as_text=True)
    assert "Reject this photo?" in shown and "00123456 (HOSP-A)" in shown
    assert '<input type="hidden" name="confirmed" value="yes">' in shown
    moving = browser.post("/admin/corrections/patient", data={
        "csrf_token": csrf, "study": study, "patient_id": RIGHT[0], "issuer": RIGHT[1],
        "reason": "wrong wristband"})
    assert moving.status_code == 200, moving.get_data(as_text=True)
    shown = moving.get_data(as_text=True)
    assert "RIGHT, BOB" in shown and "00234567 (HOSP-A)" in shown and "2 photos" in shown
    assert snapshot(d)["instances"] == before["instances"]  # a preview changes nothing

    done = browser.post("/admin/corrections/reject", data={
        "csrf_token": csrf, "instance": first, "reason": "quality", "confirmed": "yes"})
    assert done.status_code == 200, done.get_data(as_text=True)
    text = done.get_data(as_text=True)
    kos = archived(d, first)[0].rejected_by_kos
    assert kos and kos in text and "Rejected for Quality Reasons" in text

    moved = browser.post("/admin/corrections/patient", data={
        "csrf_token": csrf, "study": study, "patient_id": RIGHT[0], "issuer": RIGHT[1],
        "reason": "wrong wristband", "confirmed": "yes"})
    assert moved.status_code == 200, moved.get_data(as_text=True)
    link = re.search(r'href="/studies/([0-9.]+)"', moved.get_data(as_text=True))
    assert link is not None and link[1] != study
    assert d.instances(link[1]) and archived(d, second)[0].rejection_code == "113037"
    with d.services.db.session() as db:
        actors = {e.action: e.actor for e in db.scalars(select(AuditEvent).where(
            AuditEvent.action.like("correction.%")))}
    assert actors == {"correction.reject": "ada", "correction.patient": "ada",
                      "correction.notice": "ada", "correction.preview": "ada"}


def test_the_capturing_clinician_may_correct_within_the_window(
        deploy: Callable[..., Deployment]) -> None:
    d = deploy(PACS, emr_notifiers="local", correction_window_minutes=30)
    for name in ("cal", "bea"):
        create_user(d.services.db, name, PASSWORD, "capture")
    token = {"Authorization": f"Bearer {create_token(d.services.db, 'cal', 'capture')}"}
    session = d.client.post("/api/v1/sessions", headers=token, json={
        "patient": {"id": "00123456", "issuer": "HOSP-A"}}).get_json()
    uploads = [d.client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                            data=NOCHART.read_bytes(), headers=token).get_json()
               for _ in range(3)]
    mine, late, theirs = (u["sop_instance_uid"] for u in uploads)

    bea = d.app.test_client()
    csrf = log_in(bea, "bea")
    assert bea.get("/admin/corrections").status_code == 200
    refused = bea.post("/admin/corrections/reject", data={
        "csrf_token": csrf, "instance": theirs, "reason": "quality"})
    assert refused.status_code == 403
    assert "for 30 minutes" in refused.get_data(as_text=True)
    assert archived(d, theirs)[0].rejected_at is None

    cal = d.app.test_client()
    csrf = log_in(cal, "cal")
    assert cal.post("/admin/corrections/reject", data={
        "csrf_token": csrf, "instance": mine, "reason": "quality",
        "confirmed": "yes"}).status_code == 200
    assert archived(d, mine)[0].rejection_code == "113001"
    with d.services.db.session() as db:  # the window has passed
        db.get(CaptureSession, session["id"]).created_at = utcnow() - timedelta(minutes=31)
    assert cal.post("/admin/corrections/reject", data={
        "csrf_token": csrf, "instance": late, "reason": "quality",
        "confirmed": "yes"}).status_code == 403
    assert archived(d, late)[0].rejected_at is None
