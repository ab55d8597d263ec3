"""The local archive: durable, one copy per SOP Instance UID, never silently replaced."""

from __future__ import annotations

import hashlib

import pytest
from flask import Flask
from sqlalchemy import func, select

from app.db.models import Instance
from app.durable import write_durably
from app.gateways.archive import ArchiveConflictError, InstanceKey
from app.gateways.archive.base import instance_path
from tests.conftest import services
from tests.gateways.conftest import race_retries_of_one_upload

KEY = InstanceKey("2.25.1", "2.25.2", "2.25.3", "1.2.840.10008.5.1.4.1.1.77.1.4")


def test_store_places_and_indexes_the_file(app: Flask) -> None:
    svc = services(app)
    with svc.db.session() as db:
        row = svc.archive.store(db, KEY, b"DICM-bytes")
    path = svc.settings.archive_root / "2.25.1" / "2.25.2" / "2.25.3.dcm"
    assert path.read_bytes() == b"DICM-bytes" and row.path == "2.25.1/2.25.2/2.25.3.dcm"
    assert not list(path.parent.glob(".tmp-*"))
    with svc.db.session() as db:
        again = svc.archive.store(db, KEY, b"DICM-bytes")
        assert again.sha256 == row.sha256
        with pytest.raises(ArchiveConflictError):
            svc.archive.store(db, KEY, b"other bytes")
        assert db.scalar(select(func.count()).select_from(Instance)) == 1
    assert path.read_bytes() == b"DICM-bytes"


def test_a_file_left_by_an_uncommitted_attempt_is_replaced(app: Flask) -> None:
    svc = services(app)
    target = svc.settings.archive_root / instance_path(KEY)
    write_durably(target, b"orphan from a crash before commit")
    with svc.db.session() as db:
        svc.archive.store(db, KEY, b"the real one")
    assert target.read_bytes() == b"the real one"


@pytest.mark.parametrize("uid", ["../../etc", "2.25.1/..", "", "1." * 40])
def test_file_names_only_from_valid_uids(uid: str) -> None:
    with pytest.raises(ValueError):
        instance_path(InstanceKey(uid, "2.25.2", "2.25.3", "x"))


def test_concurrent_uploads_of_the_same_photo_keep_one_consistent_copy(app: Flask) -> None:
    """Racing retries of one upload: one row, one file, whose bytes match the index."""
    svc = services(app)
    rows = race_retries_of_one_upload(svc)
    assert len(rows) == 2  # the original and its colour-normalized instance, once each
    for row in rows:
        stored = (svc.settings.archive_root / row.path).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == row.sha256
