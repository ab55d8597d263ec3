"""The audit page filters by patient without a patient ID in any URL: its forms post (filter,
older records, the FHIR export), a GET naming a patient is refused with 400; in Chromium at
phone size the filtered page's address and links hold no ID, axe-clean, tap targets >= 44 px.
The JSON and FHIR APIs alike: bearer-token clients POST a patient filter in the body, a GET
naming a patient is refused with 400 and leaves the ID in no log or audit record; filters
naming no patient still work in a GET."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from app.db.models import AuditEvent
from app.workflow import audit
from app.workflow.accounts import create_user
from tests.audit.conftest import PASSWORD, bearer
from tests.conftest import (
    ARTIFACTS,
    AXE_RUN,
    PHONE,
    TAP_TARGETS,
    Browser,
    log_in,
    served_as_deployed,
    services,
)

PATIENT_ID, ISSUER = "00123456", "HOSP-A"
OTHER_ID = "00999999"
ADMIN = "ada"
URLS = """() => [...document.querySelectorAll("[href], [action], [src]")].map((e) =>
  e.getAttribute("href") ?? e.getAttribute("action") ?? e.getAttribute("src"))"""


def _seed(app: Flask) -> list[int]:
    """An admin account; three records of the patient, two of another: the patient's seqs."""
    db = services(app).db
    create_user(db, ADMIN, PASSWORD, "admin")
    seqs = []
    for number, patient in enumerate((PATIENT_ID, OTHER_ID, PATIENT_ID, OTHER_ID, PATIENT_ID)):
        seq = audit.append(db, f"nurse{number}", "session.read",
                           audit.patient_ref(patient, ISSUER), outcome=audit.SUCCESS)
        if patient == PATIENT_ID:
            seqs.append(seq)
    return seqs


def _rows(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<td data-label="#">(\d+)</td>', html)]


def _urls(html: str) -> list[str]:
    return re.findall(r'(?:href|action|src)="([^"]*)"', html)


def test_the_page_filters_by_patient_by_post_and_refuses_a_patient_in_the_url(
        audit_app: Flask) -> None:
    seqs = _seed(audit_app)
    client = audit_app.test_client()
    csrf = log_in(client, ADMIN)
    patient = {"patient_id": PATIENT_ID, "issuer": ISSUER}

    page = client.post("/admin/audit", data={"csrf_token": csrf, **patient, "limit": "2"})
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert _rows(html) == seqs[:0:-1]
    assert _urls(html) and not [u for u in _urls(html) if PATIENT_ID in u]
    older = re.search(r'name="before" value="(\d+)"', html)
    assert older and int(older.group(1)) == seqs[1]
    rest = client.post("/admin/audit", data={"csrf_token": csrf, **patient, "limit": "2",
                                             "before": older.group(1)})
    assert _rows(rest.get_data(as_text=True)) == seqs[:1]

    assert client.post("/admin/audit", data=patient).status_code == 403  # no CSRF token
    for query in (f"patient_id={PATIENT_ID}&issuer={ISSUER}", f"issuer={ISSUER}",
                  f"entity=patient:{ISSUER}|{PATIENT_ID}"):
        refused = client.get(f"/admin/audit?{query}", headers={"Accept": "text/html"})
        assert refused.status_code == 400, query
        assert "patient ID never goes in a URL" in refused.get_data(as_text=True)
        assert PATIENT_ID not in refused.get_data(as_text=True)
    by_action = client.get("/admin/audit?action=user.login")  # no patient: still a GET
    assert by_action.status_code == 200 and _rows(by_action.get_data(as_text=True))

    bundle = client.post("/admin/api/audit/fhir", data={"csrf_token": csrf, **patient})
    assert bundle.mimetype == "application/fhir+json"
    by_post = [e["resource"]["id"] for e in bundle.get_json()["entry"]]
    by_bearer = client.post("/admin/api/audit/fhir", data=patient,
                            headers=bearer(audit_app, "machine", "admin"))
    assert [e["resource"]["id"] for e in by_bearer.get_json()["entry"]][:len(by_post)] \
        == by_post
    assert by_post[:3] == [str(s) for s in seqs]

    with services(audit_app).db.session() as s:
        reads = s.scalars(select(AuditEvent).where(AuditEvent.action == "audit.read")
                          .order_by(AuditEvent.seq)).all()
    assert [(r.actor, r.entities, r.detail, r.outcome) for r in reads[:2]] == [
        (ADMIN, [audit.patient_ref(PATIENT_ID, ISSUER)], {"limit": "2"}, "success"),
        (ADMIN, [audit.patient_ref(PATIENT_ID, ISSUER)], {"limit": "2", "before": str(seqs[1])},
         "success")]


@pytest.mark.parametrize("api", ["/admin/api/audit", "/admin/api/audit/fhir"])
def test_the_apis_take_a_patient_by_post_and_refuse_it_in_the_url(
        audit_app: Flask, caplog: pytest.LogCaptureFixture, api: str) -> None:
    caplog.set_level(logging.DEBUG)
    seqs = _seed(audit_app)
    client = audit_app.test_client()
    admin = bearer(audit_app, "machine", "admin")
    for query in (f"patient_id={PATIENT_ID}&issuer={ISSUER}", f"patient_id={PATIENT_ID}",
                  f"entity=patient:{ISSUER}|{PATIENT_ID}"):
        refused = client.get(f"{api}?{query}", headers=admin)
        assert refused.status_code == 400, query
        assert refused.get_json()["error"] == {
            "code": "patient_in_url",
            "message": "a patient ID never goes in a URL: POST the filters in the request "
                       "body (a form: application/x-www-form-urlencoded, or a JSON object), "
                       "not in the query"}
    with services(audit_app).db.session() as s:
        reads = s.scalars(select(AuditEvent).where(AuditEvent.action == "audit.read")).all()
    assert [(r.entities, r.detail, r.outcome) for r in reads] == [([], {}, "failed")] * 3
    assert PATIENT_ID not in caplog.text

    for body_of in ("data", "json"):  # a form, then a JSON object
        by_post = client.post(api, headers=admin,
                              **{body_of: {"patient_id": PATIENT_ID, "issuer": ISSUER}})
        assert by_post.status_code == 200
        body = by_post.get_json()
        found = [r["seq"] for r in body["records"]] if "records" in body \
            else [int(e["resource"]["id"]) for e in body["entry"]]
        assert sorted(found) == seqs, body_of
        with services(audit_app).db.session() as s:  # each read of the patient is one more
            seqs += s.scalars(select(AuditEvent.seq).where(
                AuditEvent.action == "audit.read", AuditEvent.outcome == "success")
                .order_by(AuditEvent.seq.desc()).limit(1)).all()
    # a body the filters cannot be read from is refused, never answered with the whole trail
    for unreadable in (dict(json={"patient_id": 123, "issuer": ISSUER}), dict(json=[PATIENT_ID]),
                       dict(data=f"patient_id={PATIENT_ID}", content_type="text/plain")):
        refused = client.post(api, headers=admin, **unreadable)
        assert refused.status_code == 400, unreadable
        assert refused.get_json()["error"]["code"] == "invalid_filter"
    by_action = client.get(f"{api}?action=session.read&since=2000-01-01", headers=admin)
    assert by_action.status_code == 200


def test_filtering_by_patient_at_phone_size_puts_no_id_in_any_url(
        audit_app: Flask, chromium: Browser, axe_script: Path) -> None:
    seqs = _seed(audit_app)

    def filtered(browser: Any, **options: Any) -> Any:
        """A page of a new logged-in phone context, filtered by the patient with the form."""
        context = browser.new_context(**PHONE, **options)
        assert context.request.post(f"{url}/login", data={"username": ADMIN,
                                                          "password": PASSWORD}).ok
        page = context.new_page()
        page.goto(f"{url}/admin/audit?limit=2")  # two a page: the older ones need paging
        if page.get_attribute("details.filter-box", "open") is None:
            page.click("summary")
        page.fill("input[name=patient_id]", PATIENT_ID)
        page.fill("input[name=issuer]", ISSUER)
        page.click("form.filters button[type=submit]")
        page.wait_for_load_state()
        return page

    def run(browser: Any) -> dict[str, Any]:
        page = filtered(browser)  # under the deployment's CSP (form-action 'self')
        seen: dict[str, Any] = {
            "url": page.url, "urls": page.evaluate(URLS), "small": page.evaluate(TAP_TARGETS),
            "rows": page.locator("td[data-label='#']").all_text_contents()}
        page.screenshot(path=str(ARTIFACTS / "audit-filtered-by-patient.png"))
        page.click("button:has-text('Older records')")
        page.wait_for_load_state()
        seen["older"] = (page.url, page.evaluate(URLS),
                         page.locator("td[data-label='#']").all_text_contents())
        with page.expect_response(lambda r: "/admin/api/audit/fhir" in r.url) as answer:
            page.click("button:has-text('FHIR AuditEvents')")
        seen["fhir"] = (answer.value.url, answer.value.status,
                        [e["resource"]["id"] for e in answer.value.json()["entry"]])
        page.context.close()
        page = filtered(browser, bypass_csp=True)  # axe is injected inline
        page.add_script_tag(path=str(axe_script))
        seen["axe"] = page.evaluate(AXE_RUN)
        page.context.close()
        return seen

    with served_as_deployed(audit_app) as (url, _):
        seen = chromium.run(run)
    assert seen["url"] == f"{url}/admin/audit"
    assert seen["urls"] and not [u for u in seen["urls"] if PATIENT_ID in u]
    assert seen["rows"] == [str(s) for s in seqs[:0:-1]]
    assert seen["small"] == [] and seen["axe"] == []
    assert seen["older"][0] == f"{url}/admin/audit"
    assert not [u for u in seen["older"][1] if PATIENT_ID in u]
    assert seen["older"][2] == [str(seqs[0])]
    assert seen["fhir"] == (f"{url}/admin/api/audit/fhir", 200, [str(seqs[0])])

