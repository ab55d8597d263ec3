"""Delivery to real Orthanc PACSs: STOW-RS and C-STORE land once, pixels byte for byte,
tag morphing on the way out only, and a PACS outage while 30 photos are accepted."""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace

import pydicom
import requests
from pydicom.encaps import generate_frames

from app.db.models import Instance
from app.gateways.archive.pacs import OutgoingInstance, PacsDestination
from app.gateways.errors import GatewayError
from app.gateways.registry import Registry
from app.pipeline.dicom.pr import PR_SOP_CLASS_UID
from app.pipeline.dicom.sr import SR_SOP_CLASS_UID
from tests.delivery.conftest import PHOTOS, SMALL, Deployment, Orthanc, wait_for
from tests.test_measure_instance import LINE, measure
from tests.test_measure_instance import PHOTO as MEASURED

IPHONE = next(p for p in PHOTOS if p.name == "oycq_data_iphone.jpg")


def archived(d: Deployment, sop_uid: str) -> bytes:
    with d.services.db.session() as db:
        return d.services.archive.read(db.get(Instance, sop_uid))


def frame_of(part10: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(part10))
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def test_stow_and_cstore_land_once_with_the_archived_pixels(
        deploy: Callable[..., Deployment], orthancs: Callable[[], Orthanc]) -> None:
    a, b = orthancs().start(), orthancs().start()
    d = deploy([
        {"name": "pacs-a", "type": "stow-rs", "url": a.dicomweb,
         "match": {"department": "Wound care"},
         "morph": [{"set": "InstitutionName", "value": "General Hospital"},
                   {"prefix": "PatientID", "value": "GH-"}]},
        {"name": "pacs-b", "type": "c-store", "host": "127.0.0.1", "port": b.dicom,
         "called_aet": "ORTHANC", "calling_aet": "EBIW-TEST"}])
    wound = d.open_session(department="Wound care")
    derm = d.open_session(department="Dermatology")
    for photo in (IPHONE, PHOTOS[-1], SMALL[0]):
        d.upload(wound, photo)
    d.upload(derm, SMALL[1])
    # Originals, and the colour-normalized DERIVED instances where the colour step made them.
    wound_sops = d.instances(wound["study_instance_uid"])
    derm_sops = d.instances(derm["study_instance_uid"])
    assert len(wound_sops) >= 3 and len(derm_sops) >= 1
    assert d.worker().drain() == 2 * len(wound_sops) + len(derm_sops)
    for study in (wound, derm):
        assert {s.state for s in d.states(study["study_instance_uid"])} == {"sent"}

    assert sorted(a.instances(wound["study_instance_uid"])) == wound_sops  # one copy each
    assert a.instances(derm["study_instance_uid"]) == []  # routed by department
    assert sorted(b.instances(wound["study_instance_uid"])) == wound_sops
    assert sorted(b.instances(derm["study_instance_uid"])) == derm_sops
    for sop in wound_sops:
        original = archived(d, sop)
        assert a.frame(sop) == frame_of(original) == b.frame(sop)  # byte for byte
        assert (a.tags(sop)["PatientID"], a.tags(sop)["InstitutionName"]) == \
            ("GH-00123456", "General Hospital")
        assert b.tags(sop)["PatientID"] == "00123456"
        assert pydicom.dcmread(io.BytesIO(original)).PatientID == "00123456"
    for sop in derm_sops:
        assert b.frame(sop) == frame_of(archived(d, sop))

    # Sending again is harmless: same UIDs, same bytes, still one copy of each.
    for destination in d.registry.destinations:
        outgoing = [OutgoingInstance(sop, destination.morph.apply(archived(d, sop)))
                    for sop in wound_sops]
        assert destination.pacs.store(wound["study_instance_uid"], outgoing) == \
            dict.fromkeys(wound_sops)
    assert sorted(a.instances(wound["study_instance_uid"])) == sorted(wound_sops)
    assert sorted(b.instances(wound["study_instance_uid"])) == sorted(wound_sops)


class Counting:
    """Wraps a destination and counts the instances it reports stored."""

    def __init__(self, inner: PacsDestination) -> None:
        self.inner = inner
        self.name = inner.name
        self.stored: Counter[str] = Counter()

    def store(self, study_uid: str,
              instances: Sequence[OutgoingInstance]) -> dict[str, GatewayError | None]:
        outcomes = self.inner.store(study_uid, instances)
        self.stored.update(uid for uid, error in outcomes.items() if error is None)
        return outcomes


def test_pacs_down_while_30_photos_are_accepted(deploy: Callable[..., Deployment],
                                                orthancs: Callable[[], Orthanc]) -> None:
    pacs = orthancs().start()
    d = deploy([{"name": "pacs", "type": "stow-rs", "url": pacs.dicomweb, "batch_size": 4}])
    [destination] = d.registry.destinations
    counting = Counting(destination.pacs)
    registry = Registry((replace(destination, pacs=counting),), lease_seconds=30)
    background = d.background(registry, count=2)
    try:
        sessions = [d.open_session() for _ in range(3)]
        photos = [(sessions[i % 3], SMALL[i % len(SMALL)]) for i in range(30)]
        for session, photo in photos[:5]:
            d.upload(session, photo)

        def states() -> Counter[str]:
            return Counter(s.state for session in sessions
                           for s in d.states(session["study_instance_uid"]))

        wait_for(lambda: states() == {"sent": len(counting.stored)} and counting.stored, 10,
                 "the first 5 photos in the PACS")
        first = sum(states().values())

        pacs.stop()
        later = [d.upload(s, p) for s, p in photos[5:]]  # every upload answered 201
        assert {x["state"] for photo in later for x in photo["deliveries"]} <= \
            {"queued", "failed"}  # queued (perhaps tried once already), none sent or dead
        wait_for(lambda: states()["failed"] >= 5, 10, "failed deliveries while down")
        assert states()["sent"] == first and states()["dead"] == 0
        reasons = {s.reason for session in sessions
                   for s in d.states(session["study_instance_uid"]) if s.reason}
        assert reasons == {"cannot connect to the PACS"}

        pacs.start()
        total = sum(states().values())
        wait_for(lambda: states()["sent"] == total, 30, "every photo in the PACS")
    finally:
        background.stop()
    sops = [uid for s in sessions for uid in d.instances(s["study_instance_uid"])]
    assert len(sops) == total >= 30
    assert set(counting.stored) == set(sops) and set(counting.stored.values()) == {1}
    found = [uid for s in sessions for uid in pacs.instances(s["study_instance_uid"])]
    assert sorted(found) == sorted(sops)  # exactly one copy of each


def test_a_measurement_sr_and_its_graphics_are_delivered_like_any_instance(
        deploy: Callable[..., Deployment], orthancs: Callable[[], Orthanc]) -> None:
    a, b = orthancs().start(), orthancs().start()
    d = deploy([{"name": "pacs-a", "type": "stow-rs", "url": a.dicomweb},
                {"name": "pacs-b", "type": "c-store", "host": "127.0.0.1", "port": b.dicom,
                 "called_aet": "ORTHANC", "calling_aet": "EBIW-TEST"}])
    session = d.open_session(department="Wound care")
    photo = d.upload(session, MEASURED)
    d.worker().drain()
    result = measure(d.app, "--instance", photo["sop_instance_uid"], "--line", LINE)
    assert result.exit_code == 0, result.output
    sr_uid = json.loads(result.output)["sr_sop_instance_uid"]
    pr_uid = json.loads(result.output)["pr_sop_instance_uid"]
    assert d.worker().drain() == 4  # the SR and its presentation state, to each PACS
    study = session["study_instance_uid"]
    for pacs in (a, b):
        for uid, modality, sop_class in ((sr_uid, "SR", SR_SOP_CLASS_UID),
                                         (pr_uid, "PR", PR_SOP_CLASS_UID)):
            assert uid in pacs.instances(study)
            tags = pacs.tags(uid)
            assert (tags["Modality"], tags["SOPClassUID"]) == (modality, sop_class)
            series = requests.get(f"{pacs.dicomweb}/studies/{study}/series",
                                  params={"Modality": modality}, timeout=10).json()
            assert [s["00080060"]["Value"][0] for s in series] == [modality]
