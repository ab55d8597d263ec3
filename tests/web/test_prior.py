"""POST /api/v1/prior: the latest earlier photo of a patient's body site, rendered for the
camera overlay (issue 16) — found for a repeat patient and site, nothing for a new one, the
colour-normalized instance preferred, sensitive photos only for a sensitive capture, no PHI in
URLs or logs, audited."""

from __future__ import annotations

import io
import logging
import uuid
from datetime import UTC, datetime

import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select

from app.db.models import AuditEvent, Instance, Photo
from app.pipeline.render import render_frame
from app.workflow.tokens import Caller
from tests.conftest import BARCODES, CHARTS, services
from tests.web.test_api import OTHER, PHOTO, SESSION_BODY, open_session

PRIOR = "/api/v1/prior"
NO_CHART = (CHARTS / "karnehen_cam2_nochart.jpg").read_bytes()
WRISTBAND = (BARCODES / "zx_code128-2_05.png").read_bytes()
FOREARM = SESSION_BODY["body_site"]
ASK = {"patient": {"id": "00123456", "issuer": "HOSP-A"}, "body_site": FOREARM,
       "laterality": "L"}


def upload(client: FlaskClient, headers: dict[str, str], session_id: str,
           data: bytes = PHOTO) -> dict:
    put = client.put(f"/api/v1/sessions/{session_id}/photos/{uuid.uuid4()}", data=data,
                     headers={**headers, "Content-Type": "image/jpeg"})
    assert put.status_code == 201, put.get_json()
    return put.get_json()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)


def rendered_instance(app: Flask, sop_uid: str, size: tuple[int, int]) -> np.ndarray:
    """The stored instance's frame rendered at ``size`` through the viewer's renderer."""
    with services(app).db.session() as db:
        row = db.get(Instance, sop_uid)
        assert row is not None
        path = services(app).settings.archive_root / row.path
    ds = pydicom.dcmread(path)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    return pixels(render_frame(frame, box=size, icc_profile=ds.get("ICCProfile"),
                               to_srgb=True).data)


def test_prior_of_a_repeat_patient_and_site_is_the_normalized_photo_for_the_phone(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    capture = auth["capture"]
    session = open_session(client, capture)
    photo = upload(client, capture, session["id"])
    assert photo["normalized_sop_instance_uid"] and photo["pixel_spacing_mm"]

    answer = client.post(PRIOR, json=ASK, headers=capture)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.content_type == "image/jpeg"
    assert answer.headers["Cache-Control"] == "no-store"
    image = Image.open(io.BytesIO(answer.data))
    assert image.format == "JPEG" and max(image.size) == 1280  # 4032×3024 fitted for a phone
    assert image.size == (1280, 960)
    assert answer.headers["X-Prior-Normalized"] == "true"
    assert answer.headers["X-Prior-Body-Site"] == FOREARM
    assert answer.headers["X-Prior-Laterality"] == "L"
    # px/mm at the rendered size: the photo's spacing scaled from 4032 px to 1280 px
    expected = (1280 / photo["width"]) / photo["pixel_spacing_mm"]
    assert float(answer.headers["X-Prior-Px-Per-Mm"]) == pytest.approx(expected, rel=1e-3)
    taken = datetime.fromisoformat(answer.headers["X-Prior-Taken"])
    assert taken.tzinfo is not None and taken <= datetime.now(UTC)

    # the pixels are the colour-normalized instance's, not the original's
    got = pixels(answer.data)
    normalized = rendered_instance(app, photo["normalized_sop_instance_uid"], image.size)
    original = rendered_instance(app, photo["sop_instance_uid"], image.size)
    to_normalized = np.abs(got - normalized).mean()
    assert to_normalized < 3.0
    assert np.abs(got - original).mean() > 2 * to_normalized

    with services(app).db.session() as db:
        [event] = db.scalars(select(AuditEvent).where(AuditEvent.action == "prior.read"))
    assert event.outcome == "success" and event.actor == "capture-user"
    assert set(event.entities) == {"patient:HOSP-A|00123456",
                                   f"study:{session['study_instance_uid']}",
                                   f"instance:{photo['normalized_sop_instance_uid']}"}
    assert "00123456" not in caplog.text and "HOSP-A" not in caplog.text


def test_nothing_for_a_new_site_patient_side_or_the_drafts_own_session(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    capture = auth["capture"]
    session = open_session(client, capture)
    upload(client, capture, session["id"], NO_CHART)
    assert client.post(PRIOR, json=ASK, headers=capture).status_code == 200
    asks = {"new site": {**ASK, "body_site": "69536005", "laterality": None},  # head
            "new patient": {**ASK, "patient": {"id": "00999999", "issuer": "HOSP-A"}},
            "other issuer": {**ASK, "patient": {"id": "00123456", "issuer": "HOSP-B"}},
            "other side": {**ASK, "laterality": "R"},
            "own session": {**ASK, "exclude_session": session["id"]}}
    for why, body in asks.items():
        answer = client.post(PRIOR, json=body, headers=capture)
        assert answer.status_code == 204, why
        assert answer.data == b"" and answer.headers["Cache-Control"] == "no-store"
    with services(app).db.session() as db:
        events = list(db.scalars(select(AuditEvent).where(AuditEvent.action == "prior.read")))
    assert len(events) == 1 + len(asks)
    assert events[-1].entities == ["patient:HOSP-A|00123456"]  # asked about; nothing shown


def test_the_latest_clinical_photo_without_a_chart_is_the_original_without_scale(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    capture = auth["capture"]
    first = open_session(client, capture)
    upload(client, capture, first["id"], OTHER)
    second = open_session(client, capture, id=str(uuid.uuid4()))
    latest = upload(client, capture, second["id"], NO_CHART)
    assert latest["normalized_sop_instance_uid"] is None
    # a wristband frame stored after it in the same session is no prior
    label, _ = services(app).intake.accept_photo(second["id"], str(uuid.uuid4()), WRISTBAND,
                                                 label=True)
    with services(app).db.session() as db:
        assert db.get(Photo, label.upload_uuid) is not None

    answer = client.post(PRIOR, json=ASK, headers=capture)
    assert answer.status_code == 200
    assert answer.headers["X-Prior-Normalized"] == "false"
    assert "X-Prior-Px-Per-Mm" not in answer.headers
    shown = rendered_instance(app, latest["sop_instance_uid"],
                              Image.open(io.BytesIO(answer.data)).size)
    assert np.abs(pixels(answer.data) - shown).mean() < 3.0
    with services(app).db.session() as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "prior.read")).one()
    assert f"instance:{latest['sop_instance_uid']}" in event.entities
    # the draft's own session excluded: the first session's photo is the prior
    earlier = client.post(PRIOR, json={**ASK, "exclude_session": second["id"]},
                          headers=capture)
    assert earlier.status_code == 200 and earlier.headers["X-Prior-Normalized"] == "true"


def test_sensitive_photos_only_for_a_sensitive_capture_and_only_the_callers_patient(
        client: FlaskClient, auth: dict[str, dict[str, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    capture = auth["capture"]
    session = open_session(client, capture, sensitive=True)
    upload(client, capture, session["id"], NO_CHART)
    assert client.post(PRIOR, json=ASK, headers=capture).status_code == 204
    assert client.post(PRIOR, json={**ASK, "sensitive": False},
                       headers=capture).status_code == 204
    shown = client.post(PRIOR, json={**ASK, "sensitive": True}, headers=capture)
    assert shown.status_code == 200 and shown.headers["Cache-Control"] == "no-store"
    # capture and admin roles only; a session launched from the EMR sees its patient only
    assert client.post(PRIOR, json=ASK, headers=auth["view"]).status_code == 403
    assert client.post(PRIOR, json={**ASK, "sensitive": True},
                       headers=auth["admin"]).status_code == 200
    assert client.post(PRIOR, json=ASK).status_code == 401
    launched = Caller("launched-user", "capture", patient=("HOSP-A", "00999999"))
    monkeypatch.setattr("app.web.auth.current_caller", lambda: launched)
    other = client.post(PRIOR, json={**ASK, "sensitive": True}, headers=capture)
    assert other.status_code == 403
    assert other.get_json()["error"]["code"] == "other_patient"
    assert "00123456" not in other.get_data(as_text=True)


def test_bad_requests_are_refused_with_a_clear_message_naming_no_phi(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    capture = auth["capture"]
    cases = {
        "body_site must be a SNOMED CT code": {**ASK, "body_site": "not-a-site"},
        "body_site is required": {"patient": ASK["patient"]},
        "patient is required": {"body_site": FOREARM, "laterality": "L"},
        "patient.id": {**ASK, "patient": {"issuer": "HOSP-A"}},
        "laterality (R, L or B) is required": {**ASK, "laterality": None},
        "laterality must be": {**ASK, "laterality": "X"},
        "exclude_session must be a UUID": {**ASK, "exclude_session": "00123456"},
        "sensitive must be true or false": {**ASK, "sensitive": "yes"},
    }
    for message, body in cases.items():
        answer = client.post(PRIOR, json=body, headers=capture)
        assert answer.status_code == 422, message
        error = answer.get_json()["error"]
        assert message in error["message"], error
        assert "00123456" not in error["message"]
    not_json = client.post(PRIOR, data=b"\xff", headers={**capture,
                                                          "Content-Type": "image/jpeg"})
    assert not_json.status_code == 422
    assert not_json.get_json()["error"]["message"] == "the body must be a JSON object"
