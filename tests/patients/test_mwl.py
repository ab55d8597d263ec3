"""The worklist directory against DCMTK wlmscpfs, and a worklist item carried into the DICOM."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.db.models import CaptureSession
from app.factory import create_app
from app.gateways.patients import DirectoryUnavailable
from app.gateways.patients.mwl import WorklistDirectory
from app.workflow.tokens import create_token
from tests.conftest import CHARTS, dicom_validate, services
from tests.patients.conftest import WorklistPeer, free_port

PHOTO = (CHARTS / "oycq_data_iphone.jpg").read_bytes()
TEST_RULES = [{"name": "test-mrn", "pattern": r"(?P<mrn>MRN\d{4})", "issuer": "HOSP-A"}]


def directory(port: int, timeout: float = 5) -> WorklistDirectory:
    return WorklistDirectory("127.0.0.1", port, "WLMSCP", calling_aet="EBIWCAPTURE",
                             modality="XC", timeout=timeout, default_issuer="LOCAL")


def test_todays_items_for_a_patient(mwl_peer: WorklistPeer) -> None:
    [alice] = directory(mwl_peer.port).find("MRN0001", "HOSP-A")
    assert (alice.mrn, alice.issuer, alice.family, alice.given, alice.sex, alice.birth_date) == (
        "MRN0001", "HOSP-A", "TEST", "ALICE", "F", date(1970, 1, 1))
    assert alice.sources == ("mwl",)
    assert [(e.identifier, e.status) for e in alice.encounters] == [("ENC-42", None)]
    [item] = alice.worklist
    assert (item.study_uid, item.accession_number, item.requested_procedure_id,
            item.requested_procedure_description, item.scheduled_step_id, item.modality,
            item.admission_id) == ("2.25.1001", "ACC0001", "RP0001",
                                   "Wound photography left forearm", "SPS0001", "XC", "ENC-42")
    assert item.scheduled_start is not None and item.scheduled_start.date() == date.today()
    assert item.scheduled_start.hour == 9

    [bob] = directory(mwl_peer.port).find("MRN0002", None)
    assert (bob.given, bob.worklist[0].accession_number, bob.worklist[0].study_uid) == (
        "BOB", "", "2.25.1002")


def test_nobody_else_and_no_wildcards(mwl_peer: WorklistPeer) -> None:
    mwl = directory(mwl_peer.port)
    assert mwl.find("MRN0001", "HOSP-B") == []
    assert mwl.find("MRN0003", None) == []
    assert mwl.find("MRN*", None) == [] and mwl.find("*", None) == []
    tomorrow = WorklistDirectory("127.0.0.1", mwl_peer.port, "WLMSCP", calling_aet="EBIWCAPTURE",
                                 modality="XC", timeout=5, default_issuer="LOCAL",
                                 today=lambda: date(2000, 1, 1))
    assert tomorrow.find("MRN0001", None) == []  # only today's scheduled steps


def test_worklist_down_is_a_clear_quick_error() -> None:
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailable) as caught:
        directory(free_port(), timeout=2).find("MRN0001", None)
    assert time.monotonic() - started < 2
    assert str(caught.value) == "the worklist (MWL) cannot be reached"


@pytest.fixture
def mwl_app(tmp_path: Path, database_url: str, mwl_peer: WorklistPeer) -> Iterator[Flask]:
    """An app whose patient directory is the worklist, with a rule for the MRN0001 style."""
    app = create_app({"data_dir": tmp_path / "var", "env": "test",
                      "database_url": database_url, "patient_directory": "mwl",
                      "mwl_address": f"127.0.0.1:{mwl_peer.port}", "mwl_aet": "WLMSCP",
                      "wristband_rules": json.dumps(TEST_RULES)})
    services(app).db.create_schema()
    yield app
    services(app).db.engine.dispose()


def _open_from_worklist(client: FlaskClient, headers: dict[str, str], barcode: str,
                        session_id: str | None = None) -> tuple[dict, int]:
    """Identify by a typed barcode, choose the worklist item, open the session."""
    found = client.post("/api/v1/identify", json={"barcode": barcode}, headers=headers)
    assert found.status_code == 200, found.get_json()
    [patient] = found.get_json()["patients"]
    [item] = patient["worklist"]
    body = {"id": session_id or str(uuid.uuid4()),
            "patient": {"id": patient["mrn"], "issuer": patient["issuer"],
                        "name": patient["name"]["dicom"], "birth_date": patient["birth_date"],
                        "sex": patient["sex"]},
            "encounter": item["admission_id"], "body_site": "14975008", "laterality": "L",
            "identification": patient["identification"], "worklist_item": item}
    response = client.post("/api/v1/sessions", json=body, headers=headers)
    return response.get_json(), response.status_code


def test_worklist_item_is_carried_into_the_dicom(mwl_app: Flask) -> None:
    client = mwl_app.test_client()
    headers = {"Authorization": f"Bearer {create_token(services(mwl_app).db, 'nurse', 'capture')}"}
    session, status = _open_from_worklist(client, headers, "MRN0001")
    assert status == 201, session
    assert session["study_instance_uid"] == "2.25.1001"
    put = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}", data=PHOTO,
                     headers=headers)
    assert put.status_code == 201, put.get_json()
    photo = put.get_json()
    path = (services(mwl_app).settings.archive_root / "2.25.1001" /
            photo["series_instance_uid"] / f"{photo['sop_instance_uid']}.dcm")
    ds = pydicom.dcmread(io.BytesIO(path.read_bytes()))
    assert (ds.StudyInstanceUID, ds.AccessionNumber, ds.AdmissionID, ds.PatientID,
            ds.IssuerOfPatientID, str(ds.PatientName)) == (
        "2.25.1001", "ACC0001", "ENC-42", "MRN0001", "HOSP-A", "TEST^ALICE")
    assert ds.StudyDescription == "Wound photography left forearm"
    # The order it fulfils, for the PACS/RIS to match (General Series, Request Attributes).
    [request] = ds.RequestAttributesSequence
    assert (request.RequestedProcedureID, request.ScheduledProcedureStepID,
            request.AccessionNumber, request.StudyInstanceUID,
            request.RequestedProcedureDescription) == (
        "RP0001", "SPS0001", "ACC0001", "2.25.1001", "Wound photography left forearm")
    errors, warnings, output = dicom_validate(path)
    assert (errors, warnings) == (0, 0), output

    # How the patient was identified is kept with the study.
    with services(mwl_app).db.session() as db:
        row = db.get(CaptureSession, session["id"])
        ident = row.identification
        assert (ident.method, ident.requested_procedure_id, ident.scheduled_step_id) == (
            "typed", "RP0001", "SPS0001")
        assert ident.evidence == {"directories": ["mwl"], "symbology": "typed",
                                  "rule": "test-mrn", "matched": ["mrn", "issuer"]}

    # The same item again under another session id: refused, the study has one session.
    again, status = _open_from_worklist(client, headers, "MRN0001")
    assert status == 409 and "worklist item" in again["error"]["message"]
    # The same session id again (a retry) gives the same session.
    retry, status = _open_from_worklist(client, headers, "MRN0001", session["id"])
    assert status == 200 and retry["study_instance_uid"] == "2.25.1001"


def test_worklist_item_without_accession(mwl_app: Flask) -> None:
    client = mwl_app.test_client()
    headers = {"Authorization": f"Bearer {create_token(services(mwl_app).db, 'nurse', 'capture')}"}
    session, status = _open_from_worklist(client, headers, "MRN0002")
    assert status == 201 and session["study_instance_uid"] == "2.25.1002"
    put = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}", data=PHOTO,
                     headers=headers)
    photo = put.get_json()
    path = (services(mwl_app).settings.archive_root / "2.25.1002" /
            photo["series_instance_uid"] / f"{photo['sop_instance_uid']}.dcm")
    ds = pydicom.dcmread(path)
    assert (ds.StudyInstanceUID, ds.AccessionNumber, ds.AdmissionID) == ("2.25.1002", "",
                                                                        "ENC-43")
    [request] = ds.RequestAttributesSequence
    assert "AccessionNumber" not in request and request.StudyInstanceUID == "2.25.1002"
    errors, warnings, output = dicom_validate(path)
    assert (errors, warnings) == (0, 0), output


def test_bad_worklist_items_are_refused(client: FlaskClient,
                                        auth: dict[str, dict[str, str]]) -> None:
    for item, field in (({"study_instance_uid": "1.2.abc"}, "study_instance_uid"),
                        ({"study_instance_uid": "1." + "2" * 70}, "study_instance_uid"),
                        ({"study_instance_uid": "1.2.3", "accession_number": "A" * 17},
                         "accession_number"),
                        ("2.25.1", "worklist_item must be an object")):
        response = client.post("/api/v1/sessions", json={"patient": {"id": "1"},
                                                         "worklist_item": item},
                               headers=auth["capture"])
        assert response.status_code == 422 and field in response.get_json()["error"]["message"]
