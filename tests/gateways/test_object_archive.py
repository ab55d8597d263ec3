"""The archive on an S3-compatible object store (moto's server on loopback, tests/s3_peer.py):
one object per SOP Instance UID, never silently replaced, read back by DICOMweb and delivery."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select

from app.db.models import Instance
from app.factory import create_app
from app.gateways.archive import ArchiveConflictError, ArchiveUnavailableError, InstanceKey
from app.gateways.archive.objectstore import ObjectStoreArchive
from app.settings import Settings, SettingsError
from app.web import Services
from app.workflow.delivery import drain
from app.workflow.tokens import create_token
from tests.conftest import CHARTS
from tests.delivery.fakes import FakeStow
from tests.gateways.conftest import race_retries_of_one_upload
from tests.s3_peer import CREDENTIALS, S3Peer, free_port, s3_peer

KEY = InstanceKey("2.25.1", "2.25.2", "2.25.3", "1.2.840.10008.5.1.4.1.1.77.1.4")
OBJECT = "2.25.1/2.25.2/2.25.3.dcm"
PHOTO = CHARTS / "sio_classic.jpg"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Peer]:
    with s3_peer(tmp_path_factory.mktemp("moto") / "moto.log") as peer:
        yield peer


@pytest.fixture
def bucket(moto: S3Peer, monkeypatch: pytest.MonkeyPatch) -> S3Peer:
    """A fresh bucket of the module's peer; boto3 in this process gets the credentials."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    peer = S3Peer(moto.endpoint, f"ebiw-{uuid.uuid4().hex[:12]}")
    peer.client().create_bucket(Bucket=peer.bucket)
    return peer


def make_app(tmp_path: Path, database_url: str, peer: S3Peer, **overrides: object) -> Flask:
    app = create_app({"data_dir": tmp_path / "var", "env": "test",
                      "database_url": database_url, "archive_s3_bucket": peer.bucket,
                      "archive_s3_endpoint": peer.endpoint, **overrides})
    app.extensions["ebiw"].db.create_schema()
    return app


@pytest.fixture
def s3_app(tmp_path: Path, database_url: str, bucket: S3Peer) -> Iterator[Flask]:
    app = make_app(tmp_path, database_url, bucket)
    yield app
    app.extensions["ebiw"].db.engine.dispose()


def svc(app: Flask) -> Services:
    return app.extensions["ebiw"]


def test_store_puts_one_object_and_indexes_it(s3_app: Flask, bucket: S3Peer,
                                              tmp_path: Path) -> None:
    archive = svc(s3_app).archive
    assert isinstance(archive, ObjectStoreArchive)
    with svc(s3_app).db.session() as db:
        row = archive.store(db, KEY, b"DICM-bytes")
    assert row.path == OBJECT and bucket.objects() == {OBJECT: b"DICM-bytes"}
    head = bucket.client().head_object(Bucket=bucket.bucket, Key=OBJECT)
    assert head["Metadata"]["sha256"] == hashlib.sha256(b"DICM-bytes").hexdigest()
    with svc(s3_app).db.session() as db:
        assert archive.store(db, KEY, b"DICM-bytes").sha256 == row.sha256
        with pytest.raises(ArchiveConflictError):
            archive.store(db, KEY, b"other bytes")
        assert db.scalar(select(func.count()).select_from(Instance)) == 1
    assert bucket.objects() == {OBJECT: b"DICM-bytes"}
    assert archive.read(row) == b"DICM-bytes"
    assert not (tmp_path / "var" / "archive").exists()  # nothing on the local disk


@pytest.mark.parametrize("left", [b"orphan from a crash before commit", b"the real one"])
def test_an_object_left_by_an_uncommitted_attempt(s3_app: Flask, bucket: S3Peer,
                                                  left: bytes) -> None:
    """Other bytes are replaced (the index is the authority); the same bytes are kept."""
    bucket.client().put_object(Bucket=bucket.bucket, Key=OBJECT, Body=left,
                               Metadata={"sha256": hashlib.sha256(left).hexdigest()})
    with svc(s3_app).db.session() as db:
        svc(s3_app).archive.store(db, KEY, b"the real one")
    assert bucket.objects() == {OBJECT: b"the real one"}


def test_missing_object_and_unreachable_store(s3_app: Flask, bucket: S3Peer, tmp_path: Path,
                                              database_url: str) -> None:
    archive = svc(s3_app).archive
    with svc(s3_app).db.session() as db:
        row = archive.store(db, KEY, b"DICM-bytes")
    bucket.client().delete_object(Bucket=bucket.bucket, Key=OBJECT)
    with pytest.raises(FileNotFoundError):
        archive.read(row)
    assert s3_app.test_client().get("/readyz").status_code == 200

    dead = make_app(tmp_path / "dead", database_url,
                    S3Peer(f"http://127.0.0.1:{free_port()}", bucket.bucket))
    ready = dead.test_client().get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["checks"]["archive"].startswith("failed")
    with pytest.raises(ArchiveUnavailableError), svc(dead).db.session() as db:
        svc(dead).archive.store(db, InstanceKey("2.25.1", "2.25.2", "2.25.4", KEY.sop_class_uid),
                                b"DICM-bytes")
    with pytest.raises(OSError):
        svc(dead).archive.read(row)
    with pytest.raises(ArchiveUnavailableError):
        svc(dead).archive.delete(row)


def test_delete_removes_the_object_and_a_second_delete_is_fine(s3_app: Flask,
                                                               bucket: S3Peer) -> None:
    """A retention purge deletes objects; a rerun after a crash deletes them again."""
    archive = svc(s3_app).archive
    with svc(s3_app).db.session() as db:
        row = archive.store(db, KEY, b"DICM-bytes")
    archive.delete(row)
    assert bucket.objects() == {}
    archive.delete(row)
    with pytest.raises(FileNotFoundError):
        archive.read(row)


def test_upload_is_served_by_dicomweb_and_delivered_from_the_bucket(
        tmp_path: Path, database_url: str, bucket: S3Peer) -> None:
    fake = FakeStow()
    try:
        config = tmp_path / "destinations.json"
        config.write_text(json.dumps({"destinations": [
            {"name": "pacs", "type": "stow-rs", "url": fake.url}]}))
        app = make_app(tmp_path, database_url, bucket, destinations_file=config,
                       emr_notifiers="", server_timing=True)
        services = svc(app)
        headers = {"Authorization": f"Bearer {create_token(services.db, 'c', 'capture')}"}
        client = app.test_client()
        session = client.post("/api/v1/sessions", headers=headers, json={
            "patient": {"id": "00123456", "issuer": "HOSP-A"}}).get_json()
        put = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                         data=PHOTO.read_bytes(), headers=headers)
        assert put.status_code == 201, put.get_json()
        assert float(put.headers["Server-Timing"].removeprefix("app;dur=")) > 0
        photo = put.get_json()
        objects = bucket.objects()
        with services.db.session() as db:
            rows = db.scalars(select(Instance)).all()
        assert sorted(objects) == sorted(r.path for r in rows) and len(rows) == 2
        assert all(hashlib.sha256(objects[r.path]).hexdigest() == r.sha256 for r in rows)

        study, series = session["study_instance_uid"], photo["series_instance_uid"]
        url = f"/dicomweb/studies/{study}/series/{series}/instances/{photo['sop_instance_uid']}"
        retrieved = client.get(url, headers={**headers, "Accept": "multipart/related; "
                                             'type="application/dicom"; transfer-syntax=*'})
        assert retrieved.status_code == 200
        parts = list(BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {retrieved.headers['Content-Type']}\r\n\r\n".encode()
            + retrieved.data).iter_parts())
        assert hashlib.sha256(parts[0].get_payload(decode=True)).hexdigest() == \
            photo["dicom_sha256"]
        found = client.get(f"/dicomweb/studies/{study}/instances", headers=headers)
        assert len(found.get_json()) == 2

        assert drain(services.db, services.archive, services.registry) >= 1
        assert set(fake.stored) == {r.sop_uid for r in rows}
    finally:
        fake.close()


def test_concurrent_uploads_of_the_same_photo_keep_one_consistent_object(s3_app: Flask,
                                                                          bucket: S3Peer) -> None:
    """Racing retries of one upload: one row and one object each, whose bytes match the index."""
    rows = race_retries_of_one_upload(svc(s3_app))
    objects = bucket.objects()
    assert len(rows) == 2 and sorted(objects) == sorted(r.path for r in rows)
    assert all(hashlib.sha256(objects[r.path]).hexdigest() == r.sha256 for r in rows)


def test_endpoint_needs_a_bucket_and_a_url() -> None:
    with pytest.raises(SettingsError, match="EBIW_ARCHIVE_S3_ENDPOINT"):
        Settings.from_env({"EBIW_ARCHIVE_S3_ENDPOINT": "http://127.0.0.1:9000"})
    with pytest.raises(SettingsError, match="EBIW_ARCHIVE_S3_ENDPOINT"):
        Settings.from_env({"EBIW_ARCHIVE_S3_BUCKET": "b", "EBIW_ARCHIVE_S3_ENDPOINT": "ftp://x"})
