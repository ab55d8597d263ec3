"""The embedded EMR: ImagingStudy kept in the local FHIR store, served read-only at /fhir."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.db.models import FhirResource, Instance
from app.db.models import Patient as PatientRow
from app.gateways.emr import build_notifiers
from app.gateways.emr.local import LocalFhirStore
from app.gateways.errors import PermanentError
from tests.conftest import services
from tests.emr.conftest import add_photo, fhir_validate, make_study, notify

FHIR_JSON = "application/fhir+json"
SOP_CLASS = "urn:oid:1.2.840.10008.5.1.4.1.1.77.1.4"


def _store(app: Flask) -> LocalFhirStore:
    notifiers = build_notifiers(services(app).settings)
    assert [n.name for n in notifiers] == ["local"]  # the embedded default
    assert isinstance(notifiers[0], LocalFhirStore)
    return notifiers[0]


def _index_patient(app: Flask, mrn: str = "MRN0001", issuer: str = "1.2.3.4.5.6") -> int:
    with services(app).db.session() as db:
        row = PatientRow(mrn=mrn, issuer=issuer, family="TEST", given="ALICE", sex="F")
        db.add(row)
        db.flush()
        return row.id


def _search(client: FlaskClient, headers: dict[str, str], query: str) -> dict:
    response = client.get(f"/fhir/{query}", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == FHIR_JSON
    body = response.get_json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


def test_notify_is_idempotent_and_versions_on_new_photos(app: Flask, client: FlaskClient,
                                                         auth: dict[str, dict[str, str]],
                                                         tmp_path: Path) -> None:
    store = _store(app)
    patient_id = _index_patient(app)
    session_id, uid = make_study(app)
    for _ in range(3):  # the worker may call again after a crash or a retry
        notify(app, store, uid)
    with services(app).db.session() as db:
        assert db.scalar(select(func.count()).select_from(FhirResource)
                         .where(FhirResource.resource_type == "ImagingStudy")) == 1
    view = auth["view"]
    first = client.get(f"/fhir/ImagingStudy/{session_id}", headers=view)
    assert first.status_code == 200 and first.mimetype == FHIR_JSON
    study = first.get_json()
    assert first.headers["ETag"] == 'W/"1"' and study["meta"]["versionId"] == "1"
    assert study["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}
    assert study["status"] == "available"
    assert study["subject"] == {"reference": f"Patient/{patient_id}"}
    assert study["encounter"] == {"identifier": {"value": "ENC-42"}}
    assert study["modality"] == [{"system": "http://dicom.nema.org/resources/ontology/DCM",
                                  "code": "XC"}]
    assert study["endpoint"] == [{"reference": "Endpoint/dicomweb"},
                                 {"reference": f"Endpoint/{session_id}-viewer"}]
    series = study["series"][0]
    with services(app).db.session() as db:
        series_uid = db.scalar(select(Instance.series_uid).where(Instance.study_uid == uid))
    assert (series["uid"], series["number"], series["numberOfInstances"]) == (series_uid, 1, 1)
    assert series["bodySite"]["code"] == "14975008"
    assert series["laterality"] == {"system": "http://snomed.info/sct", "code": "7771000",
                                    "display": "Left"}
    assert series["instance"][0]["sopClass"] == {"system": "urn:ietf:rfc:3986",
                                                 "code": SOP_CLASS}

    add_photo(app, session_id, 1)
    notify(app, store, uid)
    notify(app, store, uid)
    second = client.get(f"/fhir/ImagingStudy/{session_id}", headers=view).get_json()
    assert second["meta"]["versionId"] == "2"
    assert (second["numberOfSeries"], second["numberOfInstances"]) == (1, 2)
    assert [i["number"] for i in second["series"][0]["instance"]] == [1, 2]

    endpoint = client.get("/fhir/Endpoint/dicomweb", headers=view).get_json()
    assert endpoint["address"] == "http://127.0.0.1:8000/dicomweb"
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    viewer = client.get(f"/fhir/Endpoint/{session_id}-viewer", headers=view).get_json()
    assert viewer["address"] == f"http://127.0.0.1:8000/studies/{uid}"
    assert viewer["connectionType"] == {
        "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
        "code": "ihe-iid"}
    assert client.get(f"/studies/{uid}", headers=view).status_code == 200
    patient = client.get(f"/fhir/Patient/{patient_id}", headers=view).get_json()
    reports = fhir_validate(tmp_path, [second, endpoint, viewer, patient])
    assert [r["errors"] for r in reports] == [[], [], [], []], reports


def test_searches_return_bundles(app: Flask, client: FlaskClient,
                                 auth: dict[str, dict[str, str]]) -> None:
    store = _store(app)
    alice = _index_patient(app)
    bob = _index_patient(app, "MRN0002")
    studies = [make_study(app), make_study(app), make_study(app, mrn="MRN0002")]
    for _, uid in studies:
        notify(app, store, uid)
    view = auth["view"]
    by_uid = _search(client, view, f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:"
                                   f"{studies[0][1]}")
    assert by_uid["total"] == 1
    entry = by_uid["entry"][0]
    assert entry["fullUrl"] == f"http://127.0.0.1:8000/fhir/ImagingStudy/{studies[0][0]}"
    assert entry["search"] == {"mode": "match"}
    assert _search(client, view, f"ImagingStudy?identifier=urn:oid:{studies[2][1]}")[
        "total"] == 1
    assert _search(client, view, "ImagingStudy?identifier=urn:dicom:uid|urn:oid:2.25.1")[
        "total"] == 0
    for patient, expected in ((alice, studies[:2]), (bob, studies[2:])):
        for form in (str(patient), f"Patient/{patient}"):
            found = _search(client, view, f"ImagingStudy?patient={form}")
            assert sorted(e["resource"]["id"] for e in found["entry"]) == \
                sorted(s[0] for s in expected)
    assert _search(client, view, f"ImagingStudy?patient={alice}&_count=1")["total"] == 1

    # POST _search keeps the identifier out of the URL
    posted = client.post("/fhir/Patient/_search", headers=view,
                         data={"identifier": "urn:oid:1.2.3.4.5.6|MRN0002"})
    assert posted.status_code == 200
    assert [e["resource"]["id"] for e in posted.get_json()["entry"]] == [str(bob)]
    patients = _search(client, view, "Patient?identifier=urn:oid:1.2.3.4.5.6|MRN0001")
    resource = patients["entry"][0]["resource"]
    assert resource["identifier"][0]["system"] == "urn:oid:1.2.3.4.5.6"
    assert (resource["gender"], resource["name"]) == ("female", [{"family": "TEST",
                                                                  "given": ["ALICE"]}])
    assert _search(client, view, "Patient?identifier=MRN0001")["total"] == 1
    assert _search(client, view, "Patient?identifier=urn:oid:9.9|MRN0001")["total"] == 0


def test_fhir_endpoint_refusals(app: Flask, client: FlaskClient,
                                auth: dict[str, dict[str, str]]) -> None:
    _, uid = make_study(app)
    notify(app, _store(app), uid)
    for url in ("/fhir/ImagingStudy?patient=1", "/fhir/Patient/1", "/fhir/Endpoint/dicomweb"):
        anonymous = client.get(url)
        assert anonymous.status_code == 401 and anonymous.mimetype == FHIR_JSON
        assert anonymous.get_json()["issue"][0]["code"] == "login"
        assert client.get(url, headers=auth["capture"]).status_code == 403
    view = auth["view"]
    missing = client.get("/fhir/ImagingStudy/nope", headers=view)
    assert missing.status_code == 404
    assert missing.get_json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Patient/abc", headers=view).status_code == 404
    assert client.get("/fhir/ImagingStudy?subject=x", headers=view).status_code == 400
    assert client.get("/fhir/ImagingStudy", headers=view).status_code == 400
    assert client.get("/fhir/Patient?identifier=x&_count=many", headers=view).status_code == 400
    assert client.put("/fhir/ImagingStudy/x", json={}, headers=auth["admin"]).status_code == 405


def test_unknown_study_is_permanent(app: Flask) -> None:
    store = _store(app)
    try:
        notify(app, store, "2.25.42")
    except PermanentError as exc:
        assert "2.25.42" not in str(exc)
    else:
        raise AssertionError("expected PermanentError")
