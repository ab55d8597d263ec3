"""Corrections against the real peers: Orthanc receives the rejection notes and the corrected
copies (STOW-RS and C-STORE), the notes' references match what was rejected; the FHIR peer
ends with the old ImagingStudy entered-in-error and one ImagingStudy for the right patient,
through lost answers and refusals."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pydicom
import requests
from sqlalchemy import select

from app.db.models import Delivery, DeliveryKind
from app.pipeline.dicom.kos import KOS_SOP_CLASS_UID, referenced_instances
from tests.conftest import FhirPeer
from tests.corrections.conftest import add_patient, ebiw
from tests.delivery.conftest import NOCHART, SMALL, Deployment, Orthanc, wait_for
from tests.emr.conftest import ENCOUNTER_SYSTEM, FaultProxy, fhir_validate

RIGHT = ("00234567", "HOSP-A")


def stored(pacs: Orthanc, study: str, sop: str) -> pydicom.Dataset:
    """The instance as the PACS stored it (Orthanc REST, the Part 10 file)."""
    found = requests.post(f"{pacs.url}/tools/find", json={
        "Level": "Instance", "Query": {"SOPInstanceUID": sop, "StudyInstanceUID": study}},
        timeout=10).json()
    assert len(found) == 1, found
    data = requests.get(f"{pacs.url}/instances/{found[0]}/file", timeout=10).content
    return pydicom.dcmread(io.BytesIO(data))


def test_orthanc_receives_the_notes_and_the_corrected_copies(
        deploy: Callable[..., Deployment], orthancs: Callable[[], Orthanc]) -> None:
    a, b = orthancs().start(), orthancs().start()
    d = deploy([{"name": "pacs-a", "type": "stow-rs", "url": a.dicomweb},
                {"name": "pacs-b", "type": "c-store", "host": "127.0.0.1", "port": b.dicom,
                 "called_aet": "ORTHANC", "calling_aet": "EBIW-TEST"}])
    add_patient(d, *RIGHT, "RIGHT", "BOB")
    session = d.open_session(department="Wound care")
    study = session["study_instance_uid"]
    bad = d.upload(session, NOCHART)["sop_instance_uid"]
    d.upload(session, SMALL[0])
    d.worker().drain()
    originals = d.instances(study)

    rejected = ebiw(d, "correct", "reject", "--instance", bad, "--reason", "quality")
    assert rejected.exit_code == 0, rejected.output
    quality = json.loads(rejected.output)
    assert d.worker().drain() == 2  # the note, to each PACS
    for pacs in (a, b):
        kos = stored(pacs, study, quality["kos_sop_instance_uid"])
        assert (kos.SOPClassUID, kos.ConceptNameCodeSequence[0].CodeValue) == \
            (KOS_SOP_CLASS_UID, "113001")
        assert referenced_instances(kos) == [(study, stored(pacs, study, bad).SeriesInstanceUID,
                                              bad)]

    moved = ebiw(d, "correct", "patient", "--study", study, "--patient-id", RIGHT[0],
                 "--issuer", RIGHT[1], "--reason", "wrong wristband")
    assert moved.exit_code == 0, moved.output
    out = json.loads(moved.output)
    new_study, copies = out["new_study_instance_uid"], out["copies"]
    assert sorted(copies) == sorted(set(originals) - {bad}) == sorted(out["rejected"])
    assert d.worker().drain() == 2 * (len(copies) + 1)
    for pacs in (a, b):
        assert sorted(pacs.instances(new_study)) == sorted(copies.values())
        for copy in copies.values():
            assert (pacs.tags(copy)["PatientID"], pacs.tags(copy)["PatientName"]) == \
                (RIGHT[0], "RIGHT^BOB")
        kos = stored(pacs, study, out["kos_sop_instance_uid"])
        assert kos.ConceptNameCodeSequence[0].CodeValue == "113037"
        assert sorted(uid for *_, uid in referenced_instances(kos)) == sorted(copies)
        assert all(s == study for s, *_ in referenced_instances(kos))
        # The PACS keeps both notes and all originals: IOCM tells it what to hide.
        assert set(pacs.instances(study)) == {*originals, quality["kos_sop_instance_uid"],
                                              out["kos_sop_instance_uid"]}


def test_fhir_peer_ends_with_the_old_study_in_error_and_one_for_the_right_patient(
        deploy: Callable[..., Deployment], fhir_peer: FhirPeer, proxy: FaultProxy,
        tmp_path: Path) -> None:
    d = deploy([], emr_notifiers="fhir", emr_fhir_url=f"{proxy.url}/fhir",
               emr_timeout_seconds=1, emr_encounter_system=ENCOUNTER_SYSTEM)
    add_patient(d, "MRN0002", "1.2.3.4.5.6", "TEST", "BOB")  # the peer's Patient p2
    session = d.open_session(patient={"id": "MRN0001", "issuer": "1.2.3.4.5.6",
                                      "name": "TEST^ALICE"}, encounter="ENC-42")
    old_study = session["study_instance_uid"]
    d.upload(session, NOCHART)
    assert d.worker().drain() == 1
    [old] = fhir_peer.studies(old_study)
    assert (old["status"], old["subject"]) == ("available", {"reference": "Patient/p1"})

    moved = ebiw(d, "correct", "patient", "--study", old_study, "--patient-id", "MRN0002",
                 "--issuer", "1.2.3.4.5.6", "--reason", "wrong wristband")
    assert moved.exit_code == 0, moved.output
    new_study = json.loads(moved.output)["new_study_instance_uid"]
    # The old study's update is refused once (503); the new study's create reaches the
    # server but its answer is lost (timeout): both are retried.
    proxy.plan[f"PUT /fhir/ImagingStudy/{old['id']}"] = ["503"]
    proxy.plan["POST /fhir/ImagingStudy"] = ["late"]

    def all_sent() -> bool:
        d.worker().drain()
        with d.services.db.session() as db:
            return {r.status for r in db.scalars(select(Delivery).where(
                Delivery.kind == DeliveryKind.EMR))} == {"sent"}

    wait_for(all_sent, 30, "both EMR notices sent")
    [old_after] = fhir_peer.studies(old_study)
    assert old_after["id"] == old["id"] and old_after["status"] == "entered-in-error"
    assert old_after["subject"] == {"reference": "Patient/p1"}
    [right] = fhir_peer.studies(new_study)  # exactly one, despite the retried create
    assert (right["status"], right["subject"]) == ("available", {"reference": "Patient/p2"})
    assert "encounter" not in right  # the wrong patient's encounter is not carried over
    creates = [e["status"] for e in fhir_peer.log("POST", "/fhir/ImagingStudy")
               if new_study in (e.get("ifNoneExist") or "")]
    assert creates == [201, 200]  # the lost answer's create, then the retry finding it
    assert [s["key"] for s in proxy.seen].count(f"PUT /fhir/ImagingStudy/{old['id']}") == 2
    reports = fhir_validate(tmp_path, [old_after, right])
    assert [r["errors"] for r in reports] == [[], []], reports
    everyone = requests.get(f"{fhir_peer.url}/ImagingStudy", timeout=5).json()
    assert len(everyone.get("entry", [])) == 2


def test_a_rejected_instance_not_sent_yet_is_cancelled_and_never_reaches_the_pacs(
        deploy: Callable[..., Deployment], orthancs: Callable[[], Orthanc]) -> None:
    """The PACS is down while two photos wait; one is rejected: its deliveries are cancelled
    (listed so, with the reason, never retried), and once the PACS is up it receives the other
    photo and the rejection note, never the rejected photo."""
    pacs = orthancs()  # not started yet: the destination is down
    d = deploy([{"name": "pacs", "type": "stow-rs", "url": pacs.dicomweb}])
    session = d.open_session()
    study = session["study_instance_uid"]
    kept = d.upload(session, NOCHART)["sop_instance_uid"]
    bad = d.upload(session, SMALL[0])["sop_instance_uid"]
    pair = sorted(set(d.instances(study)) - {kept})  # the photo and its normalized version
    assert len(pair) == 2
    d.worker().drain()
    assert {s.state for s in d.states(study)} == {"failed"}  # unreachable, retried later

    rejected = ebiw(d, "correct", "reject", "--instance", bad, "--reason", "quality")
    assert rejected.exit_code == 0, rejected.output
    out = json.loads(rejected.output)
    assert (sorted(out["rejected"]), out["cancelled_deliveries"]) == (pair, 2)
    cancelled = [s for s in d.states(study) if s.sop_uid in pair]
    assert [s.state for s in cancelled] == ["cancelled", "cancelled"]
    assert cancelled[0].reason == \
        "cancelled: the instance was rejected (Rejected for Quality Reasons)"
    admin = d.headers["admin"]
    listed = d.client.get("/admin/api/deliveries?state=cancelled", headers=admin).get_json()
    assert sorted(r["sop_instance_uid"] for r in listed["deliveries"]) == pair
    assert listed["counts"]["pacs"]["cancelled"] == 2
    retry = d.client.post(f"/admin/api/deliveries/{cancelled[0].id}/retry", headers=admin)
    assert retry.status_code == 409

    pacs.start()

    def delivered() -> bool:
        d.worker().drain()
        return {s.state for s in d.states(study)
                if s.kind == "pacs" and s.sop_uid not in pair} == {"sent"}

    wait_for(delivered, 30, "the kept photo and the note sent")
    assert sorted(pacs.instances(study)) == sorted([kept, out["kos_sop_instance_uid"]])
    assert [s.state for s in d.states(study) if s.sop_uid in pair] == ["cancelled"] * 2
    kos = stored(pacs, study, out["kos_sop_instance_uid"])
    assert sorted(uid for *_, uid in referenced_instances(kos)) == pair
