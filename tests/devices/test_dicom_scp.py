"""The C-STORE SCP (``ebiw dicom-scp``) against DCMTK's storescu: the same intake as STOW-RS,
answered with C-STORE statuses (PS3.4 B.2.3) and an Error Comment; callers limited to the
allowed AE titles; 0xA700 while the archive's disk is full, and stored again once it is not."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from app.db.models import AuditEvent, CaptureSession, Delivery, Instance
from app.factory import create_app
from app.pipeline.dicom.builder import PatientInfo
from app.workflow.demo import seed_demo_patients
from app.workflow.services import Services
from app.workflow.tokens import create_token
from tests.conftest import REPO
from tests.devices.conftest import PHOTOS, SECONDARY_CAPTURE, changed, vl_photo
from tests.faults.conftest import fill, small_disk  # noqa: F401 - a fixture used below
from tests.test_serve import free_port, wait_for

DEVICE = "DERMCAM"


@dataclass
class Scp:
    port: int
    data_dir: Path
    services: Services
    log: Path

    def store(self, path: Path, calling: str = DEVICE) -> tuple[int | None, str]:
        """Send ``path`` with storescu (JPEG Baseline proposed as it is); the C-STORE status
        (None: no store happened) and Error Comment, or storescu's refusal."""
        proc = subprocess.run(["storescu", "-d", "-xy", "-aet", calling, "-aec", "EBIW",
                               "127.0.0.1", str(self.port), str(path)],
                              capture_output=True, text=True, timeout=60, check=False)
        out = proc.stdout + proc.stderr
        status = re.search(r"DIMSE Status\s*: 0x([0-9a-fA-F]{4})", out)
        comment = re.search(r"\(0000,0902\) LO \[([^\]]*)\]", out)
        refusal = re.search(r"F: Reason: (.*)", out)
        return (int(status.group(1), 16) if status else None,
                comment.group(1) if comment else refusal.group(1) if refusal else "")


@contextmanager
def _running_scp(tmp_path: Path, archive_dir: Path | None = None) -> Iterator[Scp]:
    data = tmp_path / "var"
    env = {**os.environ, "PYTHONPATH": str(REPO), "EBIW_DATA_DIR": str(data),
           "EBIW_DICOM_SCP_ALLOWED_AETS": f"{DEVICE},OTHERCAM", "EBIW_ENV": "test",
           **({"EBIW_ARCHIVE_DIR": str(archive_dir)} if archive_dir else {})}
    app = create_app({"data_dir": data, "env": "test", "archive_dir": archive_dir})
    svc: Services = app.extensions["ebiw"]
    svc.db.create_schema()
    seed_demo_patients(svc.db, "LOCAL")
    port, log = free_port(), tmp_path / "scp.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "dicom-scp", "--port",
                                 str(port)], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield Scp(port, data, svc, log)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        svc.db.engine.dispose()


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[Scp]:
    with _running_scp(tmp_path) as running:
        yield running


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(data)
    return path


def _instances(svc: Services) -> dict[str, Instance]:
    with svc.db.session() as db:
        return {row.sop_uid: row for row in db.scalars(select(Instance))}


def test_storescu_stores_reconciled_objects_and_gets_clear_refusals(
        scp: Scp, tmp_path: Path) -> None:
    exact = vl_photo(PHOTOS[0])
    other_spelling = vl_photo(PHOTOS[1], PatientInfo(id="00123456", issuer="LOCAL",
                                                     name="Demo^Alice"))
    unknown = vl_photo(PHOTOS[2], PatientInfo(id="00999999", issuer="LOCAL", name="NOBODY^X"))
    secondary = changed(vl_photo(), SOPClassUID=SECONDARY_CAPTURE)
    sent = {name: _file(tmp_path, name, data) for name, data in (
        ("exact", exact), ("other_spelling", other_spelling), ("unknown", unknown),
        ("secondary", secondary))}

    assert scp.store(sent["exact"]) == (0x0000, "")
    assert scp.store(sent["other_spelling"]) == (
        0xB000, "patient attributes set to the directory's values")
    assert scp.store(sent["unknown"]) == (
        0xC001, "no patient directory knows this Patient ID and issuer")
    assert scp.store(sent["secondary"]) == (0x0122, "this SOP class is not accepted here")
    assert scp.store(sent["exact"], calling="INTRUDER") == (None,
                                                            "Calling AE Title Not Recognized")
    assert scp.store(sent["exact"]) == (0x0000, "")  # the same object again: nothing changes
    impostor = vl_photo(PHOTOS[2], sop_uid=pydicom.dcmread(io.BytesIO(exact)).SOPInstanceUID)
    assert scp.store(_file(tmp_path, "impostor", impostor))[0] == 0xC002

    rows = _instances(scp.services)
    uid = {name: pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
           for name, data in (("exact", exact), ("other_spelling", other_spelling))}
    assert set(rows) == set(uid.values())
    stored = {name: pydicom.dcmread(io.BytesIO(scp.services.archive.read(rows[u])))
              for name, u in uid.items()}
    assert str(stored["other_spelling"].PatientName) == "DEMO^ALICE"
    assert stored["other_spelling"].PatientBirthDate == "19500314"
    sent_exact = pydicom.dcmread(io.BytesIO(exact))
    assert stored["exact"].PixelData == sent_exact.PixelData  # the JPEG as it was sent
    assert stored["exact"].file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    with scp.services.db.session() as db:
        sessions = list(db.scalars(select(CaptureSession)))
        deliveries = [(d.destination, d.study_uid) for d in db.scalars(select(Delivery))]
        receipts = [(e.actor, e.outcome) for e in db.scalars(select(AuditEvent))
                    if e.action == "dicom.receive"]
    assert sorted((s.patient_id, s.issuer, s.created_by) for s in sessions) == \
        [("00123456", "LOCAL", f"dicom:{DEVICE}")] * 2
    assert sorted(deliveries) == sorted(("local", s.study_uid) for s in sessions)
    assert sorted(receipts) == sorted([(f"dicom:{DEVICE}", "success")] * 2
                                      + [(f"dicom:{DEVICE}", "failed")] * 3)

    # QIDO-RS of the web app (same data dir) finds what came in by DIMSE.
    app = create_app({"data_dir": scp.data_dir, "env": "test"})
    token = create_token(scp.services.db, "viewer", "view")
    found = app.test_client().get("/dicomweb/instances?PatientID=00123456",
                                  headers={"Authorization": f"Bearer {token}"}).get_json()
    assert {i["00080018"]["Value"][0] for i in found} == set(rows)


def test_a_full_archive_disk_is_out_of_resources_then_stores_once_freed(
        small_disk: Path, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    photo = _file(tmp_path, "photo", vl_photo())
    with _running_scp(tmp_path, archive_dir=small_disk) as scp:
        filler = fill(small_disk, 16 * 1024)
        assert scp.store(photo) == (0xA700, "the archive's disk is full")
        assert _instances(scp.services) == {}
        assert not [p for p in small_disk.rglob("*") if p.is_file() and p != filler]
        filler.unlink()
        assert scp.store(photo) == (0x0000, "")
        assert len(_instances(scp.services)) == 1


def test_serve_runs_the_scp_beside_the_workers_when_asked(tmp_path: Path) -> None:
    """EBIW_DICOM_SCP_SERVE=on: ``ebiw serve`` answers C-ECHO on the SCP port and stops the SCP
    when it stops."""
    web, dimse, log = free_port(), free_port(), tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "EBIW_DATA_DIR": str(tmp_path / "var"),
           "EBIW_DICOM_SCP_SERVE": "on", "EBIW_DICOM_SCP_PORT": str(dimse),
           "EBIW_DICOM_SCP_ALLOWED_AETS": DEVICE}

    def echo() -> int:
        return subprocess.run(["echoscu", "-aet", DEVICE, "-aec", "EBIW", "127.0.0.1",
                               str(dimse)], capture_output=True, timeout=30,
                              check=False).returncode

    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(web),
                                 "--workers", "1"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{web}", proc, log)
        deadline = time.monotonic() + 60
        while echo() != 0:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert echo() != 0, log.read_text()  # the SCP went with the server
