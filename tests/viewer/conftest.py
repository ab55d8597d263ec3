"""Studies for the viewer and DICOMweb tests, made through the app's intake with real photos.

A colour-normalized image is a DERIVED instance in a second series of the same study (Source
Image Sequence → its original, Derivation Description with the ΔE report, Pixel Spacing at the
chart plane), built with the DICOM builder as the colour step will. Earlier studies of the same
patient and body site are built the same way with earlier dates, for date matching and the
viewer's timeline.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cache
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.db.models import Instance
from app.gateways.archive import InstanceKey
from app.pipeline.decode import (
    PhotoInfo,
    PreparedPhoto,
    encode_jpeg,
    load_pixels,
    prepare_for_dicom,
    probe,
)
from app.pipeline.dicom.builder import (
    VL_PHOTOGRAPHIC_IMAGE_STORAGE,
    Derivation,
    InstanceInfo,
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    build_vl_photo,
)
from app.pipeline.dicom.codes import body_site
from app.pipeline.dicom.uids import uid_from_uuid
from tests.conftest import CHARTS, served, services

PATIENT = {"id": "00123456", "issuer": "HOSP-A", "name": "DEMO^ALICE",
           "birth_date": "1950-03-14", "sex": "F"}
OTHER_PATIENT = {"id": "00999999", "issuer": "HOSP-A", "name": "DEMO^BOB",
                 "birth_date": "1961-07-01", "sex": "M"}
FOREARM = "14975008"
CHART = "sio_classic.jpg"
"""A ColorChecker Classic seen almost square-on (1600×1200): the measuring test's photo."""
PHONE = "oycq_data_iphone.jpg"
"""A 12 MP iPhone photo with its Display P3 profile."""

CLASSIC_PITCH_MM = 46.0
QUAD_MARGIN = 1.5 / 2.75  # the ground-truth quad lies this many pitches beyond patch centres
QUAD_MM = ((5 + 2 * QUAD_MARGIN) * CLASSIC_PITCH_MM, (3 + 2 * QUAD_MARGIN) * CLASSIC_PITCH_MM)
CARD_WIDTH_MM = 279.4  # ColorChecker Classic card, 11 in


def chart_quad(name: str = CHART) -> np.ndarray:
    """The ground-truth quad of a photo's chart (corner 0 = patch 1, 1 = patch 6, ...)."""
    truth = json.loads((CHARTS / "groundtruth.json").read_text())
    return np.array(truth["images"][name]["quad"], dtype=float)


def chart_spacing_mm(name: str = CHART) -> float:
    """Pixel spacing at the chart plane from the ground truth: the mean over the quad's four
    sides of their known length in mm over their length in pixels."""
    quad = chart_quad(name)
    sides = np.linalg.norm(quad - np.roll(quad, -1, axis=0), axis=1)  # 0-1, 1-2, 2-3, 3-0
    known = np.array([QUAD_MM[0], QUAD_MM[1], QUAD_MM[0], QUAD_MM[1]])
    return float(np.mean(known / sides))


@dataclass(frozen=True)
class StoredStudy:
    """A study in the archive: its UIDs, its originals and its derived (normalized) images."""

    study_uid: str
    original_series: str
    originals: list[str]  # SOP Instance UIDs, in instance-number order
    derived_series: str | None = None
    derived: tuple[tuple[str, str], ...] = ()  # (derived SOP UID, its original's SOP UID)


def upload_study(client: FlaskClient, headers: dict[str, str], photos: list[bytes],
                 patient: dict[str, str] = PATIENT, site: str = FOREARM,
                 laterality: str = "L") -> StoredStudy:
    """Open a capture session, upload ``photos`` through the API and complete it."""
    body = {"patient": patient, "encounter": "ENC1001", "body_site": site,
            "laterality": laterality, "department": "Wound care"}
    session = client.post("/api/v1/sessions", json=body, headers=headers)
    assert session.status_code == 201, session.get_json()
    sid = session.get_json()["id"]
    uids, series = [], ""
    for data in photos:
        put = client.put(f"/api/v1/sessions/{sid}/photos/{uuid.uuid4()}", data=data,
                         headers=headers)
        assert put.status_code == 201, put.get_json()
        uids.append(put.get_json()["sop_instance_uid"])
        series = put.get_json()["series_instance_uid"]
    assert client.post(f"/api/v1/sessions/{sid}/complete", headers=headers).status_code == 200
    return StoredStudy(session.get_json()["study_instance_uid"], series, uids)


def _context(ds: pydicom.Dataset) -> tuple[PatientInfo, StudyInfo, SeriesInfo]:
    """The patient, study and (original) series of a stored instance."""
    offset = str(ds.get("TimezoneOffsetFromUTC", "+0000"))
    tz = timezone((1 if offset[0] == "+" else -1)
                  * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    started = datetime.strptime(ds.StudyDate + ds.StudyTime[:6], "%Y%m%d%H%M%S")
    birth = datetime.strptime(ds.PatientBirthDate, "%Y%m%d").date() \
        if ds.PatientBirthDate else None
    site = ds.AnatomicRegionSequence[0].CodeValue if "AnatomicRegionSequence" in ds else None
    patient = PatientInfo(ds.PatientID, ds.IssuerOfPatientID, str(ds.PatientName), birth,
                          ds.PatientSex or None)
    study = StudyInfo(ds.StudyInstanceUID, started.replace(tzinfo=tz),
                      accession_number=ds.AccessionNumber,
                      admission_id=ds.get("AdmissionID"))
    series = SeriesInfo(ds.SeriesInstanceUID, 1, body_site(site) if site else None,
                        ds.ImageLaterality, ds.get("InstitutionalDepartmentName"))
    return patient, study, series


@cache
def normalized_jpeg(original: bytes, reduce: int = 1) -> PreparedPhoto:
    """A visibly different rendition of a photo (warmer, brighter) standing in for the colour
    step's output: the same pixel grid or ``reduce`` times smaller (as with
    ``EBIW_COLOR_MAX_PIXELS``), encoded once, sRGB (cached: tests reuse the photos)."""
    bgr = load_pixels(original, reduce=reduce).astype(np.float32)
    bgr = np.clip(bgr * np.array([0.85, 1.0, 1.2]) + 12, 0, 255).astype(np.uint8)
    jpeg = encode_jpeg(bgr)
    height, width = bgr.shape[:2]
    return PreparedPhoto(jpeg, width, height, PhotoInfo("image/jpeg", width, height), False)


def store_derived(app: Flask, study: StoredStudy, *, spacing_mm: float | None,
                  report: str, reduce: int = 1) -> StoredStudy:
    """Add a normalized DERIVED instance of every original, in series 2 of the study,
    ``reduce`` times smaller than it (``spacing_mm`` is the derived image's)."""
    svc = services(app)
    series_uid = uid_from_uuid(uuid.uuid4())
    pairs = []
    for number, original_uid in enumerate(study.originals, start=1):
        with svc.db.session() as db:
            row = db.get(Instance, original_uid)
            ds = pydicom.dcmread(svc.archive.path(row))
        patient, info, series = _context(ds)
        frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
        sop_uid = uid_from_uuid(uuid.uuid4())
        data = build_vl_photo(
            normalized_jpeg(frame, reduce), patient, info,
            SeriesInfo(series_uid, 2, series.body_site, series.laterality, series.department,
                       description="Colour-normalized photographs"),
            InstanceInfo(sop_uid, number, derivation=Derivation(original_uid, report),
                         pixel_spacing_mm=spacing_mm))
        with svc.db.session() as db:
            svc.archive.store(db, InstanceKey(study.study_uid, series_uid, sop_uid,
                                              VL_PHOTOGRAPHIC_IMAGE_STORAGE), data)
        pairs.append((sop_uid, original_uid))
    return StoredStudy(study.study_uid, study.original_series, study.originals, series_uid,
                       tuple(pairs))


def store_earlier_study(app: Flask, photo: bytes, started: datetime,
                        patient: dict[str, str] = PATIENT, site: str = FOREARM,
                        laterality: str = "L") -> StoredStudy:
    """An earlier study of one photo, built as intake builds originals but with its date."""
    svc = services(app)
    study_uid, series_uid, sop_uid = (uid_from_uuid(uuid.uuid4()) for _ in range(3))
    birth = datetime.strptime(patient["birth_date"], "%Y-%m-%d").date()
    data = build_vl_photo(
        prepare_for_dicom(photo),
        PatientInfo(patient["id"], patient["issuer"], patient["name"], birth, patient["sex"]),
        StudyInfo(study_uid, started),
        SeriesInfo(series_uid, 1, body_site(site), laterality, "Wound care",
                   description="Clinical photographs"),
        InstanceInfo(sop_uid, 1))
    with svc.db.session() as db:
        svc.archive.store(db, InstanceKey(study_uid, series_uid, sop_uid,
                                          VL_PHOTOGRAPHIC_IMAGE_STORAGE), data)
    return StoredStudy(study_uid, series_uid, [sop_uid])


def photo(name: str) -> bytes:
    return (CHARTS / name).read_bytes()


def size_of(image: bytes) -> tuple[int, int]:
    info = probe(image) if image[:3] == b"\xff\xd8\xff" else None
    if info is not None:
        return info.width, info.height
    decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_UNCHANGED)
    return decoded.shape[1], decoded.shape[0]


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    """The app served by a threaded werkzeug server on a free loopback port, its public URL
    (the base of Retrieve and bulk data URIs) set to that address; no access log, so that
    query strings (QIDO PatientID) reach no log."""
    with served(app, public_url=True) as url:
        yield url


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related body strictly by RFC 2046 (an independent check)."""
    params = dict(p.strip().split("=", 1) for p in content_type.split(";")[1:])
    marker = params["boundary"].strip('"').encode()
    assert body.startswith(b"--" + marker + b"\r\n"), "body must open with the boundary"
    assert body.endswith(b"\r\n--" + marker + b"--\r\n"), "body must close with the boundary"
    inner = body[len(marker) + 4:-(len(marker) + 8)]
    parts = []
    for chunk in inner.split(b"\r\n--" + marker + b"\r\n"):
        head, _, data = chunk.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((headers, data))
    return parts


@pytest.fixture
def chart_study(app: Flask, client: FlaskClient,
                auth: dict[str, dict[str, str]]) -> StoredStudy:
    """Two originals (the chart photo and a 12 MP iPhone photo) and their normalized images,
    with Pixel Spacing from the chart's ground truth."""
    study = upload_study(client, auth["capture"], [photo(CHART), photo(PHONE)])
    return store_derived(app, study, spacing_mm=chart_spacing_mm(),
                         report="Colour normalized on ColorChecker Classic: "
                                "ΔE2000 mean 1.9, max 4.2 (before: mean 11.3)")


def as_file(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


@pytest.fixture
def app_overrides() -> dict[str, object]:
    """These tests count instances per upload and build their own derived instances: the
    colour step (which adds a normalized instance per chart photo) is tested elsewhere."""
    return {"color_normalization": False}


@dataclass
class Viewing:
    """A study uploaded by the capture user for the view user to open in the viewer; the
    console and page errors of every page opened are collected in ``problems``."""

    study: StoredStudy
    url: str
    token: str
    problems: list[str] = field(default_factory=list)

    def open(self, browser: Any, device: dict[str, Any],
             ready: str = "body[data-ready=true]") -> Any:
        """A page of ``browser`` (as ``device``, CSP bypassed for axe), signed in, that has
        opened the study in the viewer and shows ``ready`` (by default: its main image)."""
        context = browser.new_context(**device, bypass_csp=True)
        context.add_init_script(f"sessionStorage.setItem('ebiw.token', {self.token!r})")
        page = context.new_page()
        page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.problems.append(str(e)))
        page.goto(self.url)
        page.wait_for_selector(ready, timeout=30_000)
        return page


def viewing(client: FlaskClient, auth: dict[str, dict[str, str]], live_server: str,
            photos: list[bytes]) -> Viewing:
    """``photos`` uploaded as one study, to be opened from ``live_server``."""
    study = upload_study(client, auth["capture"], photos)
    return Viewing(study, f"{live_server}/studies/{study.study_uid}",
                   auth["view"]["Authorization"].removeprefix("Bearer "))
