"""``ebiw correct reject``: a KOS rejection note in a new series of the study, stored, indexed,
queued to the PACS; the rejected instances hidden from QIDO-RS, WADO-RS, the viewer and the
EMR (ImagingStudy, HL7 v2) but kept on disk; audited; bad input changes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import hl7
from sqlalchemy import select

from app.db.models import AuditEvent, Delivery, DeliveryKind, FhirResource
from app.pipeline.dicom.kos import KOS_SOP_CLASS_UID, referenced_instances
from app.workflow.intake import REJECTION_SERIES_NUMBER
from tests.corrections.conftest import archived, ebiw, snapshot, validate_kos
from tests.delivery.conftest import NOCHART, SMALL, Deployment
from tests.mllp_peer import Receiver

PACS = [{"name": "pacs", "type": "stow-rs", "url": "http://127.0.0.1:9/dicom-web"}]


def imaging_study(d: Deployment, study_uid: str) -> dict:
    with d.services.db.session() as db:
        row = db.scalar(select(FhirResource).where(
            FhirResource.resource_type == "ImagingStudy",
            FhirResource.identifier == f"urn:dicom:uid|urn:oid:{study_uid}"))
        assert row is not None
        return dict(row.body)


def emr_only(d: Deployment) -> int:
    """Run the EMR notices due (the PACS here is never reachable); how many were sent."""
    from app.gateways.registry import Registry

    registry = Registry(destinations=[], notifiers=d.registry.notifiers)
    return d.worker(registry).drain()


def test_reject_stores_a_kos_hides_the_photo_and_tells_the_emr(
        deploy: Callable[..., Deployment], receiver: Receiver, tmp_path: Path) -> None:
    d = deploy(PACS, emr_notifiers="local,hl7v2", emr_mllp_address=receiver.address)
    session = d.open_session(department="Wound care")
    study = session["study_instance_uid"]
    kept = d.upload(session, NOCHART)["sop_instance_uid"]
    charted = d.upload(session, SMALL[0])  # original + colour-normalized instance
    bad = charted["sop_instance_uid"]
    pair = sorted(set(d.instances(study)) - {kept})
    assert len(pair) == 2 and bad in pair
    assert emr_only(d) == 2  # the local ImagingStudy and the first ORU (F)
    before_files = snapshot(d)["files"]

    result = ebiw(d, "correct", "reject", "--instance", bad, "--reason", "quality")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert sorted(out["rejected"]) == pair  # the photo and its normalized version
    assert (out["reason"], out["document_title"], out["study_instance_uid"]) == \
        ("quality", "113001", study)
    kos_uid = out["kos_sop_instance_uid"]

    # The rejection note: a KOS in its own series of the study, referencing exactly the pair.
    row, kos = archived(d, kos_uid)
    assert (row.sop_class_uid, row.study_uid, row.rejected_at) == (KOS_SOP_CLASS_UID, study, None)
    assert (kos.SOPClassUID, kos.Modality, kos.SeriesNumber) == \
        (KOS_SOP_CLASS_UID, "KO", REJECTION_SERIES_NUMBER)
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == \
        ("113001", "DCM", "Rejected for Quality Reasons")
    assert (kos.StudyInstanceUID, kos.PatientID, kos.IssuerOfPatientID) == \
        (study, "00123456", "HOSP-A")
    photo_series = {archived(d, uid)[0].series_uid for uid in pair}
    assert kos.SeriesInstanceUID not in photo_series
    assert sorted(referenced_instances(kos)) == sorted(
        (study, archived(d, uid)[0].series_uid, uid) for uid in pair)
    assert sorted(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                  for item in kos.ContentSequence if "ReferencedSOPSequence" in item) == pair
    path = tmp_path / "kos.dcm"
    path.write_bytes(d.services.archive.read(row))
    report = validate_kos(path)
    assert "TOTAL errors=0 " in report, report

    # The rejected instances: marked, still on disk; the KOS queued to the PACS.
    for uid in pair:
        marked, _ = archived(d, uid)
        assert (marked.rejection_code, marked.rejected_by_kos) == ("113001", kos_uid)
        assert marked.rejected_at is not None
    assert set(before_files) < set(snapshot(d)["files"])
    with d.services.db.session() as db:
        queued = db.scalars(select(Delivery).where(Delivery.sop_uid == kos_uid)).all()
        assert [(q.destination, q.kind, q.status) for q in queued] == \
            [("pacs", DeliveryKind.PACS, "pending")]
        [event] = db.scalars(select(AuditEvent).where(
            AuditEvent.action == "correction.reject")).all()
        assert event.actor.startswith("cli:")
        assert {f"instance:{u}" for u in [*pair, kos_uid]} <= set(event.entities)
        assert (event.detail["code"], event.detail["kos"]) == ("113001", kos_uid)

    # DICOMweb: gone from QIDO-RS and WADO-RS; the note and the other photo stay.
    admin = d.headers["admin"]
    found = d.client.get(f"/dicomweb/studies/{study}/instances", headers=admin).get_json()
    assert sorted(i["00080018"]["Value"][0] for i in found) == sorted([kept, kos_uid])
    [summary] = d.client.get("/dicomweb/studies", headers=admin,
                             query_string={"StudyInstanceUID": study}).get_json()
    assert summary["00201208"]["Value"] == [2]
    for uid in pair:
        series = archived(d, uid)[0].series_uid
        base = f"/dicomweb/studies/{study}/series/{series}/instances/{uid}"
        assert d.client.get(base, headers=admin).status_code == 404
        assert d.client.get(f"{base}/metadata", headers=admin).status_code == 404

    # The EMR: the ImagingStudy lists the kept photo only (no KO series); HL7 sends C.
    assert emr_only(d) == 2
    body = imaging_study(d, study)
    assert body["status"] == "available" and body["numberOfInstances"] == 1
    assert [i["uid"] for s in body["series"] for i in s["instance"]] == [kept]
    assert [s["modality"]["code"] for s in body["series"]] == ["XC"]
    first, correction = (hl7.parse(raw) for raw in receiver.raw)
    assert str(first.segment("OBR")[25]) == "F"
    assert str(correction.segment("OBR")[25]) == "C"
    assert {str(obx[11]) for obx in correction.segments("OBX")} == {"C"}
    counts = {str(obx[3][0][0]): str(obx[5]) for obx in correction.segments("OBX")}
    assert counts["NINST"] == "1"


def test_rejecting_every_photo_puts_the_study_in_error(
        deploy: Callable[..., Deployment], receiver: Receiver) -> None:
    d = deploy(PACS, emr_notifiers="local,hl7v2", emr_mllp_address=receiver.address)
    session = d.open_session()
    study = session["study_instance_uid"]
    uid = d.upload(session, NOCHART)["sop_instance_uid"]
    emr_only(d)
    result = ebiw(d, "correct", "reject", "--instance", uid, "--reason", "worklist")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["document_title"] == "113038"
    assert emr_only(d) == 2
    body = imaging_study(d, study)
    assert body["status"] == "entered-in-error"
    assert d.client.get(f"/dicomweb/studies/{study}/series", headers=d.headers["admin"],
                        query_string={"Modality": "XC"}).status_code == 204
    correction = hl7.parse(receiver.raw[-1])
    assert str(correction.segment("OBR")[25]) == "C"
    assert {str(obx[11]) for obx in correction.segments("OBX")} == {"W"}  # table 0085


def test_bad_input_changes_nothing(deploy: Callable[..., Deployment]) -> None:
    d = deploy(PACS, emr_notifiers="local")
    session = d.open_session()
    uid = d.upload(session, NOCHART)["sop_instance_uid"]
    damaged = d.upload(session, NOCHART)["sop_instance_uid"]
    result = ebiw(d, "correct", "reject", "--instance", uid, "--reason", "patient-safety")
    assert result.exit_code == 0, result.output
    kos_uid = json.loads(result.output)["kos_sop_instance_uid"]
    d.services.archive.restore(archived(d, damaged)[0], b"not DICOM")
    before = snapshot(d)

    again = ebiw(d, "correct", "reject", "--instance", uid, "--reason", "quality")
    assert again.exit_code == 1
    assert json.loads(again.output)["error"] == \
        f"instance {uid} was already rejected (rejection note {kos_uid})"
    unknown = ebiw(d, "correct", "reject", "--instance", "1.2.3.4", "--reason", "quality")
    assert unknown.exit_code == 1
    assert "no archived instance has SOP Instance UID 1.2.3.4" in unknown.output
    note = ebiw(d, "correct", "reject", "--instance", kos_uid, "--reason", "quality")
    assert note.exit_code == 1 and "cannot be rejected" in note.output
    unreadable = ebiw(d, "correct", "reject", "--instance", damaged, "--reason", "quality")
    assert unreadable.exit_code == 1
    assert json.loads(unreadable.output)["error"] == (
        f"the archived file of instance {damaged} cannot be read (UnreadableDicomError); "
        "nothing was changed")
    wrong = ebiw(d, "correct", "reject", "--instance", uid, "--reason", "bored")
    assert wrong.exit_code == 2  # click refuses the reason
    assert snapshot(d) == before
