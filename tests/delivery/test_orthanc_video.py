"""A video clip reaches real Orthanc PACSs like a photo: over STOW-RS and C-STORE, once, the
encapsulated MP4 byte for byte."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import requests

from app.pipeline.dicom.video import VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
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
    session = d.open_session()
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
