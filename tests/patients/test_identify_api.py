"""POST /api/v1/identify and /api/v1/patients/search on real barcode photos; read-wristband."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from app.db.models import CaptureSession
from app.factory import create_app
from app.workflow.identification import import_patient_file
from app.workflow.tokens import create_token
from tests.conftest import BARCODES, REPO, services
from tests.patients.conftest import write

BAND = BARCODES / "zx_code128-2_05.png"  # Code 128, payload 15182881 (plain digits)
UNKNOWN_BAND = BARCODES / "zx_code128-2_29.png"  # Code 128, payload 42094043
NOT_A_BAND = BARCODES / "zx_code128-2_01.png"  # Code 128, payload 005-3379497200006
PATIENTS = """mrn,issuer,family,given,birth_date,sex,encounter,encounter_status,department
15182881,HOSP-A,TEST,CAROL,1960-06-01,F,ENC-7,in-progress,Wound care
"""
TWIN = "mrn,issuer,family,given,birth_date,sex\n15182881,HOSP-B,OTHER,DAN,1999-09-09,M\n"


def blank_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 200, 200)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def indexed(app: Flask, tmp_path: Path) -> Flask:
    """The app with CAROL (MRN 15182881 of HOSP-A, open encounter ENC-7) in the local index."""
    svc = services(app)
    import_patient_file(svc.db, write(tmp_path / "p.csv", PATIENTS), settings=svc.settings)
    return app


def identify_photo(client: FlaskClient, headers: dict[str, str], path: Path) -> tuple[int, dict]:
    response = client.post("/api/v1/identify", data=path.read_bytes(),
                           headers={**headers, "Content-Type": "image/png"})
    return response.status_code, response.get_json()


def test_wristband_photo_finds_the_patient(indexed: Flask, auth: dict[str, dict[str, str]],
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = indexed.test_client()
    response = client.post("/api/v1/identify", data=BAND.read_bytes(),
                           headers={**auth["capture"], "Content-Type": "image/png"})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert (body["status"], body["ambiguous"], body["method"]) == ("matched", False, "wristband")
    assert body["identifiers"] == [{"mrn": "15182881", "issuer": None, "encounter": None,
                                    "rule": "digits", "symbology": "Code128",
                                    "payload": "15182881"}]
    [patient] = body["patients"]
    assert {k: patient[k] for k in ("mrn", "issuer", "name", "birth_date", "sex")} == {
        "mrn": "15182881", "issuer": "HOSP-A", "birth_date": "1960-06-01", "sex": "F",
        "name": {"family": "TEST", "given": "CAROL", "dicom": "TEST^CAROL"}}
    assert [(e["identifier"], e["status"], e["department"]) for e in patient["encounters"]] == [
        ("ENC-7", "in-progress", "Wound care")]
    evidence = patient["identification"]["evidence"]
    assert patient["identification"]["method"] == "wristband"
    assert (evidence["symbology"], evidence["rule"], evidence["matched"],
            evidence["directories"]) == ("Code128", "digits", ["mrn"], ["local"])
    assert evidence["reader"].startswith(("zxing-cpp:", "zbar:"))
    # Nothing of the request or the answer reaches the logs.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "15182881" not in logged and "CAROL" not in logged

    # Multipart (a browser form) gives the same answer.
    multipart = client.post("/api/v1/identify", headers=auth["capture"],
                            data={"photo": (io.BytesIO(BAND.read_bytes()), "band.png")},
                            content_type="multipart/form-data")
    assert multipart.status_code == 200 and multipart.get_json()["patients"] == body["patients"]

    # The identification goes with the session it opens, and stays with the study.
    session = client.post("/api/v1/sessions", headers=auth["capture"], json={
        "patient": {"id": "15182881", "issuer": "HOSP-A"}, "encounter": "ENC-7",
        "identification": patient["identification"]})
    assert session.status_code == 201, session.get_json()
    with services(indexed).db.session() as db:
        stored = db.get(CaptureSession, session.get_json()["id"]).identification
        assert (stored.method, stored.evidence) == ("wristband", evidence)


def test_two_patients_match_nobody_is_picked(indexed: Flask, tmp_path: Path,
                                            auth: dict[str, dict[str, str]]) -> None:
    svc = services(indexed)
    import_patient_file(svc.db, write(tmp_path / "twin.csv", TWIN), settings=svc.settings)
    status, body = identify_photo(indexed.test_client(), auth["capture"], BAND)
    assert status == 200
    assert (body["status"], body["ambiguous"]) == ("ambiguous", True)
    assert sorted((p["issuer"], p["name"]["given"]) for p in body["patients"]) == [
        ("HOSP-A", "CAROL"), ("HOSP-B", "DAN")]
    assert not any(key in body for key in ("patient", "selected", "chosen"))


def test_nobody_matches_is_404_with_what_was_read(indexed: Flask,
                                                 auth: dict[str, dict[str, str]]) -> None:
    status, body = identify_photo(indexed.test_client(), auth["capture"], UNKNOWN_BAND)
    assert status == 404
    assert body["status"] == "not_found" and body["patients"] == []
    assert body["error"]["code"] == "no_patient" and "42094043" not in body["error"]["message"]
    assert body["identifiers"][0]["mrn"] == "42094043"


def test_photos_without_an_identifier_are_422(indexed: Flask,
                                              auth: dict[str, dict[str, str]]) -> None:
    for data, code, message in (
            (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "unreadable_photo", ""),
            (b"<html><body>not a photo</body></html>", "unreadable_photo",
             "not a supported image"),
            (blank_png(), "no_barcode", "no barcode was found"),
            (NOT_A_BAND.read_bytes(), "no_wristband_rule",
             "(Code128) is not a wristband identifier")):
        response = indexed.test_client().post(
            "/api/v1/identify", data=data,
            headers={**auth["capture"], "Content-Type": "image/png"})
        assert response.status_code == 422
        error = response.get_json()["error"]
        assert error["code"] == code and message in error["message"]
        assert "005-3379497200006" not in response.get_data(as_text=True)


def test_typed_and_scanned_barcodes(indexed: Flask, auth: dict[str, dict[str, str]]) -> None:
    client = indexed.test_client()
    typed = client.post("/api/v1/identify", json={"barcode": "MRN:15182881"},
                        headers=auth["capture"])
    assert typed.status_code == 200
    body = typed.get_json()
    assert body["method"] == "typed" and body["identifiers"][0]["rule"] == "prefixed"
    assert body["patients"][0]["identification"]["method"] == "typed"
    scanned = client.post("/api/v1/identify", headers=auth["capture"], json={
        "barcode": "15182881^^^HOSP-A^MR~ENC-7^^^^VN", "method": "scanned",
        "symbology": "PDF417"}).get_json()
    [patient] = scanned["patients"]
    assert scanned["identifiers"][0]["encounter"] == "ENC-7"
    assert patient["identification"]["evidence"]["matched"] == ["mrn", "issuer", "encounter"]
    assert patient["encounters"][0]["on_wristband"] is True
    for bad, field in (({"barcode": ""}, "barcode"), ({"barcode": "1" * 600}, "barcode"),
                       ({"barcode": "15182881", "method": "psychic"}, "method"),
                       ({"code": "15182881"}, "barcode")):
        refused = client.post("/api/v1/identify", json=bad, headers=auth["capture"])
        assert refused.status_code == 422 and field in refused.get_json()["error"]["message"]
    no_rule = client.post("/api/v1/identify", json={"barcode": "hello"}, headers=auth["capture"])
    assert no_rule.get_json()["error"]["code"] == "no_wristband_rule"


def test_manual_search_by_mrn_in_the_body(indexed: Flask,
                                          auth: dict[str, dict[str, str]]) -> None:
    client = indexed.test_client()
    found = client.post("/api/v1/patients/search", json={"mrn": "15182881"},
                        headers=auth["capture"])
    assert found.status_code == 200
    assert found.get_json()["patients"][0]["identification"] == {
        "method": "manual", "evidence": {"directories": ["local"], "matched": ["mrn"]}}
    assert client.post("/api/v1/patients/search", json={"mrn": "15182881", "issuer": "HOSP-Z"},
                       headers=auth["capture"]).status_code == 404
    assert client.post("/api/v1/patients/search", json={},
                       headers=auth["capture"]).status_code == 422
    # Lookups are POST only: an identifier never has to go in a URL.
    assert client.get("/api/v1/patients/search?mrn=15182881",
                      headers=auth["capture"]).status_code == 405


def test_identification_needs_the_capture_role(client: FlaskClient,
                                               auth: dict[str, dict[str, str]]) -> None:
    for url in ("/api/v1/identify", "/api/v1/patients/search"):
        assert client.post(url, json={"barcode": "1"}).status_code == 401
        assert client.post(url, json={"barcode": "1"}, headers=auth["view"]).status_code == 403


@pytest.fixture
def emr_down_app(tmp_path: Path, database_url: str) -> Iterator[Flask]:
    """Local index first, then an EMR whose port is closed."""
    from tests.patients.conftest import free_port

    app = create_app({"data_dir": tmp_path / "var", "env": "test", "database_url": database_url,
                      "patient_directory": "local,fhir",
                      "patient_fhir_url": f"http://127.0.0.1:{free_port()}/fhir",
                      "emr_issuer_systems": json.dumps({"HOSP-A": "urn:oid:1.2.3.4.5.6"}),
                      "patient_timeout_seconds": 2})
    services(app).db.create_schema()
    svc = services(app)
    import_patient_file(svc.db, write(tmp_path / "p.csv", PATIENTS), settings=svc.settings)
    yield app
    services(app).db.engine.dispose()


def test_emr_down_falls_back_clearly(emr_down_app: Flask) -> None:
    headers = {"Authorization":
               f"Bearer {create_token(services(emr_down_app).db, 'n', 'capture')}"}
    client = emr_down_app.test_client()
    started = time.monotonic()
    known = client.post("/api/v1/identify", json={"barcode": "15182881"}, headers=headers)
    assert known.status_code == 200  # the local index answered; the EMR's absence is shown
    assert known.get_json()["unavailable"] == {"fhir": "the EMR (FHIR) cannot be reached"}
    unknown = client.post("/api/v1/identify", json={"barcode": "42094043"}, headers=headers)
    assert unknown.status_code == 503  # "not found" would be a lie: the EMR was not asked
    assert unknown.get_json()["error"] == {
        "code": "directory_unavailable",
        "message": "the patient directory is unavailable (the EMR (FHIR) cannot be reached): "
                   "enter the patient manually"}
    assert time.monotonic() - started < 3


def test_read_wristband_cli(tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    blank.write_bytes(blank_png())
    files = [BAND, NOT_A_BAND, blank, tmp_path / "missing.png"]
    proc = subprocess.run([sys.executable, "-m", "app.cli", "read-wristband", *map(str, files)],
                          capture_output=True, text=True, cwd=REPO, check=False,
                          env={**os.environ, "EBIW_DATA_DIR": str(tmp_path / "var")})
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0] == {"file": str(BAND), "symbology": "Code128", "payload": "15182881",
                        "mrn": "15182881", "issuer": None, "encounter": None}
    assert lines[1] == {"file": str(NOT_A_BAND),
                        "error": "the barcode (Code128) is not a wristband identifier"}
    assert lines[2]["file"] == str(blank) and lines[2]["error"].startswith("no barcode")
    assert lines[3] == {"file": str(files[3]),
                        "error": "cannot read the file (No such file or directory)"}
