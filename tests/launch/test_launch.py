"""SMART on FHIR EHR launch against the stub EMR, with Flask's test client as the browser:
what the app asks the EMR, the session it opens (one patient only), and every refusal."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from sqlalchemy import select

from app.db.models import AuditEvent, CaptureSession, LaunchContext, WebSession
from app.settings import Settings, SettingsError
from app.web.launch import PENDING_COOKIE
from app.workflow.accounts import create_user
from app.workflow.launch import reads_patient
from tests.conftest import services
from tests.launch.conftest import (
    CLIENT_ID,
    DEPARTMENT,
    ENCOUNTER,
    FAMILY,
    GIVEN,
    ISSUER,
    MRN,
    OTHER_MRN,
    PHI,
    Emr,
    Stored,
    launch,
)

HTML = {"Accept": "text/html"}


def launch_records(app: Flask) -> list[AuditEvent]:
    with services(app).db.session() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.action == "user.launch")
                               .order_by(AuditEvent.seq)))


def assert_no_phi(text: str) -> None:
    assert "Traceback" not in text
    for value in PHI:
        assert value not in text


def test_the_launch_asks_the_emr_as_the_ig_says_and_opens_a_one_patient_session(
        registered: Flask, emr: Emr, studies: dict[str, Stored]) -> None:
    client = registered.test_client()
    answer = launch(client, emr)
    assert answer.status_code == 303 and answer.headers["Location"] == "/launch/patient"

    asked = emr.authorize_requests[-1]
    assert asked["response_type"] == "code" and asked["client_id"] == CLIENT_ID
    assert asked["aud"] == emr.iss and asked["redirect_uri"] == emr.redirect_uri
    assert {"launch", "openid", "fhirUser"} <= set(asked["scope"].split())
    assert asked["code_challenge_method"] == "S256" and len(asked["state"]) >= 43
    assert asked["nonce"] and asked["state"] != asked["nonce"]
    exchanged = emr.token_requests[-1]
    assert exchanged["authorization"].startswith("Basic ") and "client_secret" not in exchanged
    assert 43 <= len(exchanged["code_verifier"]) <= 128
    assert not client.get_cookie(PENDING_COOKIE)  # the pending launch is used up

    me = client.get("/api/v1/me").get_json()
    assert me["launched"] is True and me["role"] == "capture"
    assert me["user"] == "dr.okafor@localhost"
    context = client.get("/launch/context").get_json()
    assert context["target"] == "viewer" and context["study_instance_uid"] is None
    patient = context["patient"]
    assert (patient["mrn"], patient["issuer"], patient["name"]) == (
        MRN, ISSUER, {"family": FAMILY, "given": GIVEN})
    assert patient["encounters"][0]["identifier"] == ENCOUNTER
    assert patient["encounters"][0]["department"] == DEPARTMENT
    assert patient["identification"]["method"] == "emr-launch"

    found = client.get("/dicomweb/studies", headers={"Accept": "application/dicom+json"})
    assert [s["0020000D"]["Value"][0] for s in found.get_json()] == [studies["own"].study_uid]
    own = studies["own"].study_uid
    assert client.get(f"/dicomweb/studies/{own}/metadata").status_code == 200
    assert client.get(f"/dicomweb/studies/{own}/thumbnail").status_code == 200
    assert client.get(f"/studies/{own}", headers=HTML).status_code == 200

    [record] = launch_records(registered)
    assert (record.actor, record.outcome) == ("dr.okafor@localhost", "success")
    assert record.entities == [f"patient:{ISSUER}|{MRN}"]
    assert record.detail == {"emr": emr.iss, "target": "viewer"}


def test_the_launched_session_sees_nothing_of_another_patient(
        registered: Flask, emr: Emr, studies: dict[str, Stored]) -> None:
    client = registered.test_client()
    assert launch(client, emr).status_code == 303
    csrf = client.get("/api/v1/me").get_json()["csrf_token"]
    other = studies["other"]
    refused = [
        client.get(f"/studies/{other.study_uid}", headers=HTML),
        client.get(f"/dicomweb/studies/{other.study_uid}/metadata"),
        client.get(f"/dicomweb/studies/{other.study_uid}/thumbnail"),
        client.get(f"/api/v1/sessions/{other.session_id}"),
        client.post(f"/api/v1/sessions/{other.session_id}/complete",
                    headers={"X-CSRF-Token": csrf}),
        client.post("/api/v1/sessions", headers={"X-CSRF-Token": csrf}, json={
            "patient": {"id": OTHER_MRN, "issuer": ISSUER}, "body_site": "14975008",
            "laterality": "L"}),
        client.post("/api/v1/patients/search", json={"mrn": OTHER_MRN},
                    headers={"X-CSRF-Token": csrf}),
        client.get("/fhir/ImagingStudy", query_string={"patient": "1"}),
    ]
    for response in refused:
        assert response.status_code == 403, (response.request.path, response.status_code)
        assert_no_phi(response.get_data(as_text=True))
    search = client.get("/dicomweb/studies", query_string={"PatientID": OTHER_MRN},
                        headers={"Accept": "application/dicom+json"})
    assert search.status_code == 204
    with services(registered).db.session() as db:  # only the fixture's session
        assert len(db.scalars(select(CaptureSession).where(
            CaptureSession.patient_id == OTHER_MRN)).all()) == 1


def test_a_state_that_is_not_this_browsers_is_refused(registered: Flask, emr: Emr) -> None:
    client = registered.test_client()
    started = client.get("/launch", query_string={"iss": emr.iss, "launch": emr.new_launch()})
    approved = requests.get(started.headers["Location"], allow_redirects=False, timeout=10)
    back = urlsplit(approved.headers["Location"])
    code = parse_qs(back.query)["code"][0]
    forged = client.get("/launch/callback", query_string={"code": code, "state": "x" * 43},
                        headers=HTML)
    assert forged.status_code == 400 and forged.mimetype == "text/html"
    assert_no_phi(forged.get_data(as_text=True))
    assert emr.token_requests == []  # the code was never exchanged
    other_browser = registered.test_client()
    stolen = other_browser.get(f"{back.path}?{back.query}")
    assert stolen.status_code == 400
    assert other_browser.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me").status_code == 401
    assert [r.outcome for r in launch_records(registered)] == ["failed", "failed"]


def test_a_pkce_mismatch_is_refused_by_the_emr_and_ends_on_our_error_page(
        registered: Flask, emr: Emr) -> None:
    client = registered.test_client()
    started = client.get("/launch", query_string={"iss": emr.iss, "launch": emr.new_launch()})
    url = urlsplit(started.headers["Location"])
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    query["code_challenge"] = "A" * 43  # a code injected by someone else's challenge
    approved = requests.get(urlunsplit(url._replace(query=urlencode(query))),
                            allow_redirects=False, timeout=10)
    back = urlsplit(approved.headers["Location"])
    page = client.get(f"{back.path}?{back.query}", headers=HTML)
    assert emr.token_answers == [400]
    assert page.status_code == 403 and page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert "emr refused to complete the launch" in text.lower() and "<script" not in text
    assert_no_phi(text)
    assert client.get("/api/v1/me").status_code == 401
    [record] = launch_records(registered)
    assert (record.outcome, record.detail) == ("denied", {"step": "callback",
                                                          "reason": "launch_refused"})


def test_an_emr_not_in_the_allow_list_gets_400(registered: Flask, emr: Emr) -> None:
    client = registered.test_client()
    answer = client.get("/launch", query_string={"iss": f"{emr.base}/other-fhir",
                                                 "launch": "x"}, headers=HTML)
    assert answer.status_code == 400
    assert "not allowed to launch" in answer.get_data(as_text=True)
    assert emr.paths == []  # not even its SMART configuration was fetched
    assert client.get("/launch", query_string={"iss": emr.iss}).status_code == 400
    assert client.get("/launch", query_string={"iss": emr.iss, "launch": "x",
                                               "target": "admin"}).status_code == 400
    assert [r.detail["reason"] for r in launch_records(registered)] == [
        "unknown_issuer", "launch_invalid", "launch_invalid"]


def test_a_token_without_access_to_the_patient_gets_403(registered: Flask, emr: Emr,
                                                         studies: dict[str, Stored]) -> None:
    emr.scope = "launch openid fhirUser user/Practitioner.read"
    client = registered.test_client()
    answer = launch(client, emr)
    assert answer.status_code == 403
    assert "did not give this app access" in answer.get_data(as_text=True)
    assert_no_phi(answer.get_data(as_text=True))
    assert client.get("/api/v1/me").status_code == 401
    assert client.get(f"/dicomweb/studies/{studies['own'].study_uid}/metadata"
                      ).status_code == 401
    with services(registered).db.session() as db:
        assert db.scalar(select(LaunchContext)) is None


@pytest.mark.parametrize(("change", "reason"), [
    ({"sign_with": rsa.generate_private_key(public_exponent=65537, key_size=2048)},
     "launch_identity"),
    ({"nonce": "a-nonce-of-another-launch"}, "launch_identity"),
    ({"fhir_user": "Patient/pat-1"}, "launch_user"),
])
def test_an_id_token_that_does_not_check_out_gets_403(
        registered: Flask, emr: Emr, change: dict[str, object], reason: str) -> None:
    for name, value in change.items():
        setattr(emr, name, value)
    client = registered.test_client()
    answer = launch(client, emr)
    assert answer.status_code == 403
    assert_no_phi(answer.get_data(as_text=True))
    assert client.get("/api/v1/me").status_code == 401
    assert launch_records(registered)[-1].detail["reason"] == reason


def test_an_imaging_study_in_context_opens_that_study(
        registered: Flask, emr: Emr, studies: dict[str, Stored]) -> None:
    client = registered.test_client()
    launch_id = emr.new_launch(fhirContext=[{"reference": "ImagingStudy/is-1"}])
    answer = launch(client, emr, launch_id)
    assert answer.headers["Location"] == f"/studies/{studies['own'].study_uid}"
    assert launch_records(registered)[-1].entities == [
        f"patient:{ISSUER}|{MRN}", f"study:{studies['own'].study_uid}"]


def test_a_capture_launch_captures_for_the_launch_patient_only(
        registered: Flask, emr: Emr) -> None:
    client = registered.test_client()
    answer = launch(client, emr, target="capture")
    assert answer.headers["Location"] == "/"
    context = client.get("/launch/context").get_json()
    assert context["target"] == "capture"
    csrf = client.get("/api/v1/me").get_json()["csrf_token"]
    patient = context["patient"]
    opened = client.post("/api/v1/sessions", headers={"X-CSRF-Token": csrf}, json={
        "patient": {"id": patient["mrn"], "issuer": patient["issuer"]},
        "encounter": patient["encounters"][0]["identifier"], "body_site": "14975008",
        "laterality": "L", "identification": patient["identification"]})
    assert opened.status_code == 201, opened.get_json()
    with services(registered).db.session() as db:
        row = db.get(CaptureSession, opened.get_json()["id"])
        assert (row.patient_id, row.issuer, row.encounter) == (MRN, ISSUER, ENCOUNTER)
        assert row.identification.method == "emr-launch"
        assert row.identification.evidence == {"emr": emr.iss}


def test_a_launch_ends_the_session_the_browser_had(registered: Flask, emr: Emr) -> None:
    create_user(services(registered).db, "nurse.local", "a long enough test password", "view")
    client = registered.test_client()
    assert client.post("/login", json={"username": "nurse.local",
                                       "password": "a long enough test password"}
                       ).status_code == 200
    assert launch(client, emr).status_code == 303
    with services(registered).db.session() as db:
        [session] = db.scalars(select(WebSession)).all()
        assert session.user.username == "dr.okafor@localhost"


def test_sessions_not_launched_have_no_launch_context(
        registered: Flask, auth: dict[str, dict[str, str]]) -> None:
    assert registered.test_client().get("/launch/context").status_code == 401
    answer = registered.test_client().get("/launch/context", headers=auth["view"])
    assert answer.status_code == 404


def test_the_smart_issuers_setting_is_checked() -> None:
    good = json.dumps({"https://emr.example.org/fhir/": {"client_id": "a", "role": "view"}})
    env = {"EBIW_ENV": "test", "EBIW_SECRET_KEY": "k" * 40}
    settings = Settings.from_env({"EBIW_SMART_ISSUERS": good, **env})
    assert set(settings.smart_clients) == {"https://emr.example.org/fhir"}
    for bad in ("[]", json.dumps({"https://emr.example.org/fhir": {}}),
                json.dumps({"https://emr.example.org/fhir": {"client_id": "a",
                                                             "role": "admin"}}),
                json.dumps({"emr.example.org": {"client_id": "a"}})):
        with pytest.raises(SettingsError, match="EBIW_SMART_ISSUERS"):
            Settings.from_env({"EBIW_SMART_ISSUERS": bad, **env})


@pytest.mark.parametrize(("scope", "reads"), [
    ("patient/*.read", True), ("patient/Patient.read", True), ("patient/Patient.rs", True),
    ("patient/*.cruds", True), ("patient/*.*", True), ("patient/Patient.c", False),
    ("patient/Observation.read", False), ("user/Patient.read", False), ("launch", False),
])
def test_which_scopes_read_the_patient(scope: str, reads: bool) -> None:
    assert reads_patient(scope) is reads
