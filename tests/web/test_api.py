"""API v1 end to end on embedded defaults: sessions, idempotent uploads, refusals."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.db.models import Instance, Photo
from app.pipeline.decode import strip_jpeg
from tests.conftest import CHARTS, dicom_validate, services
from tests.pipeline.test_decode import png_bomb

PHOTO = (CHARTS / "oycq_data_iphone.jpg").read_bytes()
OTHER = (CHARTS / "sio_classic.jpg").read_bytes()
SESSION_BODY = {"patient": {"id": "00123456", "issuer": "HOSP-A", "name": "DEMO^ALICE",
                            "birth_date": "1950-03-14", "sex": "F"},
                "encounter": "ENC1001", "body_site": "14975008", "laterality": "L",
                "department": "Wound care"}


def open_session(client: FlaskClient, headers: dict[str, str], **body: object) -> dict:
    response = client.post("/api/v1/sessions", json={**SESSION_BODY, **body}, headers=headers)
    assert response.status_code in (200, 201), response.get_json()
    return response.get_json()


def counts(app: Flask) -> tuple[int, int, int]:
    """(photo rows, instance rows, files in the archive)."""
    svc = services(app)
    with svc.db.session() as db:
        photos = db.scalar(select(func.count()).select_from(Photo))
        instances = db.scalar(select(func.count()).select_from(Instance))
    root = svc.settings.archive_root
    files = len([p for p in root.rglob("*") if p.is_file()]) if root.exists() else 0
    return photos or 0, instances or 0, files


def test_full_flow_stores_a_valid_instance(app: Flask, client: FlaskClient,
                                           auth: dict[str, dict[str, str]],
                                           tmp_path: Path) -> None:
    session = open_session(client, auth["capture"])
    assert session["study_instance_uid"].startswith("2.25.")
    upload = str(uuid.uuid4())
    put = client.put(f"/api/v1/sessions/{session['id']}/photos/{upload}", data=PHOTO,
                     headers={**auth["capture"], "Content-Type": "image/jpeg"})
    assert put.status_code == 201, put.get_json()
    body = put.get_json()
    assert body["sha256"] == hashlib.sha256(PHOTO).hexdigest()
    assert body["sop_instance_uid"] == f"2.25.{uuid.UUID(upload).int}"
    assert body["passthrough"] is True
    # The file in the archive is where the design says, and is what the API reported.
    svc = services(app)
    path = (svc.settings.archive_root / session["study_instance_uid"] /
            body["series_instance_uid"] / f"{body['sop_instance_uid']}.dcm")
    stored = path.read_bytes()
    assert hashlib.sha256(stored).hexdigest() == body["dicom_sha256"]
    ds = pydicom.dcmread(io.BytesIO(stored))
    assert (ds.PatientID, ds.IssuerOfPatientID, ds.AdmissionID) == ("00123456", "HOSP-A",
                                                                    "ENC1001")
    assert ds.StudyInstanceUID == session["study_instance_uid"]
    assert ds.AnatomicRegionSequence[0].CodeValue == "14975008" and ds.ImageLaterality == "L"
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    assert frame.rstrip(b"\x00") == strip_jpeg(PHOTO)
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY"]
    assert "RequestAttributesSequence" not in ds  # no worklist step: nothing to claim
    assert b"Display P3" in bytes(ds.ICCProfile).replace(b"\x00", b"")  # the iPhone's own

    # The chart in the photo gave a second, DERIVED instance in its own series.
    color = body["color"]
    assert color["chart"]["type"] == "classic24" and color["reliable"] is True
    assert color["delta_e_after"]["loo_mean"] < color["delta_e_before"]["mean"]
    spacing = body["pixel_spacing_mm"]
    assert spacing == pytest.approx(color["pixel_spacing_mm"], rel=1e-4) and 0.05 < spacing < 0.5
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([spacing, spacing], rel=1e-5)
    derived_uid = body["normalized_sop_instance_uid"]
    derived_path = next(svc.settings.archive_root.rglob(f"{derived_uid}.dcm"))
    derived = pydicom.dcmread(derived_path)
    assert list(derived.ImageType) == ["DERIVED", "PRIMARY"]
    assert derived.SeriesInstanceUID != ds.SeriesInstanceUID and derived.SeriesNumber == 2
    assert derived.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert "CIEDE2000" in derived.DerivationDescription
    assert b"Display P3" not in bytes(derived.ICCProfile)  # the corrected pixels are sRGB
    assert (derived.Rows, derived.Columns) == (ds.Rows, ds.Columns)
    errors, warnings, output = dicom_validate(path, derived_path)
    assert (errors, warnings) == (0, 0), output

    status = client.get(f"/api/v1/sessions/{session['id']}", headers=auth["view"]).get_json()
    assert [p["upload_uuid"] for p in status["photos"]] == [upload]
    assert status["photos"][0]["status"] == "stored"
    done = client.post(f"/api/v1/sessions/{session['id']}/complete", headers=auth["capture"])
    assert done.status_code == 200 and done.get_json()["status"] == "complete"
    assert done.get_json()["photo_count"] == 1


def test_upload_is_idempotent_by_uuid(app: Flask, client: FlaskClient,
                                      auth: dict[str, dict[str, str]]) -> None:
    session = open_session(client, auth["capture"])
    url = f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}"
    first = client.put(url, data=PHOTO, headers=auth["capture"])
    again = client.put(url, data=PHOTO, headers=auth["capture"])
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.get_json() == again.get_json()
    clash = client.put(url, data=OTHER, headers=auth["capture"])
    assert clash.status_code == 409
    assert clash.get_json()["error"]["code"] == "conflict"
    assert counts(app) == (1, 2, 2)  # the original and its colour-normalized instance
    second = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}", data=OTHER,
                        headers=auth["capture"])
    assert second.status_code == 201 and second.get_json()["instance_number"] == 2
    assert counts(app) == (2, 4, 4)


def test_session_is_idempotent_by_client_id(client: FlaskClient,
                                            auth: dict[str, dict[str, str]]) -> None:
    sid = str(uuid.uuid4())
    first = client.post("/api/v1/sessions", json={**SESSION_BODY, "id": sid},
                        headers=auth["capture"])
    again = client.post("/api/v1/sessions", json={**SESSION_BODY, "id": sid},
                        headers=auth["capture"])
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.get_json()["study_instance_uid"] == again.get_json()["study_instance_uid"]
    other = client.post("/api/v1/sessions", json={**SESSION_BODY, "id": sid,
                                                  "patient": {"id": "999", "issuer": "X"}},
                        headers=auth["capture"])
    assert other.status_code == 409


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"),
    (PHOTO[:300_000], "truncated"),
    (png_bomb(), "too large"),
    (b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>",
     "not a supported image"),
    (OTHER + b"<html><body><script>alert(1)</script></body></html>", "after the end"),
])
def test_bad_uploads_get_4xx_and_store_nothing(app: Flask, client: FlaskClient,
                                               auth: dict[str, dict[str, str]],
                                               data: bytes, message: str) -> None:
    session = open_session(client, auth["capture"])
    response = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                          data=data, headers={**auth["capture"], "Content-Type": "image/jpeg"})
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "unreadable_photo" and message in error["message"]
    assert counts(app) == (0, 0, 0)


def test_body_over_the_limit_is_413(tmp_path: Path) -> None:
    from app.factory import create_app
    from app.workflow.tokens import create_token

    small = create_app({"data_dir": tmp_path, "env": "test", "max_upload_bytes": 100_000})
    services(small).db.create_schema()
    headers = {"Authorization": f"Bearer {create_token(services(small).db, 'n', 'capture')}"}
    client = small.test_client()
    session = open_session(client, headers)
    response = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                          data=PHOTO, headers=headers)
    assert response.status_code == 413
    assert response.get_json()["error"]["message"] == "the upload is too large"
    assert counts(small) == (0, 0, 0)


@pytest.mark.parametrize(("body", "field"), [
    ({}, "patient"),
    ({"patient": {"issuer": "X"}}, "patient.id"),
    ({"patient": {"id": "a\\b"}}, "patient.id"),
    ({"patient": {"id": "0012\t3456"}}, "patient.id"),
    ({"patient": {"id": "   "}}, "patient.id"),
    ({"patient": {"id": "1", "name": "DOE^" + "J" * 61}}, "patient.name"),
    ({"patient": {"id": "1"}, "worklist_item": {"study_instance_uid": "1.2.3",
                                                "accession_number": "A\tB"}},
     "worklist_item.accession_number"),
    ({"patient": {"id": "1", "birth_date": "14/03/1950"}}, "birth_date"),
    ({"patient": {"id": "1", "sex": "X"}}, "sex"),
    ({"patient": {"id": "1"}, "body_site": "123"}, "body_site"),
    ({"patient": {"id": "1"}, "body_site": "14975008"}, "laterality"),
    ({"patient": {"id": "1"}, "laterality": "Q"}, "laterality"),
    ({"patient": {"id": "1"}, "id": "not-a-uuid"}, "id"),
])
def test_invalid_session_requests_name_the_field(client: FlaskClient,
                                                 auth: dict[str, dict[str, str]],
                                                 body: dict, field: str) -> None:
    response = client.post("/api/v1/sessions", json=body, headers=auth["capture"])
    assert response.status_code == 422
    assert field in response.get_json()["error"]["message"]


def test_api_is_never_open_anonymously(client: FlaskClient,
                                       auth: dict[str, dict[str, str]]) -> None:
    sid = uuid.uuid4()
    calls = [("post", "/api/v1/sessions"), ("get", f"/api/v1/sessions/{sid}"),
             ("put", f"/api/v1/sessions/{sid}/photos/{uuid.uuid4()}"),
             ("post", f"/api/v1/sessions/{sid}/complete"), ("get", "/api/v1/body-sites")]
    for method, url in calls:
        for headers in ({}, {"Authorization": "Bearer ebiw_wrong"}, {"Authorization": "Basic x"}):
            response = getattr(client, method)(url, headers=headers)
            assert response.status_code == 401, (method, url)
            assert response.get_json()["error"]["code"] == "unauthorized"
    viewer = client.post("/api/v1/sessions", json=SESSION_BODY, headers=auth["view"])
    assert viewer.status_code == 403


def test_unknown_session_and_errors_carry_no_phi(client: FlaskClient,
                                                 auth: dict[str, dict[str, str]]) -> None:
    response = client.get(f"/api/v1/sessions/{uuid.uuid4()}", headers=auth["view"])
    assert response.status_code == 404
    assert response.get_json() == {"error": {"code": "not_found",
                                             "message": "no such capture session"}}
    session = open_session(client, auth["capture"])
    bad = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}", data=b"x",
                     headers=auth["capture"])
    assert "00123456" not in bad.get_data(as_text=True)
    assert "ALICE" not in bad.get_data(as_text=True)


def test_openapi_document_describes_the_routes(app: Flask, client: FlaskClient) -> None:
    spec = client.get("/api/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    # Paths with servers of their own (STOW-RS under /dicomweb) are documented with them.
    documented = {item.get("servers", spec["servers"])[0]["url"] + path
                  for path, item in spec["paths"].items()}
    rules: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        rules.setdefault(rule.rule.replace("<", "{").replace(">", "}"), set()).update(
            rule.methods or ())
    assert {r for r in rules if r.startswith("/api/v1")} == \
        {p for p in documented if p.startswith("/api/v1")}
    for path, item in spec["paths"].items():
        full = item.get("servers", spec["servers"])[0]["url"] + path
        methods = {m.upper() for m in item if m in ("get", "put", "post", "delete", "patch")}
        assert full in rules and methods <= rules[full], full


def test_body_sites(client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    sites = client.get("/api/v1/body-sites", headers=auth["capture"]).get_json()
    forearm = next(s for s in sites if s["code"] == "14975008")
    assert forearm == {"code": "14975008", "meaning": "Forearm", "sensitive": False,
                       "paired": True}
    assert json.dumps(sites)


@pytest.mark.parametrize("app_overrides", [{"color_max_pixels": 4_000_000}])
def test_capped_normalized_image_is_smaller_with_its_own_spacing(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    """EBIW_COLOR_MAX_PIXELS reduces the DERIVED image only: the original keeps its bitstream
    and the photo's spacing; the derived one is half size with twice the spacing."""
    session = open_session(client, auth["capture"])
    put = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}", data=PHOTO,
                     headers={**auth["capture"], "Content-Type": "image/jpeg"})
    assert put.status_code == 201, put.get_json()
    body = put.get_json()
    root = services(app).settings.archive_root
    original_path = next(root.rglob(f"{body['sop_instance_uid']}.dcm"))
    derived_path = next(root.rglob(f"{body['normalized_sop_instance_uid']}.dcm"))
    original, derived = pydicom.dcmread(original_path), pydicom.dcmread(derived_path)
    frame = next(pydicom.encaps.generate_frames(original.PixelData, number_of_frames=1))
    assert frame.rstrip(b"\x00") == strip_jpeg(PHOTO)
    assert (derived.Rows, derived.Columns) == (original.Rows // 2, original.Columns // 2)
    spacing = body["pixel_spacing_mm"]
    assert spacing == pytest.approx(body["color"]["pixel_spacing_mm"], rel=1e-4)
    assert [float(v) for v in original.PixelSpacing] == pytest.approx([spacing] * 2, rel=1e-5)
    assert [float(v) for v in derived.PixelSpacing] == pytest.approx([2 * spacing] * 2, rel=1e-5)
    errors, warnings, output = dicom_validate(original_path, derived_path)
    assert (errors, warnings) == (0, 0), output


@pytest.mark.parametrize("app_overrides", [{"pixel_jobs": 1}, {"pixel_jobs": 2}])
def test_pixel_work_runs_at_most_pixel_jobs_at_once(app: Flask,
                                                    app_overrides: dict[str, int]) -> None:
    """EBIW_PIXEL_JOBS bounds the frames a process holds: the other threads take turns."""
    intake = services(app).intake
    running, peak, lock = 0, 0, threading.Lock()
    work = intake._process

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            time.sleep(0.05)  # hold the slot long enough for the other threads to arrive
            return work(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    intake._process = counting  # type: ignore[method-assign]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: intake.process(PHOTO, color=False), range(4)))
    assert peak == app_overrides["pixel_jobs"]
    assert all(r.prepared.jpeg == results[0].prepared.jpeg for r in results)
