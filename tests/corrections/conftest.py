"""Correction tests: deployments (app + destinations + notifiers) from the delivery tests, an
HL7 MLLP receiver, and helpers to run ``ebiw correct`` and read what it left."""

from __future__ import annotations

import io
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner, Result
from pydicom import Dataset
from sqlalchemy import func, select

from app.cli import cli
from app.db.models import AuditEvent, Delivery, FhirResource, Instance, Patient
from app.workflow.delivery import DeliveryWorker
from tests.clips import make_clip
from tests.conftest import PEERS
from tests.delivery.conftest import (  # noqa: F401  (fixtures)
    NOCHART,
    Deployment,
    deploy,
    orthancs,
)
from tests.emr.conftest import proxy  # noqa: F401  (fixture)
from tests.mllp_peer import Receiver, mllp_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with mllp_receiver() as state:
        yield state


@dataclass(frozen=True)
class WaitingClip:
    """A study holding a photo and a VP8 WebM clip answered 202, waiting for its re-encode."""

    study_uid: str
    clip_uid: str  # the SOP Instance UID the clip will have


def stage_clip(d: Deployment, tmp_path: Path) -> WaitingClip:
    """Open a session (with the body site a clip needs), store a photo, and upload a short
    VP8 WebM, which is staged (202) for the worker to re-encode."""
    session = d.open_session(body_site="14975008", laterality="L")
    d.upload(session, NOCHART)
    webm = make_clip(tmp_path / "clip.webm", frames=15).read_bytes()
    response = d.client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                            data=webm, headers={**d.headers["capture"],
                                                "Content-Type": "video/webm"})
    assert response.status_code == 202, response.get_json()
    return WaitingClip(session["study_instance_uid"], response.get_json()["sop_instance_uid"])


def job_worker(d: Deployment) -> DeliveryWorker:
    """A worker that also does the deployment's jobs (clip re-encoding)."""
    return DeliveryWorker(d.services.db, d.services.archive, d.registry,
                          jobs=d.services.worker_jobs())


def cli_env(d: Deployment) -> dict[str, str]:
    """The ``EBIW_*`` variables of the deployment's data dir, database, destinations and
    notifiers."""
    settings = d.services.settings
    return {"EBIW_DATA_DIR": str(settings.data_dir), "EBIW_ENV": "test",
           "EBIW_DESTINATIONS_FILE": str(settings.destinations_file),
           "EBIW_EMR_NOTIFIERS": ",".join(settings.emr_notifier_names),
           "EBIW_EMR_MLLP_ADDRESS": settings.emr_mllp_address,
           "EBIW_EMR_FHIR_URL": settings.emr_fhir_url,
           "EBIW_COLOR_NORMALIZATION": "1" if settings.color_normalization else "0",
           "EBIW_DATABASE_URL": settings.database_url or "",
           "EBIW_RETENTION_RULES_FILE": str(settings.retention_rules_file or "")}


def ebiw(d: Deployment, *args: str) -> Result:
    """Run ``ebiw`` in this process on the deployment's settings (:func:`cli_env`)."""
    return CliRunner().invoke(cli, list(args), env=cli_env(d))


def snapshot(d: Deployment) -> dict[str, Any]:
    """Everything a correction may change: instance rows (with their rejection columns),
    archive files, delivery rows, FHIR resources and the number of audit records."""
    svc = d.services
    with svc.db.session() as db:
        instances = {r.sop_uid: (r.rejected_at, r.rejection_code, r.rejected_by_kos)
                     for r in db.scalars(select(Instance))}
        deliveries = sorted((r.destination, r.study_uid, r.sop_uid, r.status, r.version)
                            for r in db.scalars(select(Delivery)))
        fhir = sorted((r.logical_id, r.version_id) for r in db.scalars(select(FhirResource)))
        audits = db.scalar(select(func.count()).select_from(AuditEvent))
    files = sorted(str(p.relative_to(svc.settings.archive_root))
                   for p in svc.settings.archive_root.rglob("*.dcm"))
    return {"instances": instances, "files": files, "deliveries": deliveries, "fhir": fhir,
            "audits": audits}


def archived(d: Deployment, sop_uid: str) -> tuple[Instance, Dataset]:
    """The index row and the dataset of an archived instance."""
    svc = d.services
    with svc.db.session() as db:
        row = db.get(Instance, sop_uid)
        assert row is not None
        db.expunge(row)
    return row, pydicom.dcmread(io.BytesIO(svc.archive.read(row)))


def add_patient(d: Deployment, mrn: str, issuer: str, family: str, given: str) -> None:
    """A patient of the local patient index (the embedded patient directory)."""
    with d.services.db.session() as db:
        db.add(Patient(mrn=mrn, issuer=issuer, family=family, given=given, sex="M"))


def validate_kos(path: Path) -> str:
    """dciodvfy's report on a Key Object Selection Document (the shared peer script)."""
    proc = subprocess.run(["bash", str(PEERS / "dicom_validate.sh"), "--iod",
                           "KeyObjectSelectionDocument", str(path)], capture_output=True,
                          text=True, check=False)
    return proc.stdout + proc.stderr
