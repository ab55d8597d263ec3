"""Patient merge from the EMR against the real peers: an ADT^A40 sent with python-hl7 over MLLP
to ``ebiw adt-listener`` running as its own process, and FHIR ``Patient.link`` ``replaced-by``
on the shared FHIR peer. The merged patient's studies end under the survivor, once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hl7
import requests
from click.testing import CliRunner
from hl7.client import MLLPClient
from sqlalchemy import select

from app.cli import cli
from app.db.models import AuditEvent, CaptureSession, Delivery, DeliveryKind, Instance
from app.pipeline.dicom.kos import KOS_SOP_CLASS_UID
from tests.conftest import REPO, FhirPeer
from tests.corrections.conftest import archived, cli_env, snapshot
from tests.delivery.conftest import NOCHART, Deployment, free_port, wait_for
from tests.emr.conftest import ENCOUNTER_SYSTEM
from tests.test_serve import wait_for as serving_at

OID = "1.2.3.4.5.6"  # the FHIR peer's identifier system urn:oid:1.2.3.4.5.6
ALICE = {"id": "MRN0001", "issuer": OID, "name": "TEST^ALICE"}  # Patient p1
SENDER = "EMR-ADT"


def a40(control_id: str, surviving: str, merged: str | None, *, sender: str = SENDER,
        event: str = "A40") -> str:
    """An ADT^A40 (v2.5.1): PID-3 the surviving MRN, MRG-1 the merged one (None: no MRG)."""
    segments = [f"MSH|^~\\&|{sender}|HOSP|EBIW|HOSP|20261207120000||ADT^{event}^ADT_A39|"
                f"{control_id}|P|2.5.1",
                f"EVN|{event}|20261207120000",
                f"PID|1||{surviving}^^^{OID}^MR||TEST^BOB||19700101|M"]
    if merged is not None:
        segments.append(f"MRG|{merged}^^^{OID}^MR")
    return "\r".join(segments) + "\r"


def send(port: int, message: str) -> hl7.Message:
    """Send one message with python-hl7's MLLP client; the ACK, parsed by python-hl7."""
    with MLLPClient("127.0.0.1", port) as client:
        answer = client.send_message(message)
    return hl7.parse(answer.strip(b"\x0b\x1c\r").decode())


def msa(ack: hl7.Message) -> tuple[str, str]:
    return str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])


def deployment(deploy: Callable[..., Deployment], fhir_peer: FhirPeer) -> Deployment:
    """An app whose EMR and patient directory are the FHIR peer."""
    return deploy([], emr_notifiers="fhir", emr_fhir_url=fhir_peer.url,
                  emr_encounter_system=ENCOUNTER_SYSTEM, patient_directory="fhir",
                  patient_fhir_url=fhir_peer.url)


def env_of(d: Deployment) -> dict[str, str]:
    """:func:`cli_env` with the patient directory (the FHIR peer)."""
    settings = d.services.settings
    return {**cli_env(d), "EBIW_PATIENT_DIRECTORY": "fhir",
            "EBIW_PATIENT_FHIR_URL": settings.patient_fhir_url,
            "EBIW_EMR_ENCOUNTER_SYSTEM": settings.emr_encounter_system}


def merge_replaced(d: Deployment) -> dict[str, Any]:
    """``ebiw patients merge-replaced`` on the deployment's settings: its JSON report."""
    result = CliRunner().invoke(cli, ["patients", "merge-replaced"], env=env_of(d))
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


@contextmanager
def listener(d: Deployment) -> Iterator[int]:
    """``ebiw adt-listener`` in its own process on a free port, until the end of the block."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EBIW_")}, **env_of(d),
           "EBIW_ADT_ALLOWED_SENDERS": SENDER, "EBIW_ADT_ALLOWED_NETWORKS": "127.0.0.1/32"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "adt-listener", "--port",
                             str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _listening(port) or proc.poll() is not None, 30, "the ADT listener")
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        yield port
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode()
        # Never PHI in its log: no MRN or name of either patient.
        assert not any(phi in output for phi in ("MRN0001", "MRN0002", "ALICE", "BOB")), output


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def sessions_of(d: Deployment, mrn: str) -> list[str]:
    """Study UIDs of the patient's sessions that still show an instance other than a note."""
    with d.services.db.session() as db:
        studies = db.scalars(select(CaptureSession.study_uid).where(
            CaptureSession.patient_id == mrn)).all()
        return sorted(s for s in studies if db.scalar(select(Instance.sop_uid).where(
            Instance.study_uid == s, Instance.shown(),
            Instance.sop_class_uid != KOS_SOP_CLASS_UID).limit(1)))


def drain_emr(d: Deployment) -> None:
    def all_sent() -> bool:
        d.worker().drain()
        with d.services.db.session() as db:
            return {r.status for r in db.scalars(select(Delivery).where(
                Delivery.kind == DeliveryKind.EMR))} <= {"sent"}

    wait_for(all_sent, 30, "the EMR notices sent")


def test_a40_over_mllp_moves_the_merged_patients_studies_once(
        deploy: Callable[..., Deployment], fhir_peer: FhirPeer) -> None:
    d = deployment(deploy, fhir_peer)
    old_studies = []
    for _ in range(2):
        session = d.open_session(patient=ALICE, encounter="ENC-42")
        d.upload(session, NOCHART)
        old_studies.append(session["study_instance_uid"])
    drain_emr(d)
    assert [s["subject"] for u in old_studies for s in fhir_peer.studies(u)] == \
        [{"reference": "Patient/p1"}] * 2

    with listener(d) as port:
        unchanged = snapshot(d)
        # Refused, nothing changed: unknown survivor (AE), another event (AR), no MRG (AE),
        # a sender not allowed (AR), not HL7 at all (AE).
        refusals = {"C1": (a40("C1", "MRN9999", "MRN0001"), "AE"),
                    "C2": (a40("C2", "MRN0002", "MRN0001", event="A08"), "AR"),
                    "C3": (a40("C3", "MRN0002", None), "AE"),
                    "C4": (a40("C4", "MRN0002", "MRN0001", sender="OTHER"), "AR"),
                    "": ("this is not HL7\r", "AE")}
        for control_id, (message, code) in refusals.items():
            ack = send(port, message)
            assert msa(ack) == (code, control_id), str(ack)
            assert str(ack.segment("ERR")[3][0][0]) in {"100", "101", "200", "201", "204",
                                                        "207"}
            assert "MRN" not in str(ack)  # reasons never quote the message
        # The merged patient has nothing here: AA, nothing to do.
        assert msa(send(port, a40("C5", "MRN0002", "MRN0404"))) == ("AA", "C5")
        assert snapshot(d) == unchanged

        ack = send(port, a40("MERGE-1", "MRN0002", "MRN0001"))
        assert msa(ack) == ("AA", "MERGE-1")
        assert str(ack.segment("MSH")[9][0][0]) == "ACK"
        assert sessions_of(d, "MRN0001") == []
        new_studies = sessions_of(d, "MRN0002")
        assert len(new_studies) == 2
        drain_emr(d)
        after = snapshot(d)
        # A resent A40 (same or new control ID) changes nothing.
        assert msa(send(port, a40("MERGE-1", "MRN0002", "MRN0001"))) == ("AA", "MERGE-1")
        assert msa(send(port, a40("MERGE-2", "MRN0002", "MRN0001"))) == ("AA", "MERGE-2")
        assert d.worker().drain() == 0
        assert snapshot(d) == after

    for uid in old_studies:
        [old] = fhir_peer.studies(uid)
        assert (old["status"], old["subject"]) == ("entered-in-error",
                                                   {"reference": "Patient/p1"})
    for uid in new_studies:
        [new] = fhir_peer.studies(uid)  # exactly one per moved study
        assert (new["status"], new["subject"]) == ("available", {"reference": "Patient/p2"})
    everyone = requests.get(f"{fhir_peer.url}/ImagingStudy", timeout=5).json()
    assert len(everyone.get("entry", [])) == 4
    with d.services.db.session() as db:
        [merge] = db.scalars(select(AuditEvent).where(AuditEvent.action == "patient.merge"))
        moves = db.scalars(select(AuditEvent).where(
            AuditEvent.action == "correction.patient")).all()
        copies = db.scalars(select(Instance).where(Instance.study_uid.in_(new_studies))).all()
    assert merge.actor == f"hl7:{SENDER}"
    assert (merge.detail["control_id"], sorted(merge.detail["moved"])) == \
        ("MERGE-1", sorted(old_studies))
    assert sorted(merge.detail["moved"].values()) == new_studies
    assert [(m.detail["reason"], m.detail["control_id"]) for m in moves] == \
        [("patient merge", "MERGE-1")] * 2
    for row in copies:
        _, data = archived(d, row.sop_uid)
        assert (data.PatientID, data.IssuerOfPatientID, str(data.PatientName)) == \
            ("MRN0002", OID, "TEST^BOB")


def link_patients(fhir_peer: FhirPeer, *pairs: tuple[str, str]) -> None:
    """Mark each (replaced, survivor) pair of the peer's Patients merged: the replaced one
    inactive with ``link`` ``replaced-by`` the survivor."""
    for replaced, survivor in pairs:
        patient = requests.get(f"{fhir_peer.url}/Patient/{replaced}", timeout=5).json()
        patient.pop("meta", None)
        patient["active"] = False
        patient["link"] = [{"other": {"reference": f"Patient/{survivor}"},
                            "type": "replaced-by"}]
        response = requests.put(f"{fhir_peer.url}/Patient/{replaced}", json=patient,
                                headers={"Content-Type": "application/fhir+json"}, timeout=5)
        assert response.status_code == 200, response.text


def test_patient_link_replaced_by_is_followed_and_the_job_moves_the_studies(
        deploy: Callable[..., Deployment], fhir_peer: FhirPeer) -> None:
    d = deployment(deploy, fhir_peer)
    session = d.open_session(patient=ALICE)
    d.upload(session, NOCHART)
    old_study = session["study_instance_uid"]
    drain_emr(d)
    assert merge_replaced(d) == {"checked": 1, "merged": 0, "moved": {}, "left": 0}

    link_patients(fhir_peer, ("p1", "p2"))
    # Looking the old MRN up finds the survivor, saying whom it replaces.
    found = d.client.post("/api/v1/patients/search", json={"mrn": "MRN0001", "issuer": OID},
                          headers=d.headers["capture"])
    assert found.status_code == 200, found.get_json()
    [match] = found.get_json()["patients"]
    assert (match["mrn"], match["name"]["dicom"]) == ("MRN0002", "TEST^BOB")
    assert match["identification"]["evidence"]["link"] == "replaced-by"

    report = merge_replaced(d)
    assert (report["checked"], report["merged"], list(report["moved"])) == (1, 1, [old_study])
    new_study = report["moved"][old_study]
    assert sessions_of(d, "MRN0001") == [] and sessions_of(d, "MRN0002") == [new_study]
    drain_emr(d)
    again = snapshot(d)
    assert merge_replaced(d) == {"checked": 1, "merged": 0, "moved": {}, "left": 0}
    assert snapshot(d) == again
    [old] = fhir_peer.studies(old_study)
    [new] = fhir_peer.studies(new_study)
    assert (old["status"], new["status"], new["subject"]) == \
        ("entered-in-error", "available", {"reference": "Patient/p2"})


def test_a_replaced_by_loop_is_a_directory_refusal(
        deploy: Callable[..., Deployment], fhir_peer: FhirPeer) -> None:
    d = deployment(deploy, fhir_peer)
    link_patients(fhir_peer, ("p1", "p2"), ("p2", "p1"))
    found = d.client.post("/api/v1/patients/search", json={"mrn": "MRN0001", "issuer": OID},
                          headers=d.headers["capture"])
    assert found.status_code == 503, found.get_json()
    assert "loop" in json.dumps(found.get_json())


def test_serve_runs_the_adt_listener_when_asked(tmp_path: Path) -> None:
    """EBIW_ADT_LISTEN=on: ``ebiw serve`` answers an A40 on the ADT port (here AE 204: the
    local index is empty, so the survivor is unknown) and stops the listener with itself."""
    web, mllp, log = free_port(), free_port(), tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "EBIW_DATA_DIR": str(tmp_path / "var"),
           "EBIW_ADT_LISTEN": "on", "EBIW_ADT_LISTENER_PORT": str(mllp),
           "EBIW_ADT_ALLOWED_SENDERS": SENDER}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(web),
                                 "--workers", "1"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        serving_at(f"http://127.0.0.1:{web}", proc, log)
        wait_for(lambda: _listening(mllp), 60, f"the ADT listener ({log.read_text()})")
        ack = send(mllp, a40("SERVE-1", "MRN0002", "MRN0001"))
        assert msa(ack) == ("AE", "SERVE-1")
        assert str(ack.segment("ERR")[3][0][0]) == "204"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert not _listening(mllp), log.read_text()  # the listener went with the server
