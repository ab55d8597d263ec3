"""An upload's database work does not grow with its session: the same SQL statements and the
same ORM rows loaded for the 2nd photo of a session as for the 51st (timing is measured in
``bench/bench_session_growth.py``, never asserted here); its answer still holds the photo's
own deliveries."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event

from app.db.models import Base
from tests.conftest import CHARTS, services
from tests.web.test_api import open_session

PHOTO = (CHARTS / "jtvd_classic_07.jpg").read_bytes()


@pytest.fixture
def app_overrides(tmp_path: Path) -> dict[str, object]:
    """One PACS destination (nothing delivers in tests), so every photo queues a delivery."""
    path = tmp_path / "destinations.json"
    path.write_text(json.dumps({"destinations": [
        {"name": "pacs-main", "type": "stow-rs", "url": "http://127.0.0.1:9/dicom-web"}]}))
    return {"destinations_file": path, "color_normalization": False}


class DatabaseWork:
    """SQL statements run and ORM rows loaded, by table, while :meth:`watch` is open."""

    def __init__(self, app: Flask) -> None:
        self.engine = services(app).db.engine
        self.statements = 0
        self.rows: Counter[str] = Counter()

    def _statement(self, *_args: object) -> None:
        self.statements += 1

    def _row(self, target: Base, _context: object) -> None:
        self.rows[type(target).__tablename__] += 1

    @classmethod
    @contextmanager
    def during(cls, app: Flask) -> Iterator[DatabaseWork]:
        work = cls(app)
        event.listen(work.engine, "before_cursor_execute", work._statement)
        event.listen(Base, "load", work._row, propagate=True)
        try:
            yield work
        finally:
            event.remove(work.engine, "before_cursor_execute", work._statement)
            event.remove(Base, "load", work._row)


def _put(client: FlaskClient, headers: dict[str, str], session: str) -> tuple[dict, DatabaseWork]:
    """Upload PHOTO as a new upload; its answer and the database work it took."""
    with DatabaseWork.during(client.application) as work:
        response = client.put(f"/api/v1/sessions/{session}/photos/{uuid.uuid4()}", data=PHOTO,
                              headers={**headers, "Content-Type": "image/jpeg"})
    assert response.status_code == 201, response.get_json()
    return response.get_json(), work


def test_an_upload_reads_as_much_into_a_full_session_as_into_an_empty_one(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    session = open_session(client, auth["capture"])["id"]
    _put(client, auth["capture"], session)  # the first upload also creates the study's rows
    second, early = _put(client, auth["capture"], session)
    for _ in range(48):
        _put(client, auth["capture"], session)
    fifty_first, late = _put(client, auth["capture"], session)

    assert (second["instance_number"], fifty_first["instance_number"]) == (2, 51)
    assert early.statements == late.statements
    assert late.rows == early.rows
    assert late.rows["photo"] <= 1 and late.rows["delivery"] <= 1
    for body in (second, fifty_first):  # the photo's own delivery, not the study's 51
        assert [(d["destination"], d["state"]) for d in body["deliveries"]] == \
            [("pacs-main", "queued")]
    listed = client.get(f"/api/v1/sessions/{session}", headers=auth["capture"]).get_json()
    assert listed["photo_count"] == 51
    assert [p["instance_number"] for p in listed["photos"]] == list(range(1, 52))
