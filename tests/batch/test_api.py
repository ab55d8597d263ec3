"""Batch API on real photos: slip-sheet sorting, nothing delivered before confirmation, review
moves, confirmation through the normal intake, label photos in their own series, idempotence."""

from __future__ import annotations

import hashlib
import io
import uuid
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.db.models import Batch, BatchGroup, BatchItem, CaptureSession, Delivery, Instance, Photo
from app.web.batch import _EXTENSION as BATCHES_EXTENSION
from app.workflow.intake import LABEL_SERIES_NUMBER, NORMALIZED_SERIES_NUMBER
from tests.batch.conftest import (
    ISSUER,
    UNKNOWN_MRN,
    Shot,
    import_patients,
    upload_uuid_for,
)
from tests.conftest import CHARTS, services

DESTINATIONS = """{"destinations": [{"name": "pacs", "type": "stow-rs",
                   "url": "http://127.0.0.1:9/dicom-web"}]}"""


@pytest.fixture
def app_overrides(tmp_path: Path) -> dict[str, object]:
    """A PACS destination and the EMR notifier, so queued deliveries would show as rows."""
    path = tmp_path / "destinations.json"
    path.write_text(DESTINATIONS)
    return {"destinations_file": path}


def rows(app: Flask, model: type) -> int:
    with services(app).db.session() as db:
        return db.scalar(select(func.count()).select_from(model)) or 0


def put_all(client: FlaskClient, headers: dict[str, str], batch_id: str,
            shots: tuple[Shot, ...]) -> dict[str, str]:
    """PUT every shot (file order = its index); return name -> upload UUID."""
    names = {}
    for order, shot in enumerate(shots):
        upload = upload_uuid_for(batch_id, hashlib.sha256(shot.data).hexdigest())
        answer = client.put(f"/api/v1/batches/{batch_id}/items/{upload}?order={order}",
                            data=shot.data, headers={**headers, "Content-Type": "image/jpeg"})
        assert answer.status_code == 201, answer.get_json()
        names[shot.name] = upload
    return names


def groups_by_mrn(batch: dict) -> dict[str | None, list[str]]:
    """MRN of each group's identifier (None: unsorted) -> upload UUIDs in capture order."""
    out: dict[str | None, list[str]] = {g["identifier"]["mrn"]: g["items"]
                                        for g in batch["groups"] if g["items"]}
    out[None] = batch["unsorted"]
    return out


def test_slip_sheet_batch_sorts_holds_and_confirms(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], tmp_path: Path,
        batch_shots: tuple[Shot, ...]) -> None:
    import_patients(app, tmp_path)
    capture = auth["capture"]
    opened = client.post("/api/v1/batches", json={"department": "Dermatology"},
                         headers=capture)
    assert opened.status_code == 201
    batch_id = opened.get_json()["id"]
    names = put_all(client, capture, batch_id, batch_shots)

    # Sorted exactly as the slip sheets say, in capture order.
    batch = client.get(f"/api/v1/batches/{batch_id}", headers=capture).get_json()
    expected: dict[str | None, list[str]] = {}
    by_minute = sorted(batch_shots, key=lambda s: (s.minute if s.minute is not None else 2.5))
    for shot in by_minute:
        expected.setdefault(shot.expect, []).append(names[shot.name])
    assert groups_by_mrn(batch) == expected
    items = {i["upload_uuid"]: i for i in batch["items"]}
    assert {s.name for s in batch_shots if items[names[s.name]]["role"] == "label"} == {
        s.name for s in batch_shots if s.role == "label"}
    qr_item = items[names[next(s.name for s in batch_shots if "qrcode" in s.name)]]
    assert qr_item["barcode"] and qr_item["role"] == "clinical"
    lookups = {g["identifier"]["mrn"]: g["lookup"]["status"] for g in batch["groups"]}
    assert lookups == {"15182881": "matched", "42094043": "matched", "2021200000": "matched",
                       UNKNOWN_MRN: "not_found"}

    # Nothing stored, queued or notified before confirmation; the bytes are staged.
    assert (rows(app, Photo), rows(app, Instance), rows(app, Delivery),
            rows(app, CaptureSession)) == (0, 0, 0, 0)
    assert not services(app).settings.archive_root.exists() or not any(
        services(app).settings.archive_root.rglob("*.dcm"))

    # The same bytes again: 200, nothing new. Other bytes under that UUID: 409.
    first = batch_shots[0]
    again = client.put(f"/api/v1/batches/{batch_id}/items/{names[first.name]}?order=0",
                       data=first.data, headers=capture)
    assert again.status_code == 200
    other = client.put(f"/api/v1/batches/{batch_id}/items/{names[first.name]}?order=0",
                       data=batch_shots[1].data, headers=capture)
    assert other.status_code == 409
    assert rows(app, BatchItem) == len(batch_shots)

    # Review: move the unsorted lesion into B's group, drop A's lesion without a time.
    group_of = {g["identifier"]["mrn"]: g["id"] for g in batch["groups"]}
    unsorted = batch["unsorted"][0]
    moved = client.patch(f"/api/v1/batches/{batch_id}/items/{unsorted}",
                         json={"group_id": group_of["42094043"]}, headers=capture).get_json()
    assert unsorted in groups_by_mrn(moved)["42094043"] and not moved["unsorted"]
    no_time = names["lesion-03.jpg"]
    client.patch(f"/api/v1/batches/{batch_id}/items/{no_time}", json={"dropped": True},
                 headers=capture)

    # C's label is unknown: confirming without choosing a patient is refused, nothing stored.
    refused = client.post(f"/api/v1/batches/{batch_id}/groups/{group_of[UNKNOWN_MRN]}/confirm",
                          json={}, headers=capture)
    assert refused.status_code == 422
    assert rows(app, Photo) == 0 and rows(app, Delivery) == 0

    # A photo showing D's label moved into A's group: confirming A is refused, nothing stored.
    qr = next(s for s in batch_shots if "qrcode" in s.name)
    client.patch(f"/api/v1/batches/{batch_id}/items/{names[qr.name]}",
                 json={"group_id": group_of["15182881"]}, headers=capture)
    wrong = client.post(f"/api/v1/batches/{batch_id}/groups/{group_of['15182881']}/confirm",
                        json={}, headers=capture)
    assert wrong.status_code == 409 and rows(app, Photo) == 0
    back = client.patch(f"/api/v1/batches/{batch_id}/items/{names[qr.name]}",
                        json={"auto": True}, headers=capture).get_json()
    assert names[qr.name] in groups_by_mrn(back)["2021200000"]

    # Confirm A: one study, its held photos stored (label in its own series), dropped skipped.
    confirmed = client.post(f"/api/v1/batches/{batch_id}/groups/{group_of['15182881']}/confirm",
                            json={"patient": {"mrn": "15182881", "issuer": ISSUER}},
                            headers=capture)
    assert confirmed.status_code == 200, confirmed.get_json()
    group = confirmed.get_json()
    assert group["status"] == "confirmed" and group["patient"] == {"id": "15182881",
                                                                   "issuer": ISSUER}
    assert group["counts"] == {"held": 0, "stored": 4, "skipped": 1, "dropped": 1}
    # Stored several at a time, yet numbered in the group's capture order.
    with services(app).db.session() as db:
        numbers = {p.upload_uuid: p.instance_number for p in db.scalars(select(Photo))}
    in_order = [numbers[u] for u in group["items"] if u in numbers]
    assert len(in_order) == 4 and in_order == sorted(set(in_order))
    with services(app).db.session() as db:
        deliveries = list(db.scalars(select(Delivery)))
        instances = list(db.scalars(select(Instance)))
    assert {d.study_uid for d in deliveries} == {group["study_instance_uid"]}
    assert {i.study_uid for i in instances} == {group["study_instance_uid"]}
    pacs = {d.sop_uid for d in deliveries if d.kind == "pacs"}
    assert pacs == {i.sop_uid for i in instances}

    # Label photos: their own series, Burned In Annotation YES; lesions: not in that series.
    series: dict[int, list[pydicom.Dataset]] = {}
    archive = services(app).archive
    for row in instances:
        ds = pydicom.dcmread(io.BytesIO(archive.read(row)), stop_before_pixels=True)
        assert ds.PatientID == "15182881" and ds.IssuerOfPatientID == ISSUER
        series.setdefault(int(ds.SeriesNumber), []).append(ds)
    labels = series[LABEL_SERIES_NUMBER]
    assert len(labels) == 2
    assert all(ds.BurnedInAnnotation == "YES" and ds.RecognizableVisualFeatures == "NO"
               for ds in labels)
    assert len({ds.SeriesInstanceUID for ds in labels}) == 1
    originals = series[1]
    assert len(originals) == 2 and all(ds.BurnedInAnnotation == "NO" for ds in originals)
    assert len(series.get(NORMALIZED_SERIES_NUMBER, [])) == 2  # charts in the lesion frames

    # Confirming again stores nothing twice; stored photos cannot be moved any more.
    before = (rows(app, Photo), rows(app, Instance), rows(app, Delivery))
    again = client.post(f"/api/v1/batches/{batch_id}/groups/{group_of['15182881']}/confirm",
                        json={}, headers=capture)
    assert again.status_code == 200
    assert (rows(app, Photo), rows(app, Instance), rows(app, Delivery)) == before
    stuck = client.patch(f"/api/v1/batches/{batch_id}/items/{names['lesion-02.jpg']}",
                         json={"group_id": None}, headers=capture)
    assert stuck.status_code == 409

    # D: the lesion photographed with its label is in the originals, Burned In Annotation YES.
    d = client.post(f"/api/v1/batches/{batch_id}/groups/{group_of['2021200000']}/confirm",
                    json={}, headers=capture).get_json()
    with services(app).db.session() as db:
        qr_photo = db.get(Photo, names[qr.name])
        ds = pydicom.dcmread(io.BytesIO(archive.read(qr_photo.instance)),
                             stop_before_pixels=True)
    assert d["counts"]["stored"] == 2
    assert int(ds.SeriesNumber) == 1 and ds.BurnedInAnnotation == "YES"
    # its quality record was measured when it was staged and kept until it was stored
    assert qr_photo.quality is not None and qr_photo.color is not None
    assert [c["id"] for c in qr_photo.quality["checks"]] == [
        "chart", "distance", "tilt", "sharpness", "exposure", "glare"]
    assert qr_photo.quality["chart"]["found"] is (qr_photo.color["chart"] is not None)

    # Staged bytes of finished photos are gone; held ones remain.
    staged = services(app).settings.data_dir / "batches" / batch_id
    left = {p.name for p in staged.iterdir()}
    held = {i["upload_uuid"] for i in client.get(f"/api/v1/batches/{batch_id}",
                                                 headers=capture).get_json()["items"]
            if i["status"] == "held"}
    assert {n.split(".")[0] for n in left} == held


def test_batches_are_private_and_refuse_bad_input(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    capture, view = auth["capture"], auth["view"]
    batch_id = client.post("/api/v1/batches", json={}, headers=capture).get_json()["id"]
    assert client.get(f"/api/v1/batches/{batch_id}", headers=view).status_code == 403
    assert client.get(f"/api/v1/batches/{batch_id}").status_code == 401
    assert client.get(f"/api/v1/batches/{batch_id}", headers=auth["admin"]).status_code == 200
    assert client.get(f"/api/v1/batches/{uuid.uuid4()}", headers=capture).status_code == 404
    bad = client.put(f"/api/v1/batches/{batch_id}/items/{uuid.uuid4()}", data=b"not a photo",
                     headers={**capture, "Content-Type": "image/jpeg"})
    assert bad.status_code == 422 and bad.get_json()["error"]["code"] == "unreadable_photo"
    untyped = client.put(f"/api/v1/batches/{batch_id}/items/{uuid.uuid4()}",
                         data=b"not a photo", headers=capture)
    assert untyped.status_code == 415, untyped.get_json()
    assert rows(app, BatchItem) == 0
    staged = services(app).settings.data_dir / "batches" / batch_id
    assert not staged.exists() or not any(staged.iterdir())
    # Discarding forgets the held photos and their staged bytes.
    photo = (CHARTS / "sio_classic.jpg").read_bytes()
    assert client.put(f"/api/v1/batches/{batch_id}/items/{uuid.uuid4()}", data=photo,
                      headers=capture).status_code == 201
    assert any(staged.iterdir())
    gone = client.delete(f"/api/v1/batches/{batch_id}", headers=capture)
    assert gone.get_json() == {"discarded": 1} and not any(staged.iterdir())
    assert rows(app, BatchItem) == 0 and rows(app, Photo) == 0
    assert client.get(f"/api/v1/batches/{batch_id}", headers=capture).status_code == 404
    batch_id = client.post("/api/v1/batches", json={}, headers=capture).get_json()["id"]
    assert client.put(f"/api/v1/batches/{batch_id}/items/../x", data=b"x",
                      headers=capture).status_code == 404
    assert client.put(f"/api/v1/batches/{batch_id}/items/not-a-uuid", data=b"x",
                      headers={**capture, "Content-Type": "image/jpeg"}).status_code == 422


def test_idle_batches_are_purged_of_held_photos_only(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], tmp_path: Path,
        batch_shots: tuple[Shot, ...]) -> None:
    """Held bytes do not linger: a batch nobody touched for the hold time is discarded (its
    staged files deleted), a busy one is left, and confirmed photos stay stored."""
    import_patients(app, tmp_path)
    capture = auth["capture"]
    idle_id, busy_id = (client.post("/api/v1/batches", json={}, headers=capture)
                        .get_json()["id"] for _ in range(2))
    put_all(client, capture, idle_id, batch_shots[:4])
    put_all(client, capture, busy_id, batch_shots[4:6])
    batches = app.extensions[BATCHES_EXTENSION]
    staging = services(app).settings.data_dir / "batches"
    assert any((staging / idle_id).iterdir()) and any((staging / busy_id).iterdir())
    with services(app).db.session() as db:  # the idle batch's last photo came 4 days ago
        for model in (BatchItem, BatchGroup):
            for row in db.scalars(select(model).where(model.batch_id == idle_id)):
                row.created_at -= timedelta(days=4)
        db.get(Batch, idle_id).created_at -= timedelta(days=4)

    assert batches.purge_idle(timedelta(days=3)) == {idle_id: 4}
    assert not any((staging / idle_id).iterdir())
    assert len(list((staging / busy_id).iterdir())) >= 2
    gone = client.get(f"/api/v1/batches/{idle_id}", headers=capture)
    assert gone.status_code == 404
    assert client.get(f"/api/v1/batches/{busy_id}", headers=capture).status_code == 200
    assert batches.purge_idle(timedelta(days=3)) == {}


@pytest.mark.parametrize(("body", "field"), [
    ({"mrn": "0012\t3456"}, "mrn"),
    ({"mrn": "0012\\3456"}, "mrn"),
    ({"mrn": "1" * 65}, "mrn"),
    ({"mrn": "   "}, "mrn"),
    ({"mrn": "00123456", "issuer": "HOSP\x7fA"}, "issuer"),
])
def test_a_group_identifier_dicom_cannot_hold_is_refused_naming_the_field_sent(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], body: dict,
        field: str) -> None:
    """The MRN of a group entered by hand obeys the rules of the Patient ID it becomes: it is
    refused when the group is made, naming the field the batch user sent (it used to be taken,
    and confirming the group then failed about a ``patient.id`` nobody had sent)."""
    capture = auth["capture"]
    batch_id = client.post("/api/v1/batches", json={}, headers=capture).get_json()["id"]
    answer = client.post(f"/api/v1/batches/{batch_id}/groups", json=body, headers=capture)
    assert answer.status_code == 422, answer.get_json()
    message = answer.get_json()["error"]["message"]
    assert message.startswith(f"{field} ") and "patient" not in message, message
    assert rows(app, BatchGroup) == 0
