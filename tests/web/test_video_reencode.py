"""A clip DICOM does not take as recorded (VP8 WebM from a browser's MediaRecorder, made here
with PyAV from a real photo) is answered 202 and staged; the worker re-encodes it to H.264
and stores it as an H.264 upload is stored. Idempotency, a crash mid-way and a clip that
cannot be re-encoded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from app.db.models import AuditEvent, CaptureSession, Delivery, StagedClip, as_utc
from app.durable import STALE_AFTER_S
from app.pipeline.dicom.video import VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
from app.pipeline.video import H264_HIGH_41, probe
from app.workflow import audit
from app.workflow.delivery import REENCODE_QUEUE, DeliveryWorker, utcnow
from app.workflow.intake import CLIP_NEEDS_SITE, VIDEO_SERIES_NUMBER
from tests.clips import make_clip
from tests.conftest import REPO, dicom_validate, services
from tests.web.test_api import counts, open_session

FRAMES = 45


@pytest.fixture(scope="module")
def webm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A VP8 WebM with Opus audio, as a browser records it (made once: libvpx is slow)."""
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.webm", frames=FRAMES,
                     audio=True).read_bytes()


def _worker(app: Flask) -> DeliveryWorker:
    svc = services(app)
    return DeliveryWorker(svc.db, svc.archive, svc.registry, jobs=svc.worker_jobs())


def _put(client: FlaskClient, headers: dict[str, str], session: str, upload: str,
         data: bytes) -> tuple[int, dict]:
    response = client.put(f"/api/v1/sessions/{session}/photos/{upload}", data=data,
                          headers={**headers, "Content-Type": "video/webm"})
    return response.status_code, response.get_json()


def _listed(client: FlaskClient, headers: dict[str, str], session: str) -> list[dict]:
    return client.get(f"/api/v1/sessions/{session}", headers=headers).get_json()["photos"]


def _staged_files(app: Flask) -> list[Path]:
    folder = services(app).settings.data_dir / "staged-clips"
    return sorted(folder.iterdir()) if folder.exists() else []


def _reencode_jobs(app: Flask) -> list[tuple[str, int]]:
    with services(app).db.session() as db:
        return [(row.status, row.attempts) for row in db.scalars(
            select(Delivery).where(Delivery.destination == REENCODE_QUEUE))]


def test_a_vp8_clip_is_202_then_reencoded_by_the_worker_and_stored(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], webm: bytes,
        tmp_path: Path) -> None:
    capture = auth["capture"]
    session = open_session(client, capture)["id"]
    upload = str(uuid.uuid4())
    status, body = _put(client, capture, session, upload, webm)
    assert status == 202, body
    assert (body["status"], body["media_type"], body["reason"]) == (
        "processing", "video/webm", None)
    assert _put(client, capture, session, upload, webm) == (202, body)  # same bytes: same body
    other = webm[:-1] + bytes([webm[-1] ^ 1])
    status, conflict = _put(client, capture, session, upload, other)
    assert status == 409 and conflict["error"]["code"] == "conflict"
    assert counts(app) == (0, 0, 0)  # nothing stored in the request
    [staged] = _staged_files(app)
    assert staged.read_bytes() == webm
    assert _listed(client, capture, session) == [body]
    recent = client.get("/api/v1/sessions/recent", headers=capture).get_json()
    assert recent[0]["state"] == "processing"

    settings = services(app).settings
    worker = subprocess.run(  # `ebiw worker --drain`, as deployed
        [sys.executable, "-m", "app.cli", "worker", "--drain", "--threads", "1"], cwd=REPO,
        env={**os.environ, "EBIW_ENV": "test", "EBIW_DATA_DIR": str(settings.data_dir),
             "EBIW_DATABASE_URL": settings.database_url}, capture_output=True, text=True,
        timeout=300)
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert json.loads(worker.stdout.splitlines()[-1])["handled"] >= 1
    assert _reencode_jobs(app) == [("sent", 1)]
    assert _staged_files(app) == []
    assert counts(app) == (1, 1, 1)
    with services(app).db.session() as db:  # the job audited as a stored instance, no notice
        jobs = [(e.action, e.outcome, e.entities) for e in db.scalars(select(AuditEvent).where(
            AuditEvent.actor == audit.DELIVERY_ACTOR)) if e.detail["destination"] == REENCODE_QUEUE]
    assert [(action, outcome) for action, outcome, _ in jobs] == [
        ("reencode.stored", audit.SUCCESS)]
    assert f"instance:{body['sop_instance_uid']}" in jobs[0][2]
    [stored] = _listed(client, capture, session)
    assert stored["status"] == "stored" and stored["upload_uuid"] == upload
    assert (stored["sop_instance_uid"], stored["instance_number"], stored["sha256"]) == (
        body["sop_instance_uid"], body["instance_number"], body["sha256"])
    assert (stored["media_type"], stored["passthrough"]) == ("video/webm", False)
    status, again = _put(client, capture, session, upload, webm)
    assert (status, again["status"]) == (200, "stored")
    assert _put(client, capture, session, upload, other)[0] == 409

    path = next(services(app).settings.archive_root.rglob(f"{body['sop_instance_uid']}.dcm"))
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
    assert ds.file_meta.TransferSyntaxUID == H264_HIGH_41
    source = tmp_path / "source.webm"
    source.write_bytes(webm)
    assert ds.NumberOfFrames == probe(source).frames == FRAMES
    assert (ds.SeriesNumber, ds.Rows, ds.Columns) == (VIDEO_SERIES_NUMBER, 240, 320)
    errors, _, out = dicom_validate(path, iod="VideoPhotographicImage", decode=False)
    assert errors == 0, out


class Crash(BaseException):
    """Stands for the worker process dying (kill -9): nothing after it runs but ``finally``."""


def test_a_worker_that_dies_mid_reencode_leaves_the_job_to_be_retried(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], webm: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import app.workflow.intake as intake

    session = open_session(client, auth["capture"])["id"]
    upload = str(uuid.uuid4())
    assert _put(client, auth["capture"], session, upload, webm)[0] == 202
    real = intake.reencode_h264

    def dies_half_way(source: Path, target: Path) -> None:
        real(source, target)
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        raise Crash

    monkeypatch.setattr(intake, "reencode_h264", dies_half_way)
    crashed = _worker(app)
    with pytest.raises(Crash):
        crashed.run_once()
    assert counts(app) == (0, 0, 0)  # no half-stored instance
    assert [p.read_bytes() for p in _staged_files(app)] == [webm]  # the staged clip is kept
    assert _reencode_jobs(app) == [("pending", 0)]  # still leased by the dead worker
    with services(app).db.session() as db:  # for the job's lease: the longest clip's re-encode
        [until] = db.scalars(select(Delivery.claimed_until)
                             .where(Delivery.destination == REENCODE_QUEUE))
    assert as_utc(until) > utcnow() + timedelta(seconds=600)
    assert _worker(app).run_once() == 0

    monkeypatch.setattr(intake, "reencode_h264", real)
    with services(app).db.session() as db:  # its lease runs out (time moved on, not slept)
        db.execute(update(Delivery).where(Delivery.destination == REENCODE_QUEUE)
                   .values(claimed_until=utcnow() - timedelta(seconds=1)))
    assert _worker(app).drain() >= 1
    assert counts(app) == (1, 1, 1) and _staged_files(app) == []
    assert _reencode_jobs(app) == [("sent", 1)]
    assert [p["status"] for p in _listed(client, auth["capture"], session)] == ["stored"]


def test_a_clip_that_cannot_be_reencoded_is_a_visible_failure(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        webm: bytes) -> None:
    capture = auth["capture"]
    session = open_session(client, capture)["id"]
    upload = str(uuid.uuid4())
    assert _put(client, capture, session, upload, webm)[0] == 202
    [staged] = _staged_files(app)
    staged.write_bytes(webm[: len(webm) // 2])  # the disk damaged it after it was staged
    assert _worker(app).drain() >= 1
    assert counts(app) == (0, 0, 0)
    [job] = _reencode_jobs(app)
    assert job == ("dead", 1)
    [shown] = _listed(client, capture, session)
    assert (shown["status"], shown["reason"]) == (
        "failed", "the staged clip is missing or damaged")
    recent = client.get("/api/v1/sessions/recent", headers=capture).get_json()
    assert (recent[0]["state"], recent[0]["reason"]) == (
        "failed", "the staged clip is missing or damaged")
    assert _staged_files(app) == [staged]  # kept, not silently lost
    with services(app).db.session() as db:
        assert db.scalar(select(func.count()).select_from(StagedClip)) == 1


def test_a_clip_staged_for_a_session_without_a_body_site_fails_visibly_before_any_work(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        webm: bytes) -> None:
    """A clip staged before uploads checked the body site (the session's site is cleared here
    to make one): the worker refuses it as a permanent, visible failure, staged file kept."""
    capture = auth["capture"]
    session = open_session(client, capture)["id"]
    assert _put(client, capture, session, str(uuid.uuid4()), webm)[0] == 202
    with services(app).db.session() as db:
        row = db.get(CaptureSession, session)
        assert row is not None
        row.body_site, row.laterality = None, None
    assert _worker(app).drain() >= 1
    assert counts(app) == (0, 0, 0) and _reencode_jobs(app) == [("dead", 1)]
    [shown] = _listed(client, capture, session)
    assert (shown["status"], shown["reason"]) == ("failed", CLIP_NEEDS_SITE)
    assert len(_staged_files(app)) == 1


@pytest.mark.parametrize(("limits", "message"), [
    ({"max_video_seconds": 1}, "more than the 1 s allowed"),
    ({"max_upload_bytes": 4000}, "the upload is too large"),
])
def test_a_vp8_clip_past_the_limits_is_413_and_nothing_is_staged(
        tmp_path: Path, webm: bytes, limits: dict, message: str) -> None:
    from app.factory import create_app
    from app.workflow.tokens import create_token

    small = create_app({"data_dir": tmp_path, "env": "test", **limits})
    services(small).db.create_schema()
    headers = {"Authorization": f"Bearer {create_token(services(small).db, 'n', 'capture')}"}
    client = small.test_client()
    session = open_session(client, headers)["id"]
    got, body = _put(client, headers, session, str(uuid.uuid4()), webm)
    assert got == 413 and message in body["error"]["message"], body
    assert _staged_files(small) == [] and _reencode_jobs(small) == []
    with services(small).db.session() as db:
        assert db.scalar(select(func.count()).select_from(StagedClip)) == 0


def test_a_worker_start_sweeps_stale_staged_files_no_clip_names(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], webm: bytes) -> None:
    session = open_session(client, auth["capture"])["id"]
    assert _put(client, auth["capture"], session, str(uuid.uuid4()), webm)[0] == 202
    [waiting] = _staged_files(app)
    stored = waiting.with_name(f"{uuid.uuid4()}.{'0' * 64}")  # its clip was stored, then a crash
    fresh = waiting.with_name(f"{uuid.uuid4()}.{'1' * 64}")  # being staged: no row yet
    for path in (stored, fresh):
        path.write_bytes(webm)
    old = time.time() - STALE_AFTER_S - 60
    for path in (waiting, stored):
        os.utime(path, (old, old))
    assert services(app).intake.sweep_staged_clips() == 1
    assert _staged_files(app) == sorted([waiting, fresh])
