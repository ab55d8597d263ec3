"""``ebiw correct patient``: corrected copies for the right patient in a new study, the
originals rejected (113037), both queued to the PACS; the EMR's old ImagingStudy
entered-in-error and one for the right patient; HL7 correction and a new ORU; audited, the
capturing clinician told; bad input changes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import hl7
from pydicom.encaps import generate_frames
from sqlalchemy import select

from app.db.models import AuditEvent, Delivery, Patient, Photo, WoundMeasurement
from app.pipeline.dicom.kos import KOS_SOP_CLASS_UID, referenced_instances
from app.workflow.measurements import presentation_uid, tracking_uid
from tests.conftest import dicom_validate
from tests.corrections.conftest import add_patient, archived, ebiw, snapshot
from tests.corrections.test_reject import PACS, emr_only, imaging_study
from tests.delivery.conftest import NOCHART, Deployment
from tests.mllp_peer import Receiver
from tests.test_measure_instance import LINE, measure
from tests.test_measure_instance import PHOTO as CHARTED

RIGHT = ("00234567", "HOSP-A")


def frame(ds: object) -> bytes:
    return next(generate_frames(ds.PixelData, number_of_frames=1))  # type: ignore[attr-defined]


def test_move_copies_to_the_right_patient_and_rejects_the_originals(
        deploy: Callable[..., Deployment], receiver: Receiver, tmp_path: Path) -> None:
    d = deploy(PACS, emr_notifiers="local,hl7v2", emr_mllp_address=receiver.address)
    add_patient(d, *RIGHT, "RIGHT", "BOB")
    session = d.open_session(encounter="ENC1001", department="Wound care")
    old_study = session["study_instance_uid"]
    photo = d.upload(session, CHARTED)["sop_instance_uid"]
    d.upload(session, NOCHART)
    measured = measure(d.app, "--instance", photo, "--line", LINE, "--wound", "heel")
    assert measured.exit_code == 0, measured.output
    sr_uid = json.loads(measured.output)["sr_sop_instance_uid"]
    pr_uid = json.loads(measured.output)["pr_sop_instance_uid"]
    originals = d.instances(old_study)
    assert len(originals) == 5  # photo, its normalized version, the other photo, the SR, PR
    emr_only(d)

    result = ebiw(d, "correct", "patient", "--study", old_study, "--patient-id", RIGHT[0],
                  "--issuer", RIGHT[1], "--reason", "wristband of the bed neighbour")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    new_study = out["new_study_instance_uid"]
    copies: dict[str, str] = out["copies"]
    assert new_study != old_study and out["old_study_instance_uid"] == old_study
    assert sorted(copies) == sorted(out["rejected"]) == originals
    assert sorted(copies.values()) == d.instances(new_study)
    assert not set(copies.values()) & set(originals)
    assert (out["document_title"], out["study_instance_uid"]) == ("113037", old_study)

    # The copies: the right patient, no encounter of the wrong one, pixels bit-exact, and
    # their references (normalized -> original, SR -> photo) follow the new UIDs.
    for old_uid, new_uid in copies.items():
        _, before = archived(d, old_uid)
        row, after = archived(d, new_uid)
        assert (after.PatientID, after.IssuerOfPatientID, str(after.PatientName)) == \
            (*RIGHT, "RIGHT^BOB")
        assert (after.StudyInstanceUID, row.study_uid) == (new_study, new_study)
        assert after.SOPInstanceUID == after.file_meta.MediaStorageSOPInstanceUID == new_uid
        assert "AdmissionID" not in after and before.AdmissionID == "ENC1001"
        assert after.SOPClassUID == before.SOPClassUID
        if "PixelData" in before:
            assert frame(after) == frame(before)
        if "SourceImageSequence" in before:
            assert after.SourceImageSequence[0].ReferencedSOPInstanceUID == \
                copies[before.SourceImageSequence[0].ReferencedSOPInstanceUID]
    copied_photo = tmp_path / "copy.dcm"
    copied_photo.write_bytes(d.services.archive.read(archived(d, copies[photo])[0]))
    errors, _warnings, report = dicom_validate(copied_photo)
    assert errors == 0, report
    _, sr_copy = archived(d, copies[sr_uid])
    referenced = {str(i.ReferencedSOPInstanceUID) for i in
                  sr_copy.CurrentRequestedProcedureEvidenceSequence[0]
                  .ReferencedSeriesSequence[0].ReferencedSOPSequence}
    assert referenced == {copies[photo]}
    # The presentation state's copy is the copied report's (withdrawing that finds it), and
    # draws on the copied photo with the wound's new tracking UID.
    prefix = d.services.settings.uid_prefix
    assert copies[pr_uid] == presentation_uid(copies[sr_uid], prefix)
    _, pr_copy = archived(d, copies[pr_uid])
    [annotation] = pr_copy.GraphicAnnotationSequence
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == copies[photo]
    assert annotation.GraphicObjectSequence[0].TrackingUID == \
        tracking_uid(RIGHT[1], RIGHT[0], "heel", prefix)

    # The originals: rejected by one note in the old study.
    _, kos = archived(d, out["kos_sop_instance_uid"])
    assert kos.SOPClassUID == KOS_SOP_CLASS_UID and kos.PatientID == "00123456"
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113037"
    assert sorted(uid for *_, uid in referenced_instances(kos)) == originals

    with d.services.db.session() as db:
        queued = set(db.scalars(select(Delivery.sop_uid).where(Delivery.destination == "pacs",
                                                                Delivery.status == "pending")))
        assert {*copies.values(), out["kos_sop_instance_uid"]} <= queued
        new_photos = db.scalars(select(Photo).where(Photo.sop_uid.in_(copies.values()))).all()
        assert len(new_photos) == 2
        wounds = db.scalars(select(WoundMeasurement)
                            .where(WoundMeasurement.study_uid == new_study)).all()
        assert {(w.report_sop_uid, w.photo_sop_uid) for w in wounds} == \
            {(copies[sr_uid], copies[photo])}
        moved = db.scalar(select(AuditEvent).where(AuditEvent.action == "correction.patient"))
        notice = db.scalar(select(AuditEvent).where(AuditEvent.action == "correction.notice"))
        assert moved is not None and notice is not None
        assert moved.detail["reason"] == "wristband of the bed neighbour"
        assert {f"study:{old_study}", f"study:{new_study}"} <= set(moved.entities)
        assert notice.entities[0] == "user:capture-user"
        right_id = db.scalar(select(Patient.id).where(Patient.mrn == RIGHT[0]))

    # The capturing clinician sees both studies on the home screen: the old one corrected.
    recent = d.client.get("/api/v1/sessions/recent", headers=d.headers["capture"]).get_json()
    assert {(r["study_instance_uid"], r["patient"]["id"]): r["rejected"] for r in recent} == {
        (old_study, "00123456"): [{"code": "113037", "photos": 2,
                                   "meaning": "Rejected for Patient Safety Reasons"}],
        (new_study, RIGHT[0]): []}

    # DICOMweb: the old study is the note alone; the new one is served.
    admin = d.headers["admin"]
    old = d.client.get(f"/dicomweb/studies/{old_study}/instances", headers=admin).get_json()
    assert [i["00080018"]["Value"][0] for i in old] == [out["kos_sop_instance_uid"]]
    new = d.client.get(f"/dicomweb/studies/{new_study}/instances", headers=admin).get_json()
    assert sorted(i["00080018"]["Value"][0] for i in new) == sorted(copies.values())

    # The EMR: old ImagingStudy entered-in-error, the right patient's own; HL7 W and F.
    emr_only(d)
    assert imaging_study(d, old_study)["status"] == "entered-in-error"
    right = imaging_study(d, new_study)
    assert (right["status"], right["subject"]) == \
        ("available", {"reference": f"Patient/{right_id}"})
    assert right["numberOfInstances"] == 5
    messages = [hl7.parse(raw) for raw in receiver.raw]
    by_study = {str(m.segment("OBX")[5]): m for m in messages[1:]}
    wrong, fresh = by_study[old_study], by_study[new_study]
    assert str(wrong.segment("PID")[3][0][0]) == "00123456"
    assert str(wrong.segment("OBR")[25]) == "C"
    assert {str(obx[11]) for obx in wrong.segments("OBX")} == {"W"}
    assert str(fresh.segment("PID")[3][0][0]) == RIGHT[0]
    assert str(fresh.segment("OBR")[25]) == "F"
    assert str(fresh.segment("PID")[5][0][0]) == "RIGHT"


def test_bad_moves_change_nothing(deploy: Callable[..., Deployment]) -> None:
    d = deploy(PACS, emr_notifiers="local")
    add_patient(d, *RIGHT, "RIGHT", "BOB")
    session = d.open_session()
    study = session["study_instance_uid"]
    d.upload(session, NOCHART)
    before = snapshot(d)

    def move(study_uid: str, mrn: str, issuer: str, reason: str = "wrong band") -> str:
        result = ebiw(d, "correct", "patient", "--study", study_uid, "--patient-id", mrn,
                      "--issuer", issuer, "--reason", reason)
        assert result.exit_code == 1, result.output
        return str(json.loads(result.output)["error"])

    assert move(study, "00123456", "HOSP-A") == "the study already belongs to this patient"
    assert move(study, "99999999", "HOSP-A") == \
        "the patient directory has no patient with this ID and issuer"
    assert move(study, RIGHT[0], "OTHER") == \
        "the patient directory has no patient with this ID and issuer"
    assert move("1.2.3.4", *RIGHT) == "no study of ours has Study Instance UID 1.2.3.4"
    assert move(study, *RIGHT, reason=" ") == "give the reason of the correction"
    assert snapshot(d) == before

    # Once moved, the study has nothing left to move.
    assert ebiw(d, "correct", "patient", "--study", study, "--patient-id", RIGHT[0],
                "--issuer", RIGHT[1], "--reason", "wrong band").exit_code == 0
    after = snapshot(d)
    assert move(study, *RIGHT) == "the study has no instance left to move"
    assert snapshot(d) == after
