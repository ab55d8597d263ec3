"""STOW-RS (``POST /dicomweb/studies``) from other devices: reconciled with the patient
directory, stored, indexed, queued and audited like a photo; refusals per instance in the
PS3.18 response (Failed SOP Sequence with Failure Reason), HTTP 200/202/409 per Table 10.5.3-1."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable
from typing import Any

import pydicom
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.db.models import AuditEvent, CaptureSession, Delivery, Instance
from app.pipeline.dicom.builder import PatientInfo
from tests.conftest import CHARTS, served, services
from tests.delivery.conftest import Orthanc, orthancs  # noqa: F401 - a fixture
from tests.devices.conftest import (
    KNOWN,
    PHOTOS,
    SECONDARY_CAPTURE,
    changed,
    new_uid,
    stow_body,
    vl_photo,
)

pytestmark = pytest.mark.usefixtures("known_patients")
BASE = "http://127.0.0.1:8000/dicomweb"  # EBIW_PUBLIC_URL's default in tests


def _stow(client: FlaskClient, headers: dict[str, str], *parts: bytes,
          path: str = "/dicomweb/studies") -> tuple[int, dict[str, Any], list[str]]:
    body, content_type = stow_body(*parts)
    response = client.post(path, data=body, headers={**headers, "Content-Type": content_type})
    assert response.content_type == "application/dicom+json", response.get_data(as_text=True)
    return response.status_code, response.get_json(), response.headers.getlist("Warning")


def _items(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return answer.get(tag, {}).get("Value", [])


def _value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


def _pixel_bytes(data: bytes) -> bytes:
    """The bytes of the Pixel Data element (tag to end) as they lie in the file."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    source = io.BytesIO(data)
    pydicom.dcmread(source, stop_before_pixels=True)
    assert "PixelData" not in ds
    return data[source.tell():]


def test_stored_reconciled_queued_audited_and_found_by_qido(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    study = new_uid()
    exact = vl_photo(PHOTOS[0], study_uid=study)
    # A device that knows the MRN but spells the name its own way and sends no issuer.
    other_spelling = vl_photo(PHOTOS[1], PatientInfo(id=KNOWN.id, issuer="", name="Demo^Alice^M"),
                              study_uid=study)
    status, answer, warnings = _stow(client, auth["capture"], exact, other_spelling)

    assert status == 202  # stored, with a warning for the coerced one
    assert _value(answer, "00081190") == f"{BASE}/studies/{study}"
    referenced = _items(answer, "00081199")
    assert "00081198" not in answer and len(referenced) == 2
    by_uid = {_value(i, "00081155"): i for i in referenced}
    exact_uid = pydicom.dcmread(io.BytesIO(exact)).SOPInstanceUID
    coerced_uid = pydicom.dcmread(io.BytesIO(other_spelling)).SOPInstanceUID
    assert "00081196" not in by_uid[exact_uid]
    assert _value(by_uid[coerced_uid], "00081196") == 0xB000
    assert all(_value(i, "00081150") == "1.2.840.10008.5.1.4.1.1.77.1.4" for i in referenced)
    assert _value(by_uid[coerced_uid], "00081190").startswith(f"{BASE}/studies/{study}/series/")
    assert warnings == ['299 127.0.0.1:8000 "B000: patient attributes set to the '
                        'directory\'s values: IssuerOfPatientID, PatientName, '
                        'PatientBirthDate, PatientSex"']

    svc = services(app)
    with svc.db.session() as db:
        rows = {r.sop_uid: r for r in db.scalars(select(Instance))}
        session = db.scalar(select(CaptureSession).where(CaptureSession.study_uid == study))
        assert session is not None and session.identification is not None
        assert (session.patient_id, session.issuer, session.patient_name) == \
            ("00123456", "LOCAL", "DEMO^ALICE")
        assert session.identification.method == "device"
        assert session.created_by == "capture-user"
        deliveries = [(d.destination, d.study_uid) for d in db.scalars(select(Delivery))]
        receipts = [e for e in db.scalars(select(AuditEvent))
                    if e.action == "dicom.receive"]
    assert set(rows) == {exact_uid, coerced_uid}
    assert deliveries == [("local", study)]  # the EMR notice of the study, like a photo's
    assert {r.outcome for r in receipts} == {"success"} and len(receipts) == 2
    assert all("patient:LOCAL|00123456" in r.entities for r in receipts)

    stored = svc.archive.read(rows[coerced_uid])
    header = pydicom.dcmread(io.BytesIO(stored))
    assert (str(header.PatientName), header.IssuerOfPatientID, header.PatientBirthDate,
            header.PatientSex, header.PatientID) == ("DEMO^ALICE", "LOCAL", "19500314", "F",
                                                     "00123456")
    assert _pixel_bytes(stored) == _pixel_bytes(other_spelling)  # the JPEG as sent
    assert svc.archive.read(rows[exact_uid]) == exact  # nothing to coerce: the very bytes
    assert rows[exact_uid].sha256 == hashlib.sha256(exact).hexdigest()

    found = client.get("/dicomweb/studies?PatientID=00123456", headers=auth["view"]).get_json()
    assert [s["0020000D"]["Value"][0] for s in found] == [study]
    instances = client.get(f"/dicomweb/studies/{study}/instances", headers=auth["view"])
    assert {i["00080018"]["Value"][0] for i in instances.get_json()} == set(rows)


def test_unknown_patient_malformed_and_unsupported_objects_are_refused(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    unknown = vl_photo(patient=PatientInfo(id="00999999", issuer="LOCAL", name="NOBODY^X"))
    other_issuer = vl_photo(patient=PatientInfo(id=KNOWN.id, issuer="OTHER-HOSP"))
    secondary = changed(vl_photo(), SOPClassUID=SECONDARY_CAPTURE)
    truncated = vl_photo()[:300]
    status, answer, warnings = _stow(client, auth["capture"], unknown, other_issuer, secondary,
                                     truncated, b"not dicom at all")
    assert status == 409
    failed = _items(answer, "00081198")
    assert [_value(i, "00081197") for i in failed] == [0xC001, 0xC001, 0x0122, 0xC000, 0xC000]
    assert _value(failed[0], "00081155") == pydicom.dcmread(io.BytesIO(unknown)).SOPInstanceUID
    assert _value(failed[2], "00081150") == SECONDARY_CAPTURE
    assert "00081199" not in answer and "00081190" not in answer
    assert any("C001: no patient directory knows" in w for w in warnings)
    assert any("0122: this SOP class is not accepted" in w for w in warnings)
    text = " ".join(warnings)
    assert "00999999" not in text and "NOBODY" not in text  # no PHI in the reasons
    with services(app).db.session() as db:
        assert list(db.scalars(select(Instance))) == []
        assert list(db.scalars(select(CaptureSession))) == []
        outcomes = [e.outcome for e in db.scalars(select(AuditEvent))
                    if e.action == "dicom.receive"]
    assert outcomes == ["failed"] * 5


def test_duplicates_same_bytes_succeed_other_bytes_conflict(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    first = vl_photo()
    ds = pydicom.dcmread(io.BytesIO(first))
    assert _stow(client, auth["capture"], first)[0] == 200
    status, answer, _ = _stow(client, auth["capture"], first)
    assert status == 200 and len(_items(answer, "00081199")) == 1
    impostor = vl_photo(PHOTOS[2], study_uid=ds.StudyInstanceUID, sop_uid=ds.SOPInstanceUID)
    status, answer, _ = _stow(client, auth["capture"], impostor)
    assert status == 409
    assert [_value(i, "00081197") for i in _items(answer, "00081198")] == [0xC002]
    svc = services(app)
    with svc.db.session() as db:
        [row] = db.scalars(select(Instance))
        assert len(list(db.scalars(select(Delivery)))) == 1
    assert svc.archive.read(row) == first


def test_the_study_in_the_url_limits_the_instances(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    study = new_uid()
    status, answer, _ = _stow(client, auth["capture"], vl_photo(study_uid=study),
                              vl_photo(), path=f"/dicomweb/studies/{study}")
    assert status == 202
    assert _value(answer, "00081190") == f"{BASE}/studies/{study}"
    assert [_value(i, "00081197") for i in _items(answer, "00081198")] == [0xC003]
    assert len(_items(answer, "00081199")) == 1


def test_a_study_of_another_patient_is_not_extended(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    study = new_uid()
    assert _stow(client, auth["capture"], vl_photo(study_uid=study))[0] == 200
    bob = PatientInfo(id="00234567", issuer="LOCAL", name="DEMO^BOB")
    status, _answer, warnings = _stow(client, auth["capture"], vl_photo(patient=bob,
                                                                       study_uid=study))
    assert status == 409 and warnings == [
        '299 127.0.0.1:8000 "C001: the study is another patient\'s"']


@pytest.mark.parametrize(("content_type", "body", "status", "code"), [
    ("application/dicom", b"DICM", 415, "unsupported_media_type"),
    ('multipart/related; type="application/dicom+json"; boundary=x', b"--x--", 415,
     "unsupported_media_type"),
    ('multipart/related; type="application/dicom"', b"--x--", 400, "invalid_multipart"),
    ('multipart/related; type="application/dicom"; boundary=x', b"no boundary here", 400,
     "invalid_multipart"),
    ('multipart/related; type="application/dicom"; boundary=x',
     b"--x\r\nContent-Type: application/dicom\r\n\r\nDICM", 400, "invalid_multipart"),
    ('multipart/related; type="application/dicom"; boundary=x', b"--x--\r\n", 400,
     "invalid_multipart"),
])
def test_malformed_requests_are_refused_whole(
        client: FlaskClient, auth: dict[str, dict[str, str]], content_type: str, body: bytes,
        status: int, code: str) -> None:
    response = client.post("/dicomweb/studies", data=body,
                           headers={**auth["capture"], "Content-Type": content_type})
    assert (response.status_code, response.get_json()["error"]["code"]) == (status, code)


def test_a_part_of_another_type_fails_alone(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    body, content_type = stow_body(vl_photo(), part_type="image/jpeg")
    response = client.post("/dicomweb/studies", data=body,
                           headers={**auth["capture"], "Content-Type": content_type})
    assert response.status_code == 409
    assert [_value(i, "00081197") for i in _items(response.get_json(), "00081198")] == [0xC000]


def test_only_roles_that_upload_may_store(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    body, content_type = stow_body(vl_photo())
    assert client.post("/dicomweb/studies", data=body,
                       headers={"Content-Type": content_type}).status_code == 401
    assert client.post("/dicomweb/studies", data=body,
                       headers={**auth["view"], "Content-Type": content_type}).status_code == 403
    assert client.post("/dicomweb/studies", data=body,
                       headers={**auth["admin"], "Content-Type": content_type}).status_code == 200


@pytest.fixture
def app_overrides() -> dict[str, object]:
    return {"max_upload_bytes": 2 * 1024 * 1024}


def test_a_body_over_the_upload_limit_is_refused_even_chunked(
        app: Flask, auth: dict[str, dict[str, str]]) -> None:
    parts = [vl_photo(p) for p in PHOTOS] * 4
    body, content_type = stow_body(*parts)
    assert len(body) > 2 * 1024 * 1024
    headers = {**auth["capture"], "Content-Type": content_type}
    with served(app) as url:
        sized = requests.post(f"{url}/dicomweb/studies", data=body, headers=headers, timeout=30)
        chunked = requests.post(f"{url}/dicomweb/studies", headers=headers, timeout=30,
                                data=(body[i:i + 65536] for i in range(0, len(body), 65536)))
    assert (sized.status_code, chunked.status_code) == (413, 413)
    with services(app).db.session() as db:
        assert list(db.scalars(select(Instance))) == []


@pytest.mark.parametrize("app_overrides", [{}])  # the default upload limit: native RGB is large
def test_an_object_orthanc_made_is_stored_with_its_pixels_as_sent(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        orthancs: Callable[[], Orthanc]) -> None:  # noqa: F811 - the fixture
    """Another writer's encoding (Orthanc's /tools/create-dicom: DCMTK underneath, the JPEG
    decoded to native RGB): stored, coerced to the directory's patient, pixels untouched."""
    orthanc = orthancs().start()
    photo = (CHARTS / PHOTOS[1]).read_bytes()
    made = requests.post(f"{orthanc.url}/tools/create-dicom", timeout=60, json={
        "Tags": {"PatientID": "00234567", "PatientName": "Bob", "IssuerOfPatientID": "LOCAL",
                 "SOPClassUID": "1.2.840.10008.5.1.4.1.1.77.1.4", "Modality": "XC"},
        "Content": "data:image/jpeg;base64," + base64.b64encode(photo).decode()})
    assert made.status_code == 200, made.text
    data = requests.get(f"{orthanc.url}/instances/{made.json()['ID']}/file", timeout=30).content
    sent = pydicom.dcmread(io.BytesIO(data))
    assert sent.file_meta.ImplementationVersionName.startswith("OFFIS")  # not our writer

    status, answer, _ = _stow(client, auth["capture"], data)
    assert status == 202, answer
    [item] = _items(answer, "00081199")
    assert _value(item, "00081196") == 0xB000
    svc = services(app)
    with svc.db.session() as db:
        row = db.get(Instance, sent.SOPInstanceUID)
        assert row is not None
    stored = svc.archive.read(row)
    header = pydicom.dcmread(io.BytesIO(stored))
    assert (str(header.PatientName), header.PatientSex) == ("DEMO^BOB", "M")
    assert header.PixelData == sent.PixelData and _pixel_bytes(stored) == _pixel_bytes(data)
