"""A capture session for a patient no directory knows (issue 21, item 5), by
``EBIW_UNKNOWN_PATIENTS``: ``hold`` stores the photos marked unverified and sends nothing to the
PACS or the EMR until the patient is confirmed; ``refuse`` answers 422 (but holds while a
directory cannot answer: nobody can tell then); ``accept`` is the behaviour before."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.db.models import AuditEvent, Delivery, Patient
from app.settings import Settings, SettingsError
from app.workflow.demo import seed_demo_patients
from tests.conftest import CHARTS, log_in, services
from tests.test_serve import free_port

PHOTO = (CHARTS / "jtvd_mini_01.jpg").read_bytes()
UNKNOWN = {"id": "00999999", "issuer": "LOCAL"}
KNOWN = {"id": "00123456", "issuer": "LOCAL"}


def _open(client: FlaskClient, headers: dict[str, str], patient: dict[str, str]) -> Any:
    return client.post("/api/v1/sessions", json={"patient": patient}, headers=headers)


def _upload(client: FlaskClient, headers: dict[str, str], session_id: str) -> None:
    put = client.put(f"/api/v1/sessions/{session_id}/photos/{uuid.uuid4()}", data=PHOTO,
                     headers={**headers, "Content-Type": "image/jpeg"})
    assert put.status_code == 201, put.get_json()


def _deliveries(app: Flask, study_uid: str) -> list[tuple[str, str]]:
    with services(app).db.session() as db:
        return [(d.destination, d.sop_uid) for d in db.scalars(
            select(Delivery).where(Delivery.study_uid == study_uid))]


@pytest.mark.parametrize("app_overrides", [{"unknown_patients": "hold",
                                            "color_normalization": False}])
def test_hold_keeps_photos_unverified_and_unsent_until_the_patient_is_confirmed(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        users: dict[str, str]) -> None:
    capture = auth["capture"]
    seed_demo_patients(services(app).db, "LOCAL")
    known = _open(client, capture, KNOWN)
    assert known.status_code == 201 and known.get_json()["patient_verified"] is True

    opened = _open(client, capture, UNKNOWN)
    assert opened.status_code == 201
    session = opened.get_json()
    assert session["patient_verified"] is False
    _upload(client, capture, session["id"])
    _upload(client, capture, session["id"])
    shown = client.get(f"/api/v1/sessions/{session['id']}", headers=capture).get_json()
    assert shown["patient_verified"] is False and shown["photo_count"] == 2
    assert shown["notifications"] == []
    assert _deliveries(app, session["study_instance_uid"]) == []  # neither EMR nor PACS
    browser = app.test_client()
    log_in(browser, users["view"])
    page = f"/studies/{session['study_instance_uid']}"
    assert "Patient not verified" in browser.get(page).get_data(as_text=True)
    assert "Patient not verified" not in browser.get(
        f"/studies/{known.get_json()['study_instance_uid']}").get_data(as_text=True)

    refused = client.post(f"/api/v1/sessions/{session['id']}/verify-patient", headers=capture)
    assert refused.status_code == 409
    assert refused.get_json()["error"]["message"] == \
        "no patient directory knows this patient yet"

    with services(app).db.session() as db:  # the patient is registered meanwhile
        db.add(Patient(mrn="00999999", issuer="LOCAL", family="LATE", given="LARA"))
    verified = client.post(f"/api/v1/sessions/{session['id']}/verify-patient",
                           headers=capture)
    assert verified.status_code == 200 and verified.get_json()["patient_verified"] is True
    assert "Patient not verified" not in browser.get(page).get_data(as_text=True)
    assert _deliveries(app, session["study_instance_uid"]) == [("local", "")]
    again = client.post(f"/api/v1/sessions/{session['id']}/verify-patient", headers=capture)
    assert again.status_code == 200
    assert _deliveries(app, session["study_instance_uid"]) == [("local", "")]
    with services(app).db.session() as db:
        actions = [(e.action, e.outcome) for e in db.scalars(select(AuditEvent))
                   if e.action == "session.verify"]
    assert actions == [("session.verify", "failed"), ("session.verify", "success"),
                       ("session.verify", "success")]


@pytest.mark.parametrize("app_overrides", [{"unknown_patients": "refuse"}])
def test_refuse_answers_422_for_an_unknown_patient_and_opens_known_ones(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    seed_demo_patients(services(app).db, "LOCAL")
    refused = _open(client, auth["capture"], UNKNOWN)
    assert refused.status_code == 422
    assert refused.get_json()["error"]["code"] == "unknown_patient"
    assert "00999999" not in refused.get_data(as_text=True)
    assert _open(client, auth["capture"], KNOWN).get_json()["patient_verified"] is True


@pytest.mark.parametrize("app_overrides", [{
    "unknown_patients": "refuse", "patient_directory": "local,fhir",
    "patient_fhir_url": f"http://127.0.0.1:{free_port()}/fhir", "patient_timeout_seconds": 2}])
def test_refuse_holds_instead_while_a_directory_cannot_answer(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    opened = _open(client, auth["capture"], UNKNOWN)
    assert opened.status_code == 201 and opened.get_json()["patient_verified"] is False


def test_accept_is_the_default_and_sends_as_before(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    session = _open(client, auth["capture"], UNKNOWN).get_json()
    assert session["patient_verified"] is True
    _upload(client, auth["capture"], session["id"])
    assert _deliveries(app, session["study_instance_uid"]) == [("local", "")]


def test_production_holds_by_default_and_a_bad_policy_stops_start_up() -> None:
    production = {"env": "production", "secret_key": "k" * 32, "uid_root": "2.25"}
    assert Settings.from_env({}, production).unknown_patient_policy == "hold"
    assert Settings.from_env({}, {"env": "test"}).unknown_patient_policy == "accept"
    assert Settings.from_env({"EBIW_UNKNOWN_PATIENTS": "refuse"}, production) \
        .unknown_patient_policy == "refuse"
    with pytest.raises(SettingsError, match="EBIW_UNKNOWN_PATIENTS"):
        Settings.from_env({"EBIW_UNKNOWN_PATIENTS": "maybe"}, {"env": "test"})
