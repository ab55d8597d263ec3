"""Video clips on the photo upload endpoint: real clips encoded in the test (H.264 MP4 with
audio, HEVC QuickTime; VP8 WebM in test_video_reencode.py), the same idempotency as photos,
4xx and nothing stored for what we cannot take, and the clip in the study's ImagingStudy as
its own series."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import av
import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from pydicom.encaps import generate_fragments
from sqlalchemy import func, select

from app.db.models import AuditEvent, StagedClip
from app.gateways.emr.local import LocalFhirStore
from app.pipeline.dicom.video import VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
from app.pipeline.video import H264_HIGH_41, HEVC_MAIN_51
from app.workflow.intake import VIDEO_SERIES_NUMBER
from tests.clips import PHOTO, make_clip, upright_frame
from tests.conftest import dicom_validate, services
from tests.emr.conftest import notify
from tests.web.test_api import PHOTO as PHOTO_JPEG
from tests.web.test_api import counts, open_session

VIDEO_SOP_CLASS = f"urn:oid:{VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE}"


def _put(client: FlaskClient, headers: dict[str, str], session: str, data: bytes,
         content_type: str | None, upload: str | None = None) -> tuple[int, dict]:
    extra = {"Content-Type": content_type} if content_type is not None else {}
    response = client.put(f"/api/v1/sessions/{session}/photos/{upload or uuid.uuid4()}",
                          data=data, headers={**headers, **extra})
    return response.status_code, response.get_json()


def _stored(app: Flask, sop_uid: str) -> Path:
    return next(services(app).settings.archive_root.rglob(f"{sop_uid}.dcm"))


def test_an_h264_clip_is_stored_once_as_video_photographic(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", audio=True).read_bytes()
    session = open_session(client, auth["capture"])["id"]
    upload = str(uuid.uuid4())
    status, body = _put(client, auth["capture"], session, clip, "video/mp4", upload)
    assert status == 201, body
    assert (body["media_type"], body["width"], body["height"]) == ("video/mp4", 320, 240)
    assert body["passthrough"] is False  # its audio track was dropped
    again = _put(client, auth["capture"], session, clip, "video/mp4", upload)
    assert again == (200, body)
    other = make_clip(tmp_path / "other.mp4", frames=30).read_bytes()
    status, conflict = _put(client, auth["capture"], session, other, "video/mp4", upload)
    assert status == 409 and conflict["error"]["code"] == "conflict"
    assert counts(app) == (1, 1, 1)

    path = _stored(app, body["sop_instance_uid"])
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
    assert ds.file_meta.TransferSyntaxUID == H264_HIGH_41
    assert (ds.NumberOfFrames, ds.CineRate, ds.SeriesNumber) == (45, 30, VIDEO_SERIES_NUMBER)
    assert ds.SeriesDescription.startswith("Clinical video clips")
    assert (ds.PatientID, ds.StudyInstanceUID) == (
        "00123456", services(app).intake.get_session(session).study_uid)
    _, mp4 = generate_fragments(ds.PixelData)
    with av.open(io.BytesIO(mp4)) as stored:
        assert not stored.streams.audio and stored.streams.video[0].codec_context.name == "h264"
    errors, _, out = dicom_validate(path, iod="VideoPhotographicImage", decode=False)
    assert errors == 0, out


def test_an_hevc_quicktime_clip_with_curls_default_type_keeps_its_codec(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mov").read_bytes()
    session = open_session(client, auth["capture"])["id"]
    status, body = _put(client, auth["capture"], session, clip,
                        "application/x-www-form-urlencoded")
    assert status == 201, body
    assert body["media_type"] == "video/quicktime"
    ds = pydicom.dcmread(_stored(app, body["sop_instance_uid"]))
    assert ds.file_meta.TransferSyntaxUID == HEVC_MAIN_51 and ds.NumberOfFrames == 45


def test_what_we_cannot_take_is_4xx_and_stores_nothing(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    mp4 = make_clip(tmp_path / "clip.mp4", frames=60).read_bytes()
    session = open_session(client, auth["capture"])["id"]
    cases = [
        (mp4[:len(mp4) // 2], "video/mp4", 422, "unreadable_video"),  # truncated
        (b"\0\0\0\x18ftypmp42" + bytes(4000), "video/mp4", 422, "unreadable_video"),
        (mp4, "image/jpeg", 415, "unsupported_media_type"),  # a video declared as an image
        (PHOTO.read_bytes(), "video/mp4", 415, "unsupported_media_type"),  # and the reverse
    ]
    for data, content_type, status, code in cases:
        got, body = _put(client, auth["capture"], session, data, content_type)
        assert (got, body["error"]["code"]) == (status, code), (content_type, body)
    assert counts(app) == (0, 0, 0)


def test_a_clip_for_a_session_without_a_body_site_is_422_and_its_photo_is_stored(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    """DICOM requires a video's anatomic region (PS3.3 C.8.12.1) and has no code for an
    unknown one: the clip is refused with the reason (the PWA keeps it on the phone and shows
    it), nothing stored or staged; a still photo of the same session is stored and valid."""
    session = open_session(client, auth["capture"], body_site=None, laterality=None)["id"]
    for name, content_type in (("clip.mp4", "video/mp4"), ("clip.webm", "video/webm")):
        data = make_clip(tmp_path / name).read_bytes()
        status, body = _put(client, auth["capture"], session, data, content_type)
        assert (status, body["error"]["code"]) == (422, "body_site_required"), body
        assert "needs the capture's body site" in body["error"]["message"]
    with services(app).db.session() as db:
        assert db.scalar(select(func.count()).select_from(StagedClip)) == 0
    assert not (services(app).settings.data_dir / "staged-clips").exists() or not any(
        (services(app).settings.data_dir / "staged-clips").iterdir())
    assert counts(app) == (0, 0, 0)
    status, photo = _put(client, auth["capture"], session, PHOTO_JPEG, "image/jpeg")
    assert status == 201, photo
    errors, warnings, out = dicom_validate(_stored(app, photo["sop_instance_uid"]))
    assert (errors, warnings) == (0, 0), out


@pytest.mark.parametrize(("limits", "status", "message"), [
    ({"max_video_seconds": 1}, 413, "more than the 1 s allowed"),
    ({"max_upload_bytes": 4000}, 413, "the upload is too large"),
])
def test_clips_past_the_limits_are_413(tmp_path: Path, limits: dict, status: int,
                                       message: str) -> None:
    from app.factory import create_app
    from app.workflow.tokens import create_token

    small = create_app({"data_dir": tmp_path, "env": "test", **limits})
    services(small).db.create_schema()
    headers = {"Authorization": f"Bearer {create_token(services(small).db, 'n', 'capture')}"}
    client = small.test_client()
    session = open_session(client, headers)["id"]
    clip = make_clip(tmp_path / "clip.mp4", frames=60).read_bytes()
    got, body = _put(client, headers, session, clip, "video/mp4")
    assert got == status and message in body["error"]["message"]
    assert counts(small) == (0, 0, 0)


def test_the_clip_is_its_own_series_in_the_imaging_study(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    session = open_session(client, auth["capture"])["id"]
    photo = _put(client, auth["capture"], session, PHOTO.read_bytes(), "image/png")[1]
    video = _put(client, auth["capture"], session,
                 make_clip(tmp_path / "clip.mp4").read_bytes(), "video/mp4")[1]
    assert photo["series_instance_uid"] != video["series_instance_uid"]
    [store] = [n for n in services(app).registry.notifiers if isinstance(n, LocalFhirStore)]
    study_uid = services(app).intake.get_session(session).study_uid
    notify(app, store, study_uid)
    study = client.get(f"/fhir/ImagingStudy/{session}", headers=auth["view"]).get_json()
    by_uid = {s["uid"]: s for s in study["series"]}
    clips = by_uid[video["series_instance_uid"]]
    assert clips["number"] == VIDEO_SERIES_NUMBER and clips["bodySite"]["code"] == "14975008"
    assert clips["instance"] == [{"uid": video["sop_instance_uid"], "number": 2,
                                  "sopClass": {"system": "urn:ietf:rfc:3986",
                                               "code": VIDEO_SOP_CLASS}}]


def test_a_clip_is_never_the_prior_photo_guide(app: Flask, client: FlaskClient,
                                               auth: dict[str, dict[str, str]],
                                               tmp_path: Path) -> None:
    capture = auth["capture"]
    first = open_session(client, capture)["id"]
    photo = _put(client, capture, first, PHOTO.read_bytes(), "image/png")[1]
    later = open_session(client, capture, id=str(uuid.uuid4()))["id"]
    status, clip = _put(client, capture, later, make_clip(tmp_path / "clip.mp4").read_bytes(),
                        "video/mp4")
    assert status == 201
    answer = client.post("/api/v1/prior", headers=capture, json={
        "patient": {"id": "00123456", "issuer": "HOSP-A"}, "body_site": "14975008",
        "laterality": "L"})
    assert answer.status_code == 200 and answer.mimetype == "image/jpeg"
    with services(app).db.session() as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "prior.read")).one()
    shown = {photo["sop_instance_uid"], photo["normalized_sop_instance_uid"]}
    assert any(f"instance:{uid}" in event.entities for uid in shown if uid)
    assert f"instance:{clip['sop_instance_uid']}" not in event.entities


def test_wado_rs_renders_the_clip_as_mp4_and_its_first_picture_as_images(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4")
    session = open_session(client, auth["capture"])["id"]
    clip = _put(client, auth["capture"], session, source.read_bytes(), "video/mp4")[1]
    study = services(app).intake.get_session(session).study_uid
    url = (f"/dicomweb/studies/{study}/series/{clip['series_instance_uid']}"
           f"/instances/{clip['sop_instance_uid']}")
    view = auth["view"]

    moving = client.get(f"{url}/rendered", headers={**view, "Accept": "video/mp4"})
    assert moving.status_code == 200 and moving.mimetype == "video/mp4"
    assert moving.data == source.read_bytes()  # an MP4 with its video alone: as recorded
    with av.open(str(source)) as recorded:
        first = next(recorded.decode(video=0)).to_ndarray(format="rgb24").astype(float)

    still = client.get(f"{url}/rendered", headers={**view, "Accept": "image/jpeg"})
    assert still.status_code == 200 and still.mimetype == "image/jpeg"
    pixels = np.asarray(Image.open(io.BytesIO(still.data)).convert("RGB"), dtype=float)
    assert pixels.shape == first.shape and np.abs(pixels - first).mean() < 3.0

    thumbnail = client.get(f"{url}/thumbnail", headers={**view, "Accept": "*/*"})
    assert thumbnail.status_code == 200 and thumbnail.mimetype == "image/jpeg"
    assert Image.open(io.BytesIO(thumbnail.data)).size == (256, 192)
    png = client.get(f"{url}/rendered", headers={**view, "Accept": "image/png"})
    assert png.status_code == 200 and png.data.startswith(b"\x89PNG")


def test_a_portrait_phone_clip_plays_and_shows_upright(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    """An iPhone's portrait QuickTime (320×240 coded, display matrix -90°): the stored MP4
    keeps the matrix (plays upright), Rows/Columns are the coded 240×320, and the still and
    thumbnail the viewer shows are upright (portrait)."""
    source = make_clip(tmp_path / "portrait.mov", rotation=-90)
    session = open_session(client, auth["capture"])["id"]
    status, clip = _put(client, auth["capture"], session, source.read_bytes(),
                        "video/quicktime")
    assert status == 201, clip
    ds = pydicom.dcmread(_stored(app, clip["sop_instance_uid"]))
    assert (ds.Rows, ds.Columns) == (240, 320)
    study = services(app).intake.get_session(session).study_uid
    url = (f"/dicomweb/studies/{study}/series/{clip['series_instance_uid']}"
           f"/instances/{clip['sop_instance_uid']}")
    moving = client.get(f"{url}/rendered", headers={**auth["view"], "Accept": "video/mp4"})
    with av.open(io.BytesIO(moving.data)) as played:
        assert next(played.decode(video=0)).rotation == -90
    thumbnail = client.get(f"{url}/thumbnail", headers=auth["view"])
    assert Image.open(io.BytesIO(thumbnail.data)).size == (192, 256)
    still = client.get(f"{url}/rendered", headers={**auth["view"], "Accept": "image/png"})
    pixels = np.asarray(Image.open(io.BytesIO(still.data)).convert("RGB"), dtype=float)
    assert np.abs(pixels - upright_frame((240, 320)).astype(float)).mean() < 6.0
