"""The admin page /admin/retention: the report, a purge that needs its confirmation box and
takes only the studies still due, legal holds set and released by form, with the session's
CSRF token, for admins only; a refused action answers 422 and changes nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flask.testing import FlaskClient
from sqlalchemy import select, update

from app.db.models import AuditEvent, CaptureSession, LegalHold
from app.workflow.accounts import create_user
from tests.conftest import PASSWORD, log_in
from tests.corrections.conftest import snapshot
from tests.corrections.test_reject import PACS
from tests.delivery.conftest import NOCHART, Deployment

TEN_YEARS = "[default]\nyears_after_last_study = 10\n"


def test_admin_reports_holds_and_purges_by_form(deploy: Callable[..., Deployment],
                                                 tmp_path: Path) -> None:
    rules = tmp_path / "retention.toml"
    rules.write_text("[default]\nyears_after_last_study = 10\n")
    d = deploy(PACS, emr_notifiers="local", retention_rules_file=rules)
    for name, role in (("ada", "admin"), ("cal", "capture")):
        create_user(d.services.db, name, PASSWORD, role)
    session = d.open_session()
    d.upload(session, NOCHART)
    study = session["study_instance_uid"]
    with d.services.db.session() as db:
        db.execute(update(CaptureSession).values(
            created_at=datetime.now(UTC) - timedelta(days=366 * 11)))

    cal = d.app.test_client()
    log_in(cal, "cal")
    assert cal.get("/admin/retention").status_code == 403
    browser = d.app.test_client()
    csrf = log_in(browser, "ada")
    page = browser.get("/admin/retention")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    html = page.get_data(as_text=True)
    assert f'name="study" value="{study}"' in html and "due: 1; due but held: 0;" in html

    before = snapshot(d)
    form = {"csrf_token": csrf, "study": study}
    assert browser.post("/admin/retention/purge", data={
        "study": study, "confirm": "yes"}).status_code == 403  # no CSRF token
    unconfirmed = browser.post("/admin/retention/purge", data=form)
    assert unconfirmed.status_code == 422
    assert "Tick the box to confirm" in unconfirmed.get_data(as_text=True)
    unknown = browser.post("/admin/retention/hold", data={
        "csrf_token": csrf, "study": "1.2.3.4", "reason": "court"})
    assert unknown.status_code == 422
    assert "No study of ours has Study Instance UID 1.2.3.4." in unknown.get_data(as_text=True)
    assert browser.post("/admin/retention/hold", data={**form, "reason": " "}).status_code \
        == 422
    # each refusal changed nothing; the page it answered with, naming the patient, is audited
    after = snapshot(d)
    assert {**after, "audits": 0} == {**before, "audits": 0}
    with d.services.db.session() as db:
        assert [e.action for e in db.scalars(select(AuditEvent).order_by(AuditEvent.seq))][
            before["audits"]:] == ["retention.read"] * (after["audits"] - before["audits"])

    held = browser.post("/admin/retention/hold", data={**form, "reason": "court order 7"})
    assert held.status_code == 200, held.get_data(as_text=True)
    text = held.get_data(as_text=True)
    assert "The study is on legal hold." in text and "court order 7 — ada" in text
    assert "due: 0; due but held: 1;" in text
    refused = browser.post("/admin/retention/purge", data={**form, "confirm": "yes"})
    assert refused.status_code == 422
    assert f"Study {study} is on legal hold" in refused.get_data(as_text=True)
    # the first post of a release asks to confirm it, naming the study, its patient, the reason
    asked = browser.post("/admin/retention/release", data=form)
    assert asked.status_code == 200
    preview = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", asked.get_data(as_text=True)))
    assert "Release this legal hold?" in preview and "for: court order 7" in preview
    assert "Name DEMO, ALICE MRN 00123456 (HOSP-A) Study date" in preview
    assert f"Study Instance UID {study}" in preview
    with d.services.db.session() as db:
        assert len(db.scalars(select(LegalHold)).all()) == 1
    assert browser.post("/admin/retention/release", data={
        **form, "confirmed": "yes"}).status_code == 200
    with d.services.db.session() as db:
        assert db.scalars(select(LegalHold)).all() == []

    purged = browser.post("/admin/retention/purge", data={**form, "confirm": "yes"})
    assert purged.status_code == 200, purged.get_data(as_text=True)
    assert "Purged 1 study" in purged.get_data(as_text=True)
    # the photo's file is gone, the rejection note's stays
    assert len(list(d.services.settings.archive_root.glob(f"{study}/*/*.dcm"))) == 1
    twice = browser.post("/admin/retention/purge", data={**form, "confirm": "yes"})
    assert twice.status_code == 422
    assert f"Study {study} was purged already" in twice.get_data(as_text=True)
    with d.services.db.session() as db:
        events = {e.action: (e.actor, e.detail) for e in db.scalars(select(AuditEvent).where(
            AuditEvent.action.like("retention.%"), AuditEvent.action != "retention.read"))}
    assert {a: actor for a, (actor, _) in events.items()} == {
        "retention.hold": "ada", "retention.preview": "ada", "retention.release": "ada",
        "retention.purge": "ada"}
    assert json.dumps(events["retention.hold"][1]).count("court order 7") == 1


def with_patient_hold(deploy: Callable[..., Deployment], tmp_path: Path, issuer: str,
                      rules_toml: str = TEN_YEARS) -> tuple[Deployment, FlaskClient, str]:
    """A deployment under ``rules_toml`` (by default keeping studies 10 years), a legal hold
    on patient 00999999 of ``issuer`` (no study of theirs here) and the admin ada logged in:
    (it, ada's client, her CSRF)."""
    rules = tmp_path / "retention.toml"
    rules.write_text(rules_toml)
    d = deploy([], retention_rules_file=rules)
    create_user(d.services.db, "ada", PASSWORD, "admin")
    with d.services.db.session() as db:
        db.add(LegalHold(issuer=issuer, patient_id="00999999", reason="pending claim",
                         set_by="ada"))
    browser = d.app.test_client()
    return d, browser, log_in(browser, "ada")


def test_a_hold_listed_is_released_by_the_page_even_without_a_study_of_the_patient(
        deploy: Callable[..., Deployment], tmp_path: Path) -> None:
    d, browser, csrf = with_patient_hold(deploy, tmp_path, "HOSP-A")
    listed = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", browser.get(
        "/admin/retention").get_data(as_text=True)))
    assert "MRN 00999999 (HOSP-A) No study of this patient is here, so no name to show. " \
        "Every study of the patient on hold: pending claim — ada" in listed

    form = {"csrf_token": csrf, "patient_id": "00999999", "issuer": "HOSP-A"}
    asked = browser.post("/admin/retention/release", data=form)
    assert asked.status_code == 200, asked.get_data(as_text=True)
    preview = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", asked.get_data(as_text=True)))
    assert "Every study of the patient Name not recorded MRN 00999999 (HOSP-A)" in preview
    assert "for: pending claim" in preview and "Nothing it covers is left here" in preview
    released = browser.post("/admin/retention/release", data={**form, "confirmed": "yes"})
    assert released.status_code == 200, released.get_data(as_text=True)
    text = released.get_data(as_text=True)
    assert "The patient&#39;s legal hold is released." in text and "No legal hold." in text
    with d.services.db.session() as db:
        assert db.scalars(select(LegalHold)).all() == []


def test_each_due_study_names_its_patient_date_site_and_photos_and_the_read_is_audited(
        deploy: Callable[..., Deployment], tmp_path: Path) -> None:
    d, browser, _ = with_patient_hold(deploy, tmp_path, "HOSP-B")
    session = d.open_session(department="Burns unit", body_site="84607009", laterality="L")
    d.upload(session, NOCHART)
    d.upload(session, NOCHART)
    study = session["study_instance_uid"]
    with d.services.db.session() as db:
        db.execute(update(CaptureSession).values(
            created_at=datetime(2001, 6, 7, 12, tzinfo=UTC), utc_offset_minutes=0))

    page = browser.get("/admin/retention")
    assert page.status_code == 200
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.get_data(as_text=True)))
    assert "DEMO, ALICE, MRN 00123456 (HOSP-A)" in text
    assert "Study date 7 Jun 2001 Department Burns unit Body site Skin of heel, left " \
        "Photos 2 (2 files to delete)" in text
    assert f"Study Instance UID {study}" in text
    with d.services.db.session() as db:
        read = db.scalars(select(AuditEvent).where(AuditEvent.action == "retention.read")).one()
    assert (read.actor, read.outcome) == ("ada", "success")
    assert read.entities == ["patient:HOSP-A|00123456", f"study:{study}",
                             "patient:HOSP-B|00999999"]


def test_the_held_and_undetermined_studies_and_the_holds_name_their_patients_audited(
        deploy: Callable[..., Deployment], tmp_path: Path) -> None:
    minors_in_burns = f"{TEN_YEARS}[[rules]]\nname = \"burns\"\ndepartment = \"Burns unit\"\n" \
        "years_after_last_study = 10\nminor_age = 18\n"
    d, browser, _ = with_patient_hold(deploy, tmp_path, "HOSP-B", minors_in_burns)
    studies = {}
    for day, (mrn, name, department) in enumerate((
            ("00123456", "DEMO^ALICE", "Wound care"),  # held: a hold on the study
            ("00333333", "DEMO^CAROL", None),  # held: a hold on the patient
            ("00222222", "DEMO^BOB", "Burns unit")), start=7):  # no birth date: undetermined
        session = d.open_session(patient={"id": mrn, "issuer": "HOSP-A", "name": name},
                                 **({"department": department} if department else {}))
        d.upload(session, NOCHART)
        studies[name] = uid = session["study_instance_uid"]
        with d.services.db.session() as db:
            db.execute(update(CaptureSession).where(CaptureSession.study_uid == uid).values(
                created_at=datetime(2001, 6, day, 12, tzinfo=UTC), utc_offset_minutes=0))
    with d.services.db.session() as db:
        db.add_all([LegalHold(study_uid=studies["DEMO^ALICE"], reason="court order 7",
                              set_by="ada"),
                    LegalHold(issuer="HOSP-A", patient_id="00333333", reason="claim 42",
                              set_by="bob")])

    page = browser.get("/admin/retention")
    assert page.status_code == 200
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.get_data(as_text=True)))
    held = text[text.index("Due but on legal hold"):text.index("Undetermined (")]
    assert "DEMO, ALICE, MRN 00123456 (HOSP-A) Study date 7 Jun 2001 Department Wound care " \
        "Photos 1 Rule default, due since 2011-06-07; on legal hold (the study) Study " \
        f"Instance UID {studies['DEMO^ALICE']}" in held
    assert "DEMO, CAROL, MRN 00333333 (HOSP-A) Study date 8 Jun 2001 Photos 1 Rule default, " \
        "due since 2011-06-08; on legal hold (every study of the patient) Study Instance UID " \
        f"{studies['DEMO^CAROL']}" in held
    undetermined = text[text.index("Undetermined ("):text.index("Legal holds")]
    assert "DEMO, BOB, MRN 00222222 (HOSP-A) Study date 9 Jun 2001 Department Burns unit " \
        f"Photos 1 Rule burns Study Instance UID {studies['DEMO^BOB']}" in undetermined
    holds = text[text.index("Legal holds"):text.index("Put on legal hold")]
    assert "MRN 00999999 (HOSP-B) No study of this patient is here, so no name to show. " \
        "Every study of the patient on hold: pending claim — ada" in holds
    assert "DEMO, ALICE, MRN 00123456 (HOSP-A) Study date 7 Jun 2001 Department Wound care " \
        "Photos 1 Study on hold: court order 7 — ada" in holds
    assert f"Study Instance UID {studies['DEMO^ALICE']} Release" in holds
    assert "DEMO, CAROL, MRN 00333333 (HOSP-A) Every study of the patient on hold: claim 42 " \
        "— bob" in holds
    # no UID bare: each one the page shows is under its patient's study
    assert text.count("2.25.") == text.count("Study Instance UID 2.25.") == 4
    with d.services.db.session() as db:
        read = db.scalars(select(AuditEvent).where(AuditEvent.action == "retention.read")).one()
    assert read.entities == [
        "patient:HOSP-A|00123456", f"study:{studies['DEMO^ALICE']}",
        "patient:HOSP-A|00333333", f"study:{studies['DEMO^CAROL']}",
        "patient:HOSP-A|00222222", f"study:{studies['DEMO^BOB']}", "patient:HOSP-B|00999999"]


def test_a_release_asks_first_and_cancel_or_a_hold_gone_changes_nothing(
        deploy: Callable[..., Deployment], tmp_path: Path) -> None:
    d, browser, csrf = with_patient_hold(deploy, tmp_path, "HOSP-A")
    d.open_session()  # of 00123456 too, without a photo: nothing to purge
    d.upload(d.open_session(), NOCHART)
    with d.services.db.session() as db:
        db.add(LegalHold(issuer="HOSP-A", patient_id="00123456", reason="claim 42",
                         set_by="bob"))
    form = {"csrf_token": csrf, "patient_id": "00123456", "issuer": "HOSP-A"}
    before = snapshot(d)

    asked = browser.post("/admin/retention/release", data=form)
    assert asked.status_code == 200 and asked.headers["Cache-Control"] == "no-store"
    html = asked.get_data(as_text=True)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert "Release this legal hold?" in text and "by bob, for: claim 42" in text
    assert "Every study of the patient Name DEMO, ALICE MRN 00123456 (HOSP-A)" in text
    assert "the patient's 1 study here can be purged" in text
    assert '<input type="hidden" name="confirmed" value="yes">' in html
    assert '<input type="hidden" name="patient_id" value="00123456">' in html
    assert '<a class="button secondary" href="/admin/retention">Cancel</a>' in html
    assert "00999999" not in html  # the preview alone, not the page with the other holds
    cancelled = browser.get("/admin/retention")  # Cancel
    assert "claim 42" in cancelled.get_data(as_text=True)
    after = snapshot(d)
    assert {**after, "audits": 0} == {**before, "audits": 0}
    with d.services.db.session() as db:
        assert len(db.scalars(select(LegalHold)).all()) == 2
        preview, read = db.scalars(select(AuditEvent).where(
            AuditEvent.seq > before["audits"]).order_by(AuditEvent.seq)).all()
    assert (preview.action, preview.actor, preview.entities, preview.detail) == (
        "retention.preview", "ada", ["patient:HOSP-A|00123456"], {"release": "patient"})
    assert read.action == "retention.read"

    unknown = browser.post("/admin/retention/release", data={**form, "patient_id": "00000001"})
    assert unknown.status_code == 422
    assert "This patient is not on legal hold." in unknown.get_data(as_text=True)
    with d.services.db.session() as db:
        assert len(db.scalars(select(LegalHold)).all()) == 2
