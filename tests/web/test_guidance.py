"""POST /api/v1/guidance: live guidance on preview frames made from the real chart photos, its
refusals, its rate limit, and that a frame leaves nothing behind; the quality record of stored
photos in the upload answer."""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.pipeline.decode import encode_jpeg
from app.pipeline.quality import CHECK_IDS, MAX_FRAME_BYTES, TEXTS
from tests.conftest import CHARTS, log_in, services
from tests.security.conftest import away_from_window_edge
from tests.web.test_api import PHOTO, counts, open_session

URL = "/api/v1/guidance"
SECRET = b"DOE^JANE 00123456"  # a name and MRN hidden in the frame's JPEG comment


def frame_of(name: str, side: int = 640, *, blur: float = 0.0) -> bytes:
    """A preview frame of a shared photo: reduced to ``side`` px, JPEG with a COM segment."""
    bgr = cv2.imread(str(CHARTS / name))
    scale = side / max(bgr.shape[:2])
    small = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    if blur:
        small = cv2.GaussianBlur(small, (0, 0), blur)
    jpeg = encode_jpeg(small)
    return jpeg[:2] + b"\xff\xfe" + (len(SECRET) + 2).to_bytes(2, "big") + SECRET + jpeg[2:]


def post(client: FlaskClient, headers: dict[str, str], data: bytes, *,
         content_type: str = "image/jpeg", query: str = "") -> object:
    return client.post(URL + query, data=data, headers={**headers, "Content-Type": content_type})


def files_under(root: Path) -> set[tuple[str, int]]:
    return {(str(p), p.stat().st_size) for p in root.rglob("*")
            if p.is_file() and "sqlite" not in p.name}


def test_a_chart_frame_gets_every_check_and_leaves_nothing_behind(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    data_dir = services(app).settings.data_dir
    before_files, before_rows = files_under(data_dir), counts(app)
    response = post(client, auth["capture"], frame_of("jtvd_mini_05.jpg"),
                    query="?photo_width=1530")
    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Server-Timing"].startswith("app;dur=")
    body = response.get_json()
    assert set(body) == {"ok", "advice", "checks", "chart"}
    assert [c["id"] for c in body["checks"]] == list(CHECK_IDS)
    assert all(set(c) == {"id", "ok", "value", "text"} for c in body["checks"])
    assert body["chart"]["found"] is True and body["chart"]["type"] == "mini24"
    assert body["chart"]["px_per_mm"] == pytest.approx(8.6, abs=0.4)  # at photo resolution
    assert 5 < body["chart"]["tilt_deg"] < 25
    assert body["ok"] is True and body["advice"] == TEXTS["all_ok"]
    # nothing stored: no rows, no files; nothing of the frame in any log record
    assert counts(app) == before_rows == (0, 0, 0)
    assert files_under(data_dir) == before_files
    assert "DOE" not in caplog.text and "00123456" not in caplog.text
    assert SECRET.decode() not in response.get_data(as_text=True)


def test_photo_width_scales_px_per_mm_and_defaults_to_the_frame(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    frame = frame_of("jtvd_mini_05.jpg")
    own = post(client, auth["capture"], frame).get_json()["chart"]["px_per_mm"]
    photo = post(client, auth["capture"], frame, query="?photo_width=1530").get_json()
    assert photo["chart"]["px_per_mm"] == pytest.approx(own * 1530 / 480, rel=0.01)
    distance = next(c for c in photo["checks"] if c["id"] == "distance")
    assert distance["ok"] is True and own < 5  # too far for a 480 px photo, fine at 1530
    bad = post(client, auth["capture"], frame, query="?photo_width=abc")
    assert bad.status_code == 422 and "photo_width" in bad.get_json()["error"]["message"]


def test_no_chart_and_blurred_frames_say_so(client: FlaskClient,
                                            auth: dict[str, dict[str, str]]) -> None:
    none = post(client, auth["capture"], frame_of("karnehen_cam2_nochart.jpg")).get_json()
    assert none["chart"]["found"] is False and none["ok"] is False
    assert none["advice"] == TEXTS["chart_missing"]
    assert [c["ok"] for c in none["checks"]][:3] == [False, None, None]
    blurred = post(client, auth["capture"],
                   frame_of("oycq_data_iphone.jpg", blur=3)).get_json()
    sharpness = next(c for c in blurred["checks"] if c["id"] == "sharpness")
    assert sharpness["ok"] is False and sharpness["text"] == TEXTS["sharpness_bad"]
    sharp = post(client, auth["capture"], frame_of("oycq_data_iphone.jpg")).get_json()
    assert next(c for c in sharp["checks"] if c["id"] == "sharpness")["ok"] is True


def test_bad_frames_are_refused_with_a_clear_status(client: FlaskClient,
                                                   auth: dict[str, dict[str, str]]) -> None:
    text = post(client, auth["capture"], b"hello", content_type="text/plain")
    assert text.status_code == 415 and text.get_json()["error"]["code"] == \
        "unsupported_media_type"
    lying = post(client, auth["capture"], b"hello, not a JPEG")
    assert lying.status_code == 415
    heic = post(client, auth["capture"], b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64,
                content_type="image/heic")
    assert heic.status_code == 415
    big = post(client, auth["capture"], b"\xff\xd8\xff" + b"\x00" * MAX_FRAME_BYTES)
    assert big.status_code == 413 and big.get_json()["error"]["code"] == \
        "request_entity_too_large"
    large = post(client, auth["capture"], frame_of("jtvd_mini_05.jpg", 800))
    assert large.status_code == 422 and "640" in large.get_json()["error"]["message"]
    broken = post(client, auth["capture"], b"\xff\xd8\xff\xe0" + b"\x00" * 200)
    assert broken.status_code == 422
    png = cv2.imencode(".png", np.zeros((10, 10, 3), np.uint8))[1].tobytes()
    assert post(client, auth["capture"], png, content_type="image/png").status_code == 200


def test_only_capture_accounts_and_csrf_protected_cookies(
        client: FlaskClient, auth: dict[str, dict[str, str]], users: dict[str, str]) -> None:
    frame = frame_of("jtvd_mini_05.jpg")
    assert post(client, {}, frame).status_code == 401
    assert post(client, auth["view"], frame).status_code == 403
    token = log_in(client, users["capture"])
    assert post(client, {}, frame).status_code == 403  # cookie without the CSRF token
    assert post(client, {"X-CSRF-Token": token}, frame).status_code == 200


@pytest.mark.parametrize("app_overrides", [{"rate_guidance_per_10s": 3}])
def test_a_burst_over_the_limit_gets_429_with_retry_after(
        client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    away_from_window_edge(10, 4)
    frame = frame_of("karnehen_cam2_nochart.jpg", 320)
    statuses = [post(client, auth["capture"], frame) for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    refused = statuses[-1]
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 10
    assert post(client, auth["admin"], frame).status_code == 200  # another user's budget


def test_the_upload_answer_carries_the_photos_quality_record(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    session = open_session(client, auth["capture"])
    put = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}", data=PHOTO,
                     headers={**auth["capture"], "Content-Type": "image/jpeg"})
    assert put.status_code == 201, put.get_json()
    body = put.get_json()
    quality = body["quality"]
    assert [c["id"] for c in quality["checks"]] == list(CHECK_IDS)
    assert quality["chart"]["found"] and quality["chart"]["type"] == "classic24"
    # the same chart as the colour report: px per mm is 1 / the pixel spacing
    assert quality["chart"]["px_per_mm"] == pytest.approx(1 / body["pixel_spacing_mm"],
                                                          rel=0.01)
    sharpness = next(c for c in quality["checks"] if c["id"] == "sharpness")
    assert sharpness["ok"] is True and sharpness["value"] > 15
    again = client.get(f"/api/v1/sessions/{session['id']}", headers=auth["capture"])
    assert again.get_json()["photos"][0]["quality"] == quality


def test_the_study_page_shows_each_photos_quality_to_a_logged_in_user(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        users: dict[str, str]) -> None:
    session = open_session(client, auth["capture"])
    for data in (PHOTO, encode_jpeg(cv2.GaussianBlur(cv2.imread(str(CHARTS / "sio_classic.jpg")),
                                                     (0, 0), 4))):
        put = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}", data=data,
                         headers={**auth["capture"], "Content-Type": "image/jpeg"})
        assert put.status_code == 201
    page = f"/studies/{session['study_instance_uid']}"
    assert "Photo quality" not in client.get(page).get_data(as_text=True)  # nobody logged in
    log_in(client, users["view"])
    html = client.get(page).get_data(as_text=True)
    lines = [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", li)).strip()
             for li in re.findall(r"<li>Photo \d+:.*?</li>", html, re.S)]
    assert len(lines) == 2
    sharp, blurred = lines
    assert re.fullmatch(r"Photo 1: Sharp · exposure ok · chart found · tilt \d+° · "
                        r"\d+\.\d px/mm", sharp), sharp
    assert blurred.startswith("Photo 2: ✗ failed: Blurry · "), blurred
    assert "DEMO" not in "".join(lines) and "00123456" not in "".join(lines)
