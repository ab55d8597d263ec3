"""Video clips in a batch: an Android H.264 ``.mp4`` (with its AAC sound) and an iPhone HEVC
``.mov``, made in the test (tests/clips.py), are held with the photos, sorted into the group of
the label before them (they have no capture time: file order), stored at confirmation as Video
Photographic Images in the group's study (series 6, numbered in capture order, queued for the
PACS), never twice, and only with a body site (DICOM requires a video's anatomic region); a VP8
WebM is refused on arrival and nothing is held; ``ebiw import``'s code takes a clip from a
folder and holds its group for a body site."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pydicom
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.db.models import BatchItem, Delivery, Instance, Photo
from app.pipeline.dicom.video import VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
from app.pipeline.video import H264_HIGH_41, HEVC_MAIN_51
from app.workflow.batch import build_batches
from app.workflow.batch.common import ImportStatus
from app.workflow.batch.importer import import_files
from app.workflow.intake import VIDEO_SERIES_NUMBER
from tests.batch.conftest import ISSUER, import_patients, label, lesion, upload_uuid_for
from tests.batch.test_api import app_overrides, groups_by_mrn, rows  # noqa: F401 (fixture)
from tests.clips import make_clip
from tests.conftest import dicom_validate, services

PATIENT_A = "15182881"
FOREARM = "14975008"


def _put(client: FlaskClient, headers: dict[str, str], batch_id: str, data: bytes,
         order: int, content_type: str) -> tuple[int, dict]:
    upload = upload_uuid_for(batch_id, hashlib.sha256(data).hexdigest())
    answer = client.put(f"/api/v1/batches/{batch_id}/items/{upload}?order={order}", data=data,
                        headers={**headers, "Content-Type": content_type})
    return answer.status_code, answer.get_json()


def test_clips_are_held_sorted_and_stored_as_clips_of_their_group(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    import_patients(app, tmp_path)
    capture = auth["capture"]
    batch_id = client.post("/api/v1/batches", json={}, headers=capture).get_json()["id"]
    android = make_clip(tmp_path / "VID_20240501_101500.mp4", audio=True).read_bytes()
    iphone = make_clip(tmp_path / "img_0412.mov", frames=30).read_bytes()
    webm = make_clip(tmp_path / "recording.webm").read_bytes()
    files = [(label("zx_code128-2_05.png", 1, PATIENT_A).data, "image/jpeg"),
             (lesion(2, 2, PATIENT_A).data, "image/jpeg"),
             (android, "video/mp4"), (iphone, "video/quicktime")]
    uploads = []
    for order, (data, content_type) in enumerate(files):
        status, body = _put(client, capture, batch_id, data, order, content_type)
        assert status == 201, body
        uploads.append(body["upload_uuid"])
    assert [body["media_type"] for body in
            [_put(client, capture, batch_id, android, 2, "video/mp4")[1],
             _put(client, capture, batch_id, iphone, 3, "application/octet-stream")[1]]] == [
        "video/mp4", "video/quicktime"]  # again (or as generic bytes): the same items

    status, refused = _put(client, capture, batch_id, webm, 4, "video/webm")
    assert status == 415 and refused["error"]["code"] == "unsupported_video"
    assert rows(app, BatchItem) == 4  # the WebM is not held

    batch = client.get(f"/api/v1/batches/{batch_id}", headers=capture).get_json()
    assert groups_by_mrn(batch) == {PATIENT_A: uploads, None: []}
    items = {i["upload_uuid"]: i for i in batch["items"]}
    assert [(items[u]["role"], items[u]["barcode"]) for u in uploads[2:]] == [
        ("clinical", False), ("clinical", False)]
    as_label = client.patch(f"/api/v1/batches/{batch_id}/items/{uploads[2]}",
                            json={"role": "label"}, headers=capture)
    assert as_label.status_code == 422 and "clip" in as_label.get_json()["error"]["message"]

    group_id = next(g["id"] for g in batch["groups"] if g["identifier"]["mrn"] == PATIENT_A)
    before = (rows(app, Photo), rows(app, Instance), rows(app, Delivery))
    no_site = client.post(f"/api/v1/batches/{batch_id}/groups/{group_id}/confirm",
                          json={}, headers=capture)  # a clip's Anatomic Region is required
    assert no_site.status_code == 422, no_site.get_json()
    assert no_site.get_json()["error"]["code"] == "body_site_required"
    assert "holds a video clip" in no_site.get_json()["error"]["message"]
    assert (rows(app, Photo), rows(app, Instance), rows(app, Delivery)) == before
    confirmed = client.post(f"/api/v1/batches/{batch_id}/groups/{group_id}/confirm",
                            json={"body_site": FOREARM, "laterality": "L"}, headers=capture)
    assert confirmed.status_code == 200, confirmed.get_json()
    group = confirmed.get_json()
    assert group["counts"] == {"held": 0, "stored": 4, "skipped": 0, "dropped": 0}

    archive = services(app).archive
    with services(app).db.session() as db:
        photos = {p.upload_uuid: p for p in db.scalars(select(Photo))}
        clips = [db.get(Instance, photos[u].sop_uid) for u in uploads[2:]]
        pacs = {d.sop_uid for d in db.scalars(select(Delivery)) if d.kind == "pacs"}
        stored = [archive.read(row) for row in clips if row is not None]
    headers = [pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True) for data in stored]
    assert [photos[u].instance_number for u in uploads] == sorted(
        photos[u].instance_number for u in uploads)  # numbered in capture order
    assert [(ds.SOPClassUID, int(ds.SeriesNumber), ds.file_meta.TransferSyntaxUID,
             int(ds.NumberOfFrames), ds.PatientID, ds.StudyInstanceUID) for ds in headers] == [
        (VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE, VIDEO_SERIES_NUMBER, H264_HIGH_41, 45, PATIENT_A,
         group["study_instance_uid"]),
        (VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE, VIDEO_SERIES_NUMBER, HEVC_MAIN_51, 30, PATIENT_A,
         group["study_instance_uid"])]
    assert [(ds.AnatomicRegionSequence[0].CodeValue, ds.ImageLaterality)
            for ds in headers] == [(FOREARM, "L")] * 2
    (tmp_path / "android.dcm").write_bytes(stored[0])
    errors, _, out = dicom_validate(tmp_path / "android.dcm", iod="VideoPhotographicImage",
                                    decode=False)
    assert errors == 0, out
    assert [photos[u].media_type for u in uploads[2:]] == ["video/mp4", "video/quicktime"]
    assert {ds.SOPInstanceUID for ds in headers} <= pacs  # queued for the PACS

    before = (rows(app, Photo), rows(app, Instance), rows(app, Delivery))
    again = client.post(f"/api/v1/batches/{batch_id}/groups/{group_id}/confirm",
                        json={}, headers=capture)
    assert again.status_code == 200
    assert (rows(app, Photo), rows(app, Instance), rows(app, Delivery)) == before
    staged = services(app).settings.data_dir / "batches" / batch_id
    assert not staged.exists() or not any(staged.iterdir())


def test_the_import_command_takes_clips_from_a_folder(app: Flask, tmp_path: Path) -> None:
    folder = tmp_path / "visit"
    folder.mkdir()
    (folder / "01-lesion.jpg").write_bytes(lesion(1, 0, None).data)
    make_clip(folder / "02-depth.mp4")
    make_clip(folder / "03-gait.mov", frames=30)
    (folder / "04-broken.mp4").write_bytes(make_clip(tmp_path / "whole.mp4").read_bytes()[:3000])
    svc = services(app)
    batches = build_batches(svc.db, svc.settings, svc.intake)
    files = sorted(folder.iterdir())

    report = import_files(batches, files, user="importer", patient=(PATIENT_A, ISSUER))
    status = {Path(f["file"]).name: f["status"] for f in report.files}
    assert status == {"01-lesion.jpg": ImportStatus.UNSORTED,
                      "02-depth.mp4": ImportStatus.UNSORTED, "03-gait.mov": ImportStatus.UNSORTED,
                      "04-broken.mp4": ImportStatus.FAILED}
    broken = next(f for f in report.files if f["file"].endswith("04-broken.mp4"))
    assert "video" in broken["reason"] or "clip" in broken["reason"], broken
    # The import gives no body site, which a clip needs: its group waits, held, for the
    # batch review, the reason in the report; nothing is stored.
    held = next(f for f in report.files if f["file"].endswith("02-depth.mp4"))
    assert "holds a video clip, which needs a body site" in held["reason"], held
    assert rows(app, Instance) == 0
    [group] = [g for g in batches.view(report.batch_id, owner=None).groups if g.held]
    batches.confirm(report.batch_id, group.row.id, {"body_site": FOREARM, "laterality": "R"},
                    user="reviewer", owner=None)
    with svc.db.session() as db:
        clips = [row for row in db.scalars(select(Instance))
                 if row.sop_class_uid == VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE]
    assert len(clips) == 2

    before = (rows(app, Photo), rows(app, Instance), rows(app, Delivery))
    again = import_files(batches, files, user="importer", patient=(PATIENT_A, ISSUER))
    assert [f["status"] for f in again.files] == [ImportStatus.STORED] * 3 + [
        ImportStatus.FAILED]
    assert (rows(app, Photo), rows(app, Instance), rows(app, Delivery)) == before
