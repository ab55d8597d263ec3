"""No PHI in logs (a whole flow logged at DEBUG, every line searched), the redacting filter as a
safety net, quiet third-party loggers, and no EXIF/GPS stored or served."""

from __future__ import annotations

import io
import logging
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from flask import Flask
from PIL import Image
from sqlalchemy import select
from werkzeug.serving import make_server

from app.db.models import Patient
from app.factory import create_app
from app.logs import QUIET_LOGGERS, JsonFormatter, PhiRedactingFilter, redact
from tests.conftest import log_in, services, serving
from tests.security.conftest import (
    BAND,
    BIRTH,
    ENCOUNTER,
    FAMILY,
    GIVEN,
    MRN,
    PHI_STRINGS,
    PHOTO,
    seed_patient,
)

MARKER = "SECRET-LOCATION-4711"


class Capture(logging.Handler):
    """Keeps every record, formatted as the deployment formats it, with nothing redacted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.json = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.json.format(record))
        self.lines.append(logging.Formatter().format(record))  # message + any traceback


@pytest.fixture
def captured() -> Iterator[Capture]:
    root = logging.getLogger()
    handler, level = Capture(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_a_whole_flow_logged_at_debug_names_no_patient(
        app: Flask, users: dict[str, str], captured: Capture) -> None:
    seed_patient(app)
    nurse, viewer = app.test_client(), app.test_client()
    csrf = {"X-CSRF-Token": log_in(nurse, users["capture"])}
    # identify: wristband photo, typed barcode, manual search
    band = nurse.post("/api/v1/identify", data=BAND.read_bytes(),
                      headers={**csrf, "Content-Type": "image/png"})
    assert band.status_code == 200 and band.get_json()["patients"][0]["mrn"] == MRN
    assert nurse.post("/api/v1/identify", json={"barcode": MRN}, headers=csrf) \
        .status_code == 200
    assert nurse.post("/api/v1/patients/search", json={"mrn": MRN}, headers=csrf) \
        .status_code == 200
    # a session with the patient's name and birth date, two photos, completed
    opened = nurse.post("/api/v1/sessions", headers=csrf, json={
        "patient": {"id": MRN, "issuer": "LOCAL", "name": f"{FAMILY}^{GIVEN}",
                    "birth_date": BIRTH.isoformat(), "sex": "F"},
        "encounter": ENCOUNTER, "body_site": "14975008", "laterality": "L"})
    assert opened.status_code == 201
    session = opened.get_json()
    for data in (PHOTO, b"not a photo " + MRN.encode()):
        nurse.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}", data=data,
                  headers={**csrf, "Content-Type": "image/jpeg"})
    assert nurse.post(f"/api/v1/sessions/{session['id']}/complete", headers=csrf) \
        .status_code == 200
    # view it: viewer, QIDO with identifiers in the query string, metadata, images, FHIR
    log_in(viewer, users["view"])
    study = session["study_instance_uid"]
    assert viewer.get(f"/studies/{study}").status_code == 200
    assert viewer.get(f"/dicomweb/studies?PatientID={MRN}&PatientName={FAMILY}*"
                      f"&PatientBirthDate={BIRTH:%Y%m%d}").status_code == 200
    assert viewer.get(f"/dicomweb/studies/{study}/metadata").status_code == 200
    assert viewer.get(f"/dicomweb/studies/{study}/thumbnail").status_code == 200
    with services(app).db.session() as db:
        patient_id = db.scalar(select(Patient.id).where(Patient.mrn == MRN))
    assert viewer.get(f"/fhir/Patient/{patient_id}").status_code == 200
    assert viewer.get(f"/fhir/Patient?identifier=urn:x|{MRN}").status_code == 200
    viewer.get(f"/fhir/ImagingStudy?patient=Patient/{patient_id}")
    # failures: a wrong password (and an MRN typed as a username), a refused search
    assert nurse.post("/login", json={"username": users["capture"], "password": MRN + "!"}) \
        .status_code == 401
    nurse.post("/login", json={"username": MRN, "password": f"{FAMILY} {BIRTH}"})
    viewer.get(f"/dicomweb/studies?PatientBirthDate=not-a-date-{MRN}")
    # the development server's own request log, with identifiers in the query string
    with serving(make_server("127.0.0.1", 0, app, threaded=True)) as server:
        requests.get(f"http://127.0.0.1:{server.server_port}/dicomweb/studies",
                     params={"PatientID": MRN, "PatientName": f"{FAMILY}^{GIVEN}"}, timeout=10)

    assert len(captured.lines) > 5  # DEBUG really was on
    for line in captured.lines:
        for phi in PHI_STRINGS:
            assert phi not in line, (phi, line)


def test_chatty_third_party_loggers_are_held_at_warning(app: Flask) -> None:
    for name, level in QUIET_LOGGERS.items():
        assert logging.getLogger(name).getEffectiveLevel() >= level, name
    for name in ("pynetdicom", "werkzeug", "urllib3", "sqlalchemy.engine"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name


def test_the_redacting_filter_is_installed_outside_tests(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = list(root.filters)
    try:
        create_app({"data_dir": tmp_path, "env": "development"})
        assert any(isinstance(f, PhiRedactingFilter) for f in root.filters)
        import app.gunicorn_conf as conf
        handlers = conf.logconfig_dict["handlers"]
        assert "phi" in handlers["console"]["filters"]
        assert conf.logconfig_dict["filters"]["phi"]["()"] == "app.logs.PhiRedactingFilter"
        assert conf.logconfig_dict["loggers"]["pynetdicom"]["level"] == "WARNING"
    finally:
        root.filters[:] = before


@pytest.mark.parametrize(("text", "kept"), [
    (f'GET /dicomweb/studies?PatientID={MRN}&x=1 HTTP/1.1', "GET /dicomweb/studies?"),
    (f"patient {FAMILY}^{GIVEN} born {BIRTH.isoformat()}", "patient "),
    (f'{{"mrn": "{MRN}", "name": "Ann Other", "birth_date": "1961-02-03"}}', '"mrn": '),
    (f"PatientID={MRN} PatientBirthDate={BIRTH:%Y%m%d}", "PatientID="),
    (f"no match for {MRN} in 03.02.1961", "no match for"),
    ("study 1.2.826.0.1.3680043.10.543.123456789 upload 12345678-aaaa-4bbb-8ccc-123456789012",
     "1.2.826.0.1.3680043.10.543.123456789"),
])
def test_redaction_catches_phi_shaped_text(text: str, kept: str) -> None:
    out = redact(text)
    assert kept in out
    for phi in PHI_STRINGS:
        assert phi not in out, out
    assert "Ann Other" not in out


def test_redaction_leaves_uids_and_uuids_alone() -> None:
    text = "study 1.2.826.0.1.3680043.10.543.123456789 upload 12345678-aaaa-4bbb-8ccc-1234567890"
    assert redact(text) == text


def test_the_filter_rewrites_messages_and_tracebacks() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "patient %s failed",
                               (MRN,), None)
    try:
        raise ValueError(f"{FAMILY}^{GIVEN}")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert PhiRedactingFilter().filter(record) is True
    text = logging.Formatter().format(record)
    assert MRN not in text and FAMILY not in text and "patient [redacted] failed" in text


def _exif_photo(orientation: int) -> bytes:
    """The test photo with EXIF: GPS position, a description marker and an orientation."""
    image = Image.open(io.BytesIO(PHOTO))
    exif = image.getexif()
    exif[0x010E] = MARKER  # ImageDescription
    exif[0x0112] = orientation
    exif[0x8825] = {1: "N", 2: (48.0, 8.0, 30.0), 3: "E", 4: (11.0, 34.0, 0.0),
                    0x1C: MARKER}  # GPSInfo, GPSAreaInformation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, exif=exif.tobytes())
    data = out.getvalue()
    assert b"Exif\x00\x00" in data and MARKER.encode() in data
    return data


def _no_exif(data: bytes, what: str) -> None:
    assert b"Exif\x00\x00" not in data, what
    assert MARKER.encode() not in data, what


@pytest.mark.parametrize("orientation", [1, 6])  # passed through bit-exact / re-encoded
def test_exif_and_gps_are_never_stored_or_served(app: Flask, auth: dict[str, dict[str, str]],
                                                 orientation: int) -> None:
    client = app.test_client()
    seed_patient(app)
    opened = client.post("/api/v1/sessions", headers=auth["capture"], json={
        "patient": {"id": MRN, "issuer": "LOCAL"}, "body_site": "14975008",
        "laterality": "L"})
    session = opened.get_json()
    put = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                     data=_exif_photo(orientation),
                     headers={**auth["capture"], "Content-Type": "image/jpeg"})
    assert put.status_code == 201, put.get_json()
    photo = put.get_json()
    assert photo["passthrough"] is (orientation == 1)
    files = list(services(app).settings.archive_root.rglob("*.dcm"))
    assert files
    for path in files:
        stored = path.read_bytes()
        _no_exif(stored, str(path))
        ds = pydicom.dcmread(io.BytesIO(stored))
        assert not [e for e in ds.iterall() if "GPS" in e.keyword or "Exif" in e.keyword]
    study = session["study_instance_uid"]
    instance = (f"/dicomweb/studies/{study}/series/{photo['series_instance_uid']}"
                f"/instances/{photo['sop_instance_uid']}")
    view = auth["view"]
    for url, accept in [
            (instance, 'multipart/related; type="application/dicom"'),
            (f"{instance}/frames/1", 'multipart/related; type="image/jpeg"'),
            (f"{instance}/rendered", "image/jpeg"), (f"{instance}/rendered", "image/png"),
            (f"{instance}/thumbnail", "image/jpeg"),
            (f"/dicomweb/studies/{study}/thumbnail", "image/jpeg")]:
        response = client.get(url, headers={**view, "Accept": accept})
        assert response.status_code == 200, (url, accept, response.status_code)
        _no_exif(response.data, f"{url} {accept}")
