"""A photo rejected while its session's patient was not verified yet (``EBIW_UNKNOWN_PATIENTS=
hold``: nothing queued) is never queued to the PACS when the patient is confirmed; the other
photo and the rejection note are."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from app.db.models import Delivery, DeliveryKind
from app.pipeline.dicom.kos import RejectionReason
from app.workflow import corrections
from tests.corrections.conftest import add_patient
from tests.corrections.test_reject import PACS
from tests.delivery.conftest import NOCHART, SMALL, Deployment


def pacs_rows(d: Deployment, study: str) -> list[str]:
    with d.services.db.session() as db:
        return sorted(db.scalars(select(Delivery.sop_uid).where(
            Delivery.study_uid == study, Delivery.kind == DeliveryKind.PACS)))


def test_confirming_the_patient_queues_no_instance_rejected_meanwhile(
        deploy: Callable[..., Deployment]) -> None:
    d = deploy(PACS, unknown_patients="hold", color_normalization=False)
    session = d.open_session(patient={"id": "00999999", "issuer": "HOSP-A"})
    assert session["patient_verified"] is False
    study = session["study_instance_uid"]
    bad = d.upload(session, SMALL[0])["sop_instance_uid"]
    kept = d.upload(session, NOCHART)["sop_instance_uid"]
    note = corrections.reject(d.services, bad, RejectionReason.QUALITY, actor="admin-user")
    assert pacs_rows(d, study) == []  # held: nothing queued

    add_patient(d, "00999999", "HOSP-A", "LATE", "LARA")
    verified = d.client.post(f"/api/v1/sessions/{session['id']}/verify-patient",
                             headers=d.headers["capture"])
    assert verified.status_code == 200, verified.get_json()
    assert pacs_rows(d, study) == sorted([kept, note.kos_sop_uid])
