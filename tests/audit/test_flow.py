"""A whole clinical flow leaves exactly one audit record per PHI event, with who, what, when,
where and outcome; the trail exports as FHIR AuditEvents the FHIR validator accepts."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from flask import Flask
from sqlalchemy import select

from app.db.models import AuditEvent
from app.workflow import audit
from app.workflow.accounts import create_user
from tests.audit.conftest import NODE, PASSWORD, PATIENT, Captured, bearer, capture
from tests.conftest import PEERS, services


def test_full_flow_is_audited_once_per_event(audit_app: Flask, tmp_path: Path) -> None:
    client = audit_app.test_client()
    db = services(audit_app).db
    create_user(db, "alice", PASSWORD, "capture")
    admin = bearer(audit_app, "research-admin", "admin")

    login = client.post("/login", json={"username": "alice", "password": PASSWORD})
    assert login.status_code == 200
    csrf = {"X-CSRF-Token": login.get_json()["csrf_token"]}
    assert client.post("/login", json={"username": "alice", "password": "wrong password!"}) \
        .status_code == 401
    identified = client.post("/api/v1/identify", json={"barcode": PATIENT["id"],
                                                       "method": "scanned"}, headers=csrf)
    assert identified.get_json()["status"] == "matched"
    study = capture(client, csrf)
    assert client.get(f"/dicomweb/studies/{study.study_uid}/metadata").status_code == 200
    exported = client.post("/admin/api/exports/deid", json={"studies": [study.study_uid]},
                           headers=admin)
    assert exported.status_code == 201, exported.get_json()
    assert client.post("/logout", headers=csrf).status_code == 204

    with db.session() as s:
        events = s.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
    patient = audit.patient_ref(PATIENT["id"], PATIENT["issuer"])
    stored = [[patient, f"study:{study.study_uid}",
               *(f"instance:{u}" for u in (p["sop_instance_uid"],
                                           p.get("normalized_sop_instance_uid")) if u)]
              for p in study.photos]
    viewed = [f"study:{study.study_uid}",
              *(f"instance:{u}" for u in sorted(study.instances, key=_series_first(study))),
              patient]
    assert [(e.actor, e.role, e.action, e.entities, e.outcome) for e in events] == [
        ("alice", None, "user.login", [], "success"),
        ("alice", None, "user.login", [], "denied"),
        ("alice", "capture", "patient.identify", [patient], "success"),
        ("alice", "capture", "session.open", [patient, f"study:{study.study_uid}"], "success"),
        ("alice", "capture", "photo.store", stored[0], "success"),
        ("alice", "capture", "photo.store", stored[1], "success"),
        ("alice", "capture", "dicomweb.retrieve_study_metadata", viewed, "success"),
        ("research-admin", "admin", "export.deid", [patient, f"study:{study.study_uid}"],
         "success"),
        ("alice", "capture", "user.logout", [], "success"),
    ]
    assert [e.seq for e in events] == list(range(1, 10))
    assert all(e.client == "127.0.0.1" and e.node == NODE for e in events)
    assert events[2].detail == {"method": "scanned", "status": "matched"}
    assert events[7].detail == {"dates": "modified", "exported": len(study.instances),
                                "excluded": 0, "flagged_for_review": 0,
                                "export": exported.get_json()["export"]}
    assert all(a.recorded_at <= b.recorded_at for a, b in itertools.pairwise(events))
    assert audit.verify(db).as_json() == {"ok": True, "records": 9, "broken_at": None}

    listed = client.get("/admin/api/audit?action=photo.store", headers=admin).get_json()
    assert [r["seq"] for r in listed["records"]] == [6, 5]
    by_patient = client.post("/admin/api/audit", data={"patient_id": PATIENT["id"],
                                                       "issuer": PATIENT["issuer"]},
                             headers=admin).get_json()
    assert [r["seq"] for r in by_patient["records"]] == [8, 7, 6, 5, 4, 3]
    assert client.get("/admin/api/audit", headers=bearer(audit_app, "v", "view")) \
        .status_code == 403
    page = client.get("/admin/audit?action=user.", headers=admin)
    assert page.status_code == 200 and b"user.logout" in page.data

    bundle = client.get("/admin/api/audit/fhir", headers=admin)
    assert bundle.mimetype == "application/fhir+json"
    body = bundle.get_json()
    assert [e["resource"]["id"] for e in body["entry"]] == [str(n) for n in range(1, 14)]
    resources = {e["resource"]["id"]: e["resource"] for e in body["entry"]}
    assert resources["2"]["outcome"] == "4" and resources["2"]["subtype"][0]["code"] == "110122"
    assert resources["5"]["type"]["code"] == "110103" and resources["5"]["action"] == "C"
    assert resources["8"]["type"]["code"] == "110106"
    assert resources["7"]["entity"][-1]["what"]["identifier"]["value"] == PATIENT["id"]
    assert (resources["12"]["agent"][0]["name"], resources["12"]["outcome"],
            resources["12"]["type"]["code"]) == ("v", "4", "110101")  # the refused reader
    path = tmp_path / "audit-bundle.json"
    path.write_text(json.dumps(body))
    checked = subprocess.run(["bash", str(PEERS / "fhir_validate.sh"), str(path)],
                             capture_output=True, text=True, check=False, timeout=120)
    assert checked.returncode == 0 and "errors=0" in checked.stdout, checked.stdout


def _series_first(study: Captured) -> Callable[[str], int]:
    """The order DICOMweb lists a study's instances: series, then instance number."""
    originals = [p["sop_instance_uid"] for p in study.photos]
    derived = [p.get("normalized_sop_instance_uid") for p in study.photos]
    order = originals + [u for u in derived if u]
    return order.index
