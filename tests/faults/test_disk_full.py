"""A full disk under the archive, the staging area and the database: the upload answers 507
with a clear message, nothing is half-stored, and the same upload succeeds once space is free."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.db.models import BatchItem, Instance, Photo
from app.factory import create_app
from app.workflow.tokens import create_token
from tests.conftest import CHARTS, REPO, services
from tests.faults.conftest import fill
from tests.web.test_api import open_session

PHOTO = (CHARTS / "oycq_grille_iphone.jpg").read_bytes()
JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture
def app_overrides(small_disk: Path) -> dict[str, object]:
    return {"archive_dir": small_disk / "archive"}


def stored(app: Flask) -> tuple[int, list[Instance]]:
    with services(app).db.session() as db:
        return (db.scalar(select(func.count()).select_from(Photo)) or 0,
                list(db.scalars(select(Instance))))


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} \
        if root.exists() else set()


def test_full_archive_answers_507_stores_nothing_and_the_retry_succeeds(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        small_disk: Path) -> None:
    session = open_session(client, auth["capture"])
    root = services(app).settings.archive_root
    root.mkdir(parents=True)
    filler = fill(small_disk, leave=64 * 1024)  # less than one instance
    url = f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}"

    full = client.put(url, data=PHOTO, headers={**auth["capture"], **JPEG})
    assert full.status_code == 507, full.get_data(as_text=True)
    assert full.get_json() == {"error": {
        "code": "insufficient_storage",
        "message": "the server's storage is full: nothing was stored; try again later"}}
    assert full.headers["Retry-After"] == "10"
    assert stored(app) == (0, [])
    assert files(root) == set()  # no temporary or partial file left

    filler.unlink()
    again = client.put(url, data=PHOTO, headers={**auth["capture"], **JPEG})
    assert again.status_code == 201, again.get_json()
    photos, instances = stored(app)
    assert photos == 1 and len(instances) >= 1
    assert files(root) == {i.path for i in instances}
    for instance in instances:
        assert hashlib.sha256((root / instance.path).read_bytes()).hexdigest() == instance.sha256


def test_a_full_disk_under_the_archive_mid_photo_leaves_no_index_row_to_a_missing_file(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        small_disk: Path) -> None:
    """Room for the original but not for its colour-normalized copy: the transaction that would
    index both rolls back; the retry writes both and indexes both."""
    session = open_session(client, auth["capture"])
    root = services(app).settings.archive_root
    root.mkdir(parents=True)
    probe = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}", data=PHOTO,
                       headers={**auth["capture"], **JPEG})
    assert probe.status_code == 201
    _, first = stored(app)
    assert len(first) == 2, "the photo needs a normalized copy for this test"
    original = next(i for i in first if i.sop_uid == probe.get_json()["sop_instance_uid"])
    filler = fill(small_disk, leave=original.size + 32 * 1024)
    url = f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}"

    full = client.put(url, data=PHOTO, headers={**auth["capture"], **JPEG})
    assert full.status_code == 507, full.get_data(as_text=True)
    photos, instances = stored(app)
    assert (photos, len(instances)) == (1, 2)
    for instance in instances:
        assert hashlib.sha256((root / instance.path).read_bytes()).hexdigest() == instance.sha256
    assert not [f for f in files(root) if ".tmp-" in f]

    filler.unlink()
    again = client.put(url, data=PHOTO, headers={**auth["capture"], **JPEG})
    assert again.status_code == 201, again.get_json()
    photos, instances = stored(app)
    assert (photos, len(instances)) == (2, 4)
    assert files(root) == {i.path for i in instances}


@pytest.mark.parametrize("leave", [0, 256 * 1024])
def test_a_full_data_dir_refuses_a_batch_photo_with_507_and_takes_it_when_freed(
        tmp_path: Path, small_disk: Path, leave: int) -> None:
    """The whole data dir (SQLite, batch staging, archive) on the full disk: the staging write
    fails (ENOSPC), and with no room at all the audit record too (SQLITE_FULL, which withholds
    the answer as 507, not as an audit 503); no item is held, and the same item is taken once
    space is free."""
    flask_app = create_app({"data_dir": small_disk / "var", "env": "test"})
    db = services(flask_app).db
    db.create_schema()
    headers = {"Authorization": f"Bearer {create_token(db, 'capture-user', 'capture')}"}
    client = flask_app.test_client()
    batch = client.post("/api/v1/batches", json={}, headers=headers)
    assert batch.status_code == 201, batch.get_json()
    url = f"/api/v1/batches/{batch.get_json()['id']}/items/{uuid.uuid4()}?order=0"
    filler = fill(small_disk, leave=leave)
    try:
        full = client.put(url, data=PHOTO, headers={**headers, **JPEG})
        assert full.status_code == 507, full.get_data(as_text=True)
        assert full.get_json()["error"]["code"] == "insufficient_storage"
        filler.unlink()
        with db.session() as session:
            assert session.scalar(select(func.count()).select_from(BatchItem)) == 0
        again = client.put(url, data=PHOTO, headers={**headers, **JPEG})
        assert again.status_code == 201, again.get_json()
        staged = [p for p in (small_disk / "var" / "batches").rglob("*") if p.is_file()]
        assert not [p for p in staged if p.name.startswith(".tmp-")]
    finally:
        db.engine.dispose()


def test_a_full_database_disk_answers_507_and_the_retry_indexes_what_it_stores(
        tmp_path: Path, small_disk: Path) -> None:
    """SQLite (the data dir) on the full disk, the archive elsewhere: the photo's files are
    written, its rows cannot be (SQLITE_FULL): 507, no row; the retry replaces the files and
    indexes them."""
    flask_app = create_app({"data_dir": small_disk / "var", "env": "test",
                            "archive_dir": tmp_path / "archive"})
    db = services(flask_app).db
    db.create_schema()
    headers = {"Authorization": f"Bearer {create_token(db, 'capture-user', 'capture')}"}
    client = flask_app.test_client()
    try:
        session = open_session(client, headers)
        url = f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}"
        filler = fill(small_disk, leave=0)
        full = client.put(url, data=PHOTO, headers={**headers, **JPEG})
        assert full.status_code == 507, full.get_data(as_text=True)
        assert full.get_json()["error"]["code"] == "insufficient_storage"
        filler.unlink()
        assert stored(flask_app) == (0, [])
        again = client.put(url, data=PHOTO, headers={**headers, **JPEG})
        assert again.status_code == 201, again.get_json()
        photos, instances = stored(flask_app)
        assert photos == 1 and files(tmp_path / "archive") == {i.path for i in instances}
    finally:
        db.engine.dispose()


def test_a_browser_on_an_html_route_gets_the_plain_page_with_the_same_message(
        app: Flask) -> None:
    """ENOSPC wherever it surfaces (here a route of the test's own) is the 507 page for a
    browser, with the message of the JSON answer and Retry-After."""

    @app.get("/full-disk-probe")
    def full_disk_probe() -> str:
        raise OSError(errno.ENOSPC, "No space left on device", "/archive/PHI-looking-path")

    page = app.test_client().get("/full-disk-probe", headers={"Accept": "text/html"})
    assert page.status_code == 507
    assert page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert "The server's storage is full: nothing was stored; try again later." in text \
        .replace("&#39;", "'")
    assert "PHI-looking-path" not in text
    assert page.headers["Retry-After"] == "10"


def test_ebiw_import_stops_with_a_clear_message_on_a_full_archive_and_resumes(
        tmp_path: Path, small_disk: Path) -> None:
    """``ebiw import`` whose archive fills up while storing: exit 1 with one line saying so
    (no traceback); run again once space is free, it stores every photo once."""
    env = {**os.environ, "EBIW_DATA_DIR": str(tmp_path / "var"), "EBIW_ENV": "test",
           "EBIW_DATABASE_URL": "", "EBIW_ARCHIVE_DIR": str(small_disk / "archive"),
           "PYTHONPATH": str(REPO)}
    photos = [str(CHARTS / name) for name in ("jtvd_classic_01.jpg", "jtvd_classic_02.jpg",
                                              "sio_classic.jpg")]
    command = [sys.executable, "-m", "app.cli", "import", "--patient-id", "00123456",
               "--issuer", "HOSP-A", *photos]
    filler = fill(small_disk, leave=64 * 1024)
    full = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert full.returncode == 1, full.stderr[-2000:]
    assert full.stderr.strip().splitlines()[-1] == (
        "Error: the storage is full: nothing more was stored; free space and run the same "
        "import again (it resumes)")
    assert "Traceback" not in full.stderr
    assert not [p for p in (small_disk / "archive").rglob("*") if p.is_file()]

    filler.unlink()
    again = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    records = [json.loads(line) for line in again.stdout.splitlines()]
    assert [r["status"] for r in records] == ["stored"] * 3
    assert len({r["sop_instance_uid"] for r in records}) == 3
