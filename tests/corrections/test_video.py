"""Video clips in corrections: a rejected clip is referenced by the rejection note (with its
Video Photographic Image SOP class) and hidden; a study holding a clip moves to the right
patient as a corrected copy that is still a valid Video Photographic Image, the MP4 byte for
byte, which the PACS (Orthanc) receives."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import astuple
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.encaps import generate_frames
from sqlalchemy import func, select

from app.db.models import CaptureSession, Delivery, Instance, Photo, StagedClip
from app.pipeline.dicom.uids import derived_uuid, uid_from_uuid
from app.pipeline.dicom.video import VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
from app.workflow import intake
from app.workflow.corrections import move_to_patient
from app.workflow.delivery import REENCODE_QUEUE, utcnow
from tests.clips import make_clip
from tests.conftest import dicom_validate
from tests.corrections.conftest import (
    add_patient,
    archived,
    ebiw,
    job_worker,
    stage_clip,
    validate_kos,
)
from tests.delivery.conftest import NOCHART, Deployment, Orthanc

RIGHT = ("00234567", "HOSP-A")


def mp4(ds: Dataset) -> bytes:
    """The encapsulated MP4 (one fragment, the whole clip)."""
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def valid_video(d: Deployment, sop_uid: str, path: Path) -> tuple[int, str]:
    """dciodvfy's error count and report on an archived instance as a Video Photographic
    Image (not decoded: DCMTK decodes no video)."""
    row, _ = archived(d, sop_uid)
    path.write_bytes(d.services.archive.read(row))
    errors, _warnings, out = dicom_validate(path, iod="VideoPhotographicImage", decode=False)
    return errors, out


def kos_references(kos: Dataset) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of every instance the note references."""
    return {str(item.ReferencedSOPInstanceUID): str(item.ReferencedSOPClassUID)
            for study in kos.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence}


def test_rejecting_a_clip(deploy: Callable[..., Deployment], orthancs: Callable[[], Orthanc],
                          tmp_path: Path) -> None:
    pacs = orthancs().start()
    d = deploy([{"name": "pacs", "type": "stow-rs", "url": pacs.dicomweb}])
    session = d.open_session(body_site="14975008", laterality="L")  # a clip needs its site
    study = session["study_instance_uid"]
    clip = d.upload(session, make_clip(tmp_path / "clip.mp4"))["sop_instance_uid"]
    d.worker().drain()
    assert pacs.instances(study) == [clip]

    result = ebiw(d, "correct", "reject", "--instance", clip, "--reason", "quality")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["rejected"] == [clip]
    _, kos = archived(d, out["kos_sop_instance_uid"])
    assert kos_references(kos) == {clip: VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE}
    (tmp_path / "kos.dcm").write_bytes(d.services.archive.read(
        archived(d, out["kos_sop_instance_uid"])[0]))
    report = validate_kos(tmp_path / "kos.dcm")
    assert "TOTAL errors=0" in report, report
    admin = d.headers["admin"]
    found = d.client.get(f"/dicomweb/studies/{study}/instances", headers=admin).get_json()
    assert [i["00080018"]["Value"][0] for i in found] == [out["kos_sop_instance_uid"]]
    series = archived(d, clip)[0].series_uid
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{clip}"
    assert d.client.get(f"{base}/rendered", headers=admin).status_code == 404
    d.worker().drain()
    assert sorted(pacs.instances(study)) == sorted([clip, out["kos_sop_instance_uid"]])


def test_moving_a_study_holding_a_clip(deploy: Callable[..., Deployment],
                                       orthancs: Callable[[], Orthanc], tmp_path: Path) -> None:
    pacs = orthancs().start()
    d = deploy([{"name": "pacs", "type": "stow-rs", "url": pacs.dicomweb}])
    add_patient(d, *RIGHT, "RIGHT", "BOB")
    session = d.open_session(encounter="ENC1001", body_site="14975008", laterality="L")
    old_study = session["study_instance_uid"]
    clip = d.upload(session, make_clip(tmp_path / "clip.mp4", audio=True))["sop_instance_uid"]
    photo = d.upload(session, NOCHART)["sop_instance_uid"]

    result = ebiw(d, "correct", "patient", "--study", old_study, "--patient-id", RIGHT[0],
                  "--issuer", RIGHT[1], "--reason", "wrong wristband")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    new_study, copy = out["new_study_instance_uid"], out["copies"][clip]
    assert sorted(out["rejected"]) == sorted([clip, photo])

    _, before = archived(d, clip)
    _, after = archived(d, copy)
    assert after.SOPClassUID == before.SOPClassUID == VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
    assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    assert (after.PatientID, after.IssuerOfPatientID, str(after.PatientName)) == \
        (*RIGHT, "RIGHT^BOB")
    assert (after.StudyInstanceUID, after.SOPInstanceUID) == (new_study, copy)
    # The copy is in the new session's own video series, as if captured there.
    with d.services.db.session() as db:
        new_session = db.scalar(select(CaptureSession.id).where(
            CaptureSession.study_uid == new_study))
    assert new_session is not None
    video_series = uid_from_uuid(derived_uuid(new_session, "series:video"),
                                 d.services.settings.uid_prefix)
    assert (after.SeriesInstanceUID, after.SeriesNumber) == (video_series, 6)
    assert "AdmissionID" not in after and before.AdmissionID == "ENC1001"
    assert (after.NumberOfFrames, after.FrameTime) == (before.NumberOfFrames, before.FrameTime)
    assert mp4(after) == mp4(before)  # the clip byte for byte
    assert valid_video(d, clip, tmp_path / "original.dcm")[0] == 0
    errors, report = valid_video(d, copy, tmp_path / "copy.dcm")
    assert errors == 0, report
    assert after.AnatomicRegionSequence[0].CodeValue == "14975008"

    _, kos = archived(d, out["kos_sop_instance_uid"])
    assert kos_references(kos)[clip] == VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
    d.worker().drain()
    assert copy in pacs.instances(new_study)
    assert pacs.tags(copy)["PatientID"] == RIGHT[0]
    assert pacs.frame(copy) == mp4(after)


def test_a_clip_still_waiting_for_its_reencode_follows_the_moved_study(
        deploy: Callable[..., Deployment], tmp_path: Path) -> None:
    """A VP8 WebM accepted (202, staged) before its study moves to another patient is stored,
    once the worker re-encodes it, in the new patient's study and never in the wrong one."""
    d = deploy([])
    add_patient(d, *RIGHT, "RIGHT", "BOB")
    old_study, clip = astuple(stage_clip(d, tmp_path))

    result = ebiw(d, "correct", "patient", "--study", old_study, "--patient-id", RIGHT[0],
                  "--issuer", RIGHT[1], "--reason", "wrong wristband")
    assert result.exit_code == 0, result.output
    new_study = json.loads(result.output)["new_study_instance_uid"]
    worker = job_worker(d)
    worker.drain()

    row, stored = archived(d, clip)
    assert (row.study_uid, stored.StudyInstanceUID) == (new_study, new_study)
    assert (stored.PatientID, stored.IssuerOfPatientID, str(stored.PatientName)) == \
        (*RIGHT, "RIGHT^BOB")
    with d.services.db.session() as db:
        new_session = db.scalar(select(CaptureSession).where(
            CaptureSession.study_uid == new_study))
        assert new_session is not None
        photo = db.scalar(select(Photo).where(Photo.sop_uid == clip))
        assert photo is not None and photo.session_id == new_session.id
        assert db.scalar(select(func.count()).select_from(StagedClip)) == 0
        assert not db.scalars(select(Delivery).where(Delivery.destination == REENCODE_QUEUE,
                                                     Delivery.study_uid == old_study)).all()
    video_series = uid_from_uuid(derived_uuid(new_session.id, "series:video"),
                                 d.services.settings.uid_prefix)
    assert stored.SeriesInstanceUID == video_series
    assert clip not in d.instances(old_study)
    assert valid_video(d, clip, tmp_path / "clip.dcm")[0] == 0


def test_a_clip_whose_study_moves_during_its_reencode_is_stored_with_the_move(
        deploy: Callable[..., Deployment], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The study moves while the worker re-encodes its clip: that attempt stores nothing (no
    instance, no file in the wrong patient's study) and the retry stores it in the new one."""
    d = deploy([])
    add_patient(d, *RIGHT, "RIGHT", "BOB")
    old_study, clip = astuple(stage_clip(d, tmp_path))
    real = intake.reencode_h264
    moved: list[str] = []

    def moved_meanwhile(source: Path, target: Path) -> None:
        real(source, target)
        moved.append(move_to_patient(d.services, old_study, *RIGHT, "wrong wristband",
                                     actor="admin").new_study_uid)

    monkeypatch.setattr(intake, "reencode_h264", moved_meanwhile)
    worker = job_worker(d)
    worker.run_once()
    [new_study] = moved
    with d.services.db.session() as db:
        assert db.get(Instance, clip) is None
        [job] = db.scalars(select(Delivery).where(Delivery.destination == REENCODE_QUEUE))
        assert (job.status, job.study_uid) == ("pending", new_study)
        job.next_attempt_at = utcnow()  # its retry is due (time moved on, not slept)
    old_folder = d.services.settings.archive_root / old_study
    assert not any(p.name.startswith(clip) for p in old_folder.rglob("*"))

    monkeypatch.setattr(intake, "reencode_h264", real)
    worker.drain()
    row, stored = archived(d, clip)
    assert (row.study_uid, stored.PatientID) == (new_study, RIGHT[0])
