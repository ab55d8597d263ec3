"""GET /api/v1/sessions/recent: the caller's own studies of the last 24 h and where their photos
went; the viewer link in every upload and session answer."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.db.models import AuditEvent, CaptureSession
from app.workflow.delivery import drain
from app.workflow.tokens import create_token
from tests.conftest import services
from tests.delivery.fakes import FakeStow, ok
from tests.web.test_api import PHOTO, open_session

RECENT = "/api/v1/sessions/recent"


def upload(client: FlaskClient, headers: dict[str, str], session_id: str) -> dict:
    put = client.put(f"/api/v1/sessions/{session_id}/photos/{uuid.uuid4()}", data=PHOTO,
                     headers={**headers, "Content-Type": "image/jpeg"})
    assert put.status_code == 201, put.get_json()
    return put.get_json()


def deliver(app: Flask) -> None:
    svc = services(app)
    drain(svc.db, svc.archive, svc.registry)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[FakeStow]:
    """A STOW-RS PACS that stores, or refuses (403, for good) while ``refusing`` is set."""
    fake = FakeStow(lambda number, uids: (403, None) if fake.refusing else ok(number, uids))
    fake.refusing = False  # type: ignore[attr-defined]
    yield fake
    fake.close()


@pytest.fixture
def app_overrides(tmp_path: Path, pacs: FakeStow,
                  request: pytest.FixtureRequest) -> dict[str, object]:
    """The app delivers to :func:`pacs` (and notifies the local EMR unless a test says
    otherwise, with ``indirect`` parameters)."""
    config = tmp_path / "destinations.json"
    config.write_text(json.dumps({"destinations": [
        {"name": "pacs", "type": "stow-rs", "url": pacs.url}]}))
    return {"destinations_file": config, **getattr(request, "param", {})}


def test_lists_only_the_callers_sessions_of_the_last_day_with_their_state(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    mine = auth["capture"]
    public = services(app).settings.public_url
    first = open_session(client, mine)
    photo = upload(client, mine, first["id"])
    uid = first["study_instance_uid"]
    assert first["viewer_url"] == photo["viewer_url"] == f"{public}/studies/{uid}"
    empty = open_session(client, mine, id=str(uuid.uuid4()))
    old = open_session(client, mine, id=str(uuid.uuid4()))
    with services(app).db.session() as db:
        db.get(CaptureSession, old["id"]).created_at = datetime.now(UTC) - timedelta(hours=25)
    other = {"Authorization": f"Bearer {create_token(services(app).db, 'someone', 'capture')}"}
    open_session(client, other, id=str(uuid.uuid4()))

    answer = client.get(RECENT, headers=mine)
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    listed = answer.get_json()
    assert [s["id"] for s in listed] == [empty["id"], first["id"]]  # newest first
    assert listed[0]["state"] == "processing" and listed[0]["photo_count"] == 0
    study = listed[1]
    assert study["patient"] == {"id": "00123456", "issuer": "HOSP-A", "name": "DEMO^ALICE"}
    assert study["viewer_url"] == f"{public}/studies/{uid}"
    assert (study["photo_count"], study["state"], study["reason"]) == (1, "stored", None)
    # the original and its colour-normalized copy to the PACS, the study's notice to the EMR
    assert (study["pacs"], study["emr"]) == ({"sent": 0, "total": 2}, {"sent": 0, "total": 1})

    deliver(app)
    study = client.get(RECENT, headers=mine).get_json()[1]
    assert (study["state"], study["pacs"], study["emr"]) == (
        "in_emr", {"sent": 2, "total": 2}, {"sent": 1, "total": 1})
    assert client.get(f"/studies/{uid}", headers=mine).status_code == 200
    assert client.get(f"/api/v1/sessions/{first['id']}", headers=mine).get_json()[
        "viewer_url"] == f"{public}/studies/{uid}"
    assert "ALICE" not in caplog.text and "00123456" not in caplog.text
    with services(app).db.session() as db:
        listings = [e for e in db.scalars(select(AuditEvent).where(
            AuditEvent.action == "session.read")) if f"study:{empty['study_instance_uid']}"
            in e.entities]  # only the list names the session without photos
    assert len(listings) == 2 and all(e.actor == "capture-user" for e in listings)
    assert {"patient:HOSP-A|00123456", f"study:{uid}"} <= set(listings[0].entities)
    assert client.get(RECENT).status_code == 401
    assert client.get(RECENT, headers=auth["view"]).status_code == 403


@pytest.mark.parametrize("app_overrides", [{"emr_notifiers": ""}], indirect=True)
def test_in_pacs_once_delivered_and_failed_with_the_reason_when_refused(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        pacs: FakeStow) -> None:
    mine = auth["capture"]
    delivered = open_session(client, mine)
    upload(client, mine, delivered["id"])
    deliver(app)
    refused = open_session(client, mine, id=str(uuid.uuid4()))
    upload(client, mine, refused["id"])
    pacs.refusing = True  # type: ignore[attr-defined]
    deliver(app)
    by_id = {s["id"]: s for s in client.get(RECENT, headers=mine).get_json()}
    assert (by_id[delivered["id"]]["state"], by_id[delivered["id"]]["pacs"]) == (
        "in_pacs", {"sent": 2, "total": 2})
    failed = by_id[refused["id"]]
    assert (failed["state"], failed["pacs"]["sent"]) == ("failed", 0)
    assert "403" in failed["reason"] and "00123456" not in failed["reason"]
