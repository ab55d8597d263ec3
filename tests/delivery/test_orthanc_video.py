"""A video clip reaches real Orthanc PACSs like a photo: over STOW-RS and C-STORE, once, the
encapsulated MP4 byte for byte; a VP8 WebM once the worker has re-encoded it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import requests

from app.pipeline.dicom.video import VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
from app.workflow.delivery import REENCODE_QUEUE, DeliveryWorker
from tests.clips import make_clip
from tests.delivery.conftest import Deployment, Orthanc
from tests.delivery.test_orthanc import archived, frame_of


def test_a_clip_lands_once_over_stow_and_cstore(
        deploy: Callable[..., Deployment], orthancs: Callable[[], Orthanc],
        tmp_path: Path) -> None:
    a, b = orthancs().start(), orthancs().start()
    d = deploy([{"name": "pacs-a", "type": "stow-rs", "url": a.dicomweb},
                {"name": "pacs-b", "type": "c-store", "host": "127.0.0.1", "port": b.dicom,
                 "called_aet": "ORTHANC", "calling_aet": "EBIW-TEST"}])
    session = d.open_session(body_site="14975008", laterality="L")  # a clip needs its site
    clip = d.upload(session, make_clip(tmp_path / "clip.mp4", audio=True))
    sop, study = clip["sop_instance_uid"], session["study_instance_uid"]
    assert d.worker().drain() == 2
    assert {s.state for s in d.states(study)} == {"sent"}
    for pacs in (a, b):
        assert pacs.instances(study) == [sop]
        tags = pacs.tags(sop)
        assert (tags["SOPClassUID"], tags["NumberOfFrames"]) == (
            VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE, "45")
    mp4 = frame_of(archived(d, sop))
    assert mp4[4:8] == b"ftyp"
    for pacs in (a, b):
        stored = requests.get(
            f"{pacs.dicomweb}/studies/{study}/series/{clip['series_instance_uid']}"
            f"/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"; '
                               "transfer-syntax=*"}, timeout=30)
        assert stored.status_code == 200 and mp4 in stored.content  # the clip, byte for byte


def test_a_reencoded_webm_clip_lands_once_over_stow(
        deploy: Callable[..., Deployment], orthancs: Callable[[], Orthanc],
        tmp_path: Path) -> None:
    a = orthancs().start()
    d = deploy([{"name": "pacs-a", "type": "stow-rs", "url": a.dicomweb}])
    session = d.open_session(body_site="14975008", laterality="L")  # a clip needs its site
    upload = str(uuid.uuid4())
    response = d.client.put(
        f"/api/v1/sessions/{session['id']}/photos/{upload}",
        data=make_clip(tmp_path / "clip.webm").read_bytes(),
        headers={**d.headers["capture"], "Content-Type": "video/webm"})
    assert response.status_code == 202, response.get_json()
    sop, study = response.get_json()["sop_instance_uid"], session["study_instance_uid"]
    worker = DeliveryWorker(d.services.db, d.services.archive, d.registry,
                            jobs=d.services.worker_jobs())
    assert worker.drain() == 2  # the re-encode, then the delivery it queued
    assert {(s.destination, s.state) for s in d.states(study)} == {
        (REENCODE_QUEUE, "sent"), ("pacs-a", "sent")}
    assert a.instances(study) == [sop]
    tags = a.tags(sop)
    assert (tags["SOPClassUID"], tags["NumberOfFrames"]) == (
        VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE, "45")
    mp4 = frame_of(archived(d, sop))
    assert mp4[4:8] == b"ftyp" and a.frame(sop) == mp4  # the re-encoded MP4, byte for byte
