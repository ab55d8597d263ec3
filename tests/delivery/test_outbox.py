"""The outbox on SQLite with fake PACSs: queueing, routing, claims and leases, EMR re-queueing,
status in the session API, the admin page, backoff, tag morphing, the destinations file."""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db.models import CaptureSession, Delivery, Instance, Photo
from app.gateways.archive.morph import parse_morph
from app.gateways.archive.pacs import dimse_status_error
from app.gateways.errors import PermanentError, TransientError
from app.gateways.registry import (
    Registry,
    RetryPolicy,
    build_registry,
    registry_from_config,
)
from app.settings import Settings, SettingsError
from app.workflow.delivery import DeliveryWorker, Outbox, utcnow
from tests.delivery.conftest import NOCHART, PATIENT, Deployment, wait_for
from tests.delivery.fakes import FakeStow, ok, refused, stored


def stow(name: str, fake: FakeStow, **extra: object) -> dict[str, object]:
    return {"name": name, "type": "stow-rs", "url": fake.url, **extra}


@pytest.fixture
def fake() -> FakeStow:
    server = FakeStow()
    yield server
    server.close()


def test_accept_queues_one_row_per_routed_destination_in_the_same_transaction(
        deploy: Callable[..., Deployment], fake: FakeStow,
        monkeypatch: pytest.MonkeyPatch) -> None:
    d = deploy([stow("all", fake), stow("wounds", fake, match={"department": "Wound care"}),
                stow("patients", fake, match={"source": ["patient"], "issuer": "HOSP-A"})])
    wound = d.open_session(department="Wound care")
    derm = d.open_session(department="Dermatology", source="patient")
    photo = d.upload(wound, NOCHART)
    assert [(x["destination"], x["state"]) for x in photo["deliveries"]] == \
        [("all", "queued"), ("wounds", "queued")]
    d.upload(derm, NOCHART)
    assert sorted(s.destination for s in d.states(derm["study_instance_uid"])) == \
        ["all", "patients"]

    # If queueing fails, nothing of the photo is committed: the upload is not acknowledged.
    def broken(*_args: object) -> None:
        raise RuntimeError("outbox down")

    monkeypatch.setattr(Outbox, "enqueue_photo", broken)
    response = d.client.put(f"/api/v1/sessions/{wound['id']}/photos/"
                            "5b0e5d8e-53a5-4a36-9a39-000000000001",
                            data=NOCHART.read_bytes(), headers=d.headers["capture"])
    assert response.status_code == 500
    with d.services.db.session() as db:
        assert db.scalar(select(func.count()).select_from(Photo)) == 2
        assert db.scalar(select(func.count()).select_from(Instance)) == 2
        assert db.scalar(select(func.count()).select_from(Delivery)) == 4


def test_lease_of_a_crashed_worker_expires_and_nothing_is_sent_twice(
        deploy: Callable[..., Deployment], fake: FakeStow) -> None:
    d = deploy([stow("pacs", fake, batch_size=2)])
    session = d.open_session()
    for photo in [NOCHART] * 3:
        d.upload(session, photo)
    registry = Registry(d.registry.destinations, lease_seconds=60)
    crashed = d.worker(registry).claim()  # takes two rows, then "crashes" before sending
    assert crashed is not None and len(crashed.rows) == 2
    other = d.worker(registry)
    assert other.run_once() == 1  # only the third row is free
    assert other.run_once() == 0
    with d.services.db.session() as db:  # the lease runs out (time moved on, not slept)
        db.execute(update(Delivery).where(Delivery.claim_token == crashed.token)
                   .values(claimed_until=utcnow() - timedelta(seconds=1)))
    assert other.run_once() == 2  # the rows are claimed again
    assert sorted(fake.stored.values()) == [1, 1, 1]
    assert {s.state for s in d.states(session["study_instance_uid"])} == {"sent"}
    assert fake.requests == 2  # one request per batch of one study


class FakeNotifier:
    """An EMR notifier that records the studies it was asked about."""

    name = "emr-fake"

    def __init__(self, on_first_call: Callable[[], None] | None = None) -> None:
        self.calls: list[str] = []
        self.on_first_call = on_first_call
        self.error: Exception | None = None

    def notify(self, db: Session, study_uid: str) -> None:
        self.calls.append(study_uid)
        assert db.scalar(select(CaptureSession.id).where(CaptureSession.study_uid == study_uid))
        if len(self.calls) == 1 and self.on_first_call:
            self.on_first_call()
        if self.error:
            raise self.error


def test_emr_row_per_study_is_requeued_when_a_photo_arrives_during_a_notice(
        deploy: Callable[..., Deployment]) -> None:
    d = deploy([])
    session = d.open_session()
    notifier = FakeNotifier(lambda: d.upload(session, NOCHART))
    registry = Registry(notifiers=(notifier,), retry=RetryPolicy(0.01, 0.05))
    d.services.intake.outbox = Outbox(registry)
    d.upload(session, NOCHART)
    worker = d.worker(registry)
    assert worker.run_once() == 1  # notified; a photo arrived meanwhile: not "sent"
    [row] = d.states(session["study_instance_uid"])
    assert row.state == "queued"
    assert worker.run_once() == 1 and worker.run_once() == 0
    [row] = d.states(session["study_instance_uid"])
    assert (row.destination, row.kind, row.state) == ("emr-fake", "emr", "sent")
    assert notifier.calls == [session["study_instance_uid"]] * 2
    body = d.client.get(f"/api/v1/sessions/{session['id']}", headers=d.headers["view"])
    assert [n["state"] for n in body.get_json()["notifications"]] == ["sent"]
    assert all(p["deliveries"] == [] for p in body.get_json()["photos"])

    notifier.error = PermanentError("the EMR refused the resource")
    d.upload(session, NOCHART)
    assert worker.run_once() == 1
    [row] = d.states(session["study_instance_uid"])
    assert (row.state, row.reason) == ("dead", "the EMR refused the resource")


def test_session_api_and_admin_show_states_and_admin_retries(
        deploy: Callable[..., Deployment]) -> None:
    answers = iter([(503, None), (409, refused([], 0)), (400, None), (400, None)])
    server = FakeStow(lambda n, uids: next(answers, None) or ok(n, uids))
    try:
        d = deploy([stow("pacs", server)])
        session = d.open_session()
        d.upload(session, NOCHART)
        worker = d.worker()

        def state() -> dict:
            body = d.client.get(f"/api/v1/sessions/{session['id']}",
                                headers=d.headers["view"]).get_json()
            return body["photos"][0]["deliveries"][0]

        assert state()["state"] == "queued"
        worker.run_once()
        assert (state()["state"], state()["reason"]) == ("failed", "HTTP 503 from the PACS")
        time.sleep(0.25)
        worker.run_once()  # 409 with no failed list: every instance refused
        assert (state()["state"], state()["reason"]) == ("dead", "HTTP 409 from the PACS")
        assert PATIENT["id"] not in json.dumps(state())

        admin = d.client.get("/admin/api/deliveries?state=dead", headers=d.headers["admin"])
        assert admin.status_code == 200
        body = admin.get_json()
        assert body["counts"]["pacs"]["dead"] == 1
        assert body["destinations"][0]["name"] == "pacs"
        [dead] = body["deliveries"]
        for role in ("capture", "view"):
            assert d.client.get("/admin/api/deliveries", headers=d.headers[role]).status_code \
                == 403
            assert d.client.post(f"/admin/api/deliveries/{dead['id']}/retry",
                                 headers=d.headers[role]).status_code == 403
        assert d.client.get("/admin/deliveries").status_code == 401
        page = d.client.get("/admin/deliveries", headers=d.headers["admin"])
        assert page.status_code == 200 and b"HTTP 409 from the PACS" in page.data

        retried = d.client.post(f"/admin/api/deliveries/{dead['id']}/retry",
                                headers=d.headers["admin"])
        assert retried.status_code == 200
        # queued again, showing the last failure until the next attempt replaces it
        assert (state()["state"], state()["attempts"], state()["reason"]) == \
            ("queued", 0, "HTTP 409 from the PACS")
        queued = d.client.get("/admin/api/deliveries?state=queued",
                              headers=d.headers["admin"]).get_json()
        assert queued["counts"]["pacs"] == {"queued": 1, "failed": 0, "sent": 0, "dead": 0,
                                            "cancelled": 0}
        assert [(x["id"], x["reason"]) for x in queued["deliveries"]] == \
            [(dead["id"], "HTTP 409 from the PACS")]
        page = d.client.get("/admin/deliveries", headers=d.headers["admin"])
        assert b"Before the retry: HTTP 409 from the PACS" in page.data
        worker.run_once()  # 400 this time: dead again
        assert (state()["state"], state()["reason"]) == ("dead", "HTTP 400 from the PACS")
        form = d.client.post(f"/admin/deliveries/{dead['id']}/retry",
                             headers=d.headers["admin"])  # the page's form (bearer here)
        assert form.status_code == 303 \
            and form.headers["Location"] == "/admin/deliveries?retried=1"
        worker.run_once()  # 400 again
        assert d.client.post("/admin/api/deliveries/retry", json={"destination": "pacs"},
                             headers=d.headers["admin"]).get_json() == {"retried": 1}
        worker.run_once()
        assert state()["state"] == "sent" and state()["attempts"] == 1
        assert d.client.post(f"/admin/api/deliveries/{dead['id']}/retry",
                             headers=d.headers["admin"]).status_code == 409
        assert d.client.post("/admin/api/deliveries/999999/retry",
                             headers=d.headers["admin"]).status_code == 404
        assert list(server.stored.values()) == [1] and server.requests == 5
    finally:
        server.close()


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(base_seconds=2, cap_seconds=60)
    ceilings = [policy.delay(n, lambda _low, high: high) for n in range(1, 9)]
    assert ceilings == [2, 4, 8, 16, 32, 60, 60, 60]
    assert policy.delay(1000, lambda _low, high: high) == 60
    rng = random.Random(5)
    delays = [policy.delay(4, rng.uniform) for _ in range(2000)]
    assert min(delays) >= 0 and max(delays) <= 16
    assert min(delays) < 1 and max(delays) > 15  # spread over the whole window


@pytest.mark.parametrize(("status", "outcome"), [
    (0x0000, None), (0x0001, None), (0xB000, None), (0xB007, None),
    (0xA700, TransientError), (0xA7FF, TransientError), (0xFE00, TransientError),
    (0xA900, PermanentError), (0xC000, PermanentError), (0xC211, PermanentError),
    (0x0110, PermanentError), (0x0122, PermanentError),
])
def test_dimse_statuses_are_classified(status: int, outcome: type | None) -> None:
    error = dimse_status_error(status)
    assert (type(error) if error else None) is outcome
    assert error is None or f"0x{status:04X}" in str(error)


def test_stow_partial_failure_retries_only_the_failed_instance(
        deploy: Callable[..., Deployment]) -> None:
    def answer(number: int, uids: list[str]) -> tuple[int, object]:
        if number == 1:  # the first instance is stored, the second hits "out of resources"
            return 202, {**stored(uids[:1]), **refused(uids[1:], 0xA700)}
        return ok(number, uids)

    server = FakeStow(answer)
    try:
        d = deploy([stow("pacs", server)])
        session = d.open_session()
        first, second = (d.upload(session, p)["sop_instance_uid"] for p in [NOCHART] * 2)
        worker = d.worker()
        assert worker.run_once() == 2
        states = {s.sop_uid: s for s in d.states(session["study_instance_uid"])}
        assert states[first].state == "sent"
        assert (states[second].state, states[second].reason) == \
            ("failed", "PACS out of resources (status 0xA700)")
        time.sleep(0.25)
        assert worker.run_once() == 1
        assert {s.state for s in d.states(session["study_instance_uid"])} == {"sent"}
        assert server.stored == {first: 1, second: 1}
    finally:
        server.close()


def test_morph_changes_the_header_only_and_never_the_archive(
        deploy: Callable[..., Deployment], fake: FakeStow) -> None:
    rules = [{"set": "InstitutionName", "value": "General Hospital"},
             {"replace": "IssuerOfPatientID", "match": "HOSP-A", "value": "GH"},
             {"replace": "IssuerOfPatientID", "match": "OTHER", "value": "never"},
             {"prefix": "PatientID", "value": "GH-"},
             {"remove": "InstitutionalDepartmentName"}]
    d = deploy([stow("pacs", fake, morph=rules)])
    session = d.open_session(department="Wound care")
    photo = d.upload(session, NOCHART)
    with d.services.db.session() as db:
        instance = db.get(Instance, photo["sop_instance_uid"])
        archived = d.services.archive.read(instance)
    morphed = d.registry.destinations[0].morph.apply(archived)
    ds = pydicom.dcmread(io.BytesIO(morphed))
    assert (ds.InstitutionName, ds.IssuerOfPatientID, ds.PatientID) == \
        ("General Hospital", "GH", "GH-00123456")
    assert "InstitutionalDepartmentName" not in ds
    original = pydicom.dcmread(io.BytesIO(archived))
    assert ds.PixelData == original.PixelData
    assert morphed.endswith(archived[archived.index(b"\xe0\x7f\x10\x00OB"):])
    assert original.PatientID == "00123456" and original.InstitutionalDepartmentName
    d.worker().drain()
    with d.services.db.session() as db:
        assert d.services.archive.read(db.get(Instance, photo["sop_instance_uid"])) == archived
    assert fake.stored[photo["sop_instance_uid"]] == 1


@pytest.mark.parametrize(("rules", "message"), [
    ([{"set": "SOPInstanceUID", "value": "1.2.3"}], "only text attributes"),
    ([{"remove": "PixelData"}], "may not be morphed"),
    ([{"set": "Rows", "value": "1"}], "may not be morphed"),
    ([{"set": "NoSuchKeyword", "value": "x"}], "not a DICOM keyword"),
    ([{"set": "InstitutionName"}], "needs a value"),
    ([{"set": "InstitutionName", "remove": "PatientID", "value": "x"}], "exactly one"),
    ([{"set": "InstitutionName", "value": "x" * 65}], "not valid for VR LO"),
    ([{"set": "InstitutionName", "value": "a\\b"}], "backslashes"),
    ([{"prefix": "PatientID", "value": "P", "match": "x"}], "unknown keys match"),
])
def test_bad_morph_rules_are_refused(rules: list[dict], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_morph(rules, "destination x")


def test_prefix_that_overflows_the_vr_is_a_permanent_error(deploy: Callable[..., Deployment],
                                                            fake: FakeStow) -> None:
    d = deploy([stow("pacs", fake, morph=[{"prefix": "PatientID", "value": "P" * 60}])])
    session = d.open_session()
    d.upload(session, NOCHART)
    d.worker().run_once()
    [row] = d.states(session["study_instance_uid"])
    assert (row.state, row.reason) == ("dead", "tag morphing makes PatientID invalid (LO)")
    assert fake.requests == 0


def test_destinations_file_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_TOKEN", "secret-token")
    path = tmp_path / "destinations.toml"
    path.write_text('''
lease_seconds = 60
[retry]
base_seconds = 1
cap_seconds = 30

[[destinations]]
name = "pacs-main"
type = "stow-rs"
url = "https://pacs.example.org/dicom-web"
auth = { type = "bearer", token_env = "PACS_TOKEN" }
batch_size = 10
match = { department = ["Wound care", "Burns unit"] }
morph = [ { set = "InstitutionName", value = "General Hospital" } ]

[[destinations]]
name = "archive"
type = "c-store"
host = "127.0.0.1"
port = 11112
called_aet = "ARCHIVE"
retry = { cap_seconds = 5 }
''')
    registry = build_registry(Settings(destinations_file=path, emr_notifiers=""))
    main, archive = registry.destinations
    assert (main.name, main.batch_size, main.retry) == ("pacs-main", 10, RetryPolicy(1, 30))
    assert (archive.pacs.called_aet, archive.pacs.calling_aet) == ("ARCHIVE", "EBIW")
    assert archive.retry == RetryPolicy(1, 5) and registry.lease_seconds == 60
    wound = CaptureSession(department="Wound care", source="provider", issuer="X")
    derm = CaptureSession(department="Dermatology", source="provider", issuer="X")
    assert [d.name for d in registry.routes(wound)] == ["pacs-main", "archive"]
    assert [d.name for d in registry.routes(derm)] == ["archive"]
    assert registry.names == ("pacs-main", "archive")
    assert build_registry(Settings(emr_notifiers="")).destinations == ()


@pytest.mark.parametrize(("config", "message"), [
    ({"destinations": [{"name": "a", "type": "ftp"}]}, "type must be stow-rs or c-store"),
    ({"destinations": [{"name": "a", "type": "stow-rs", "url": "http://pacs.example.org/x",
                        "auth": {"type": "basic", "username": "u",
                                 "password_env": "NOPE_UNSET"}}]}, "only sent over https"),
    ({"destinations": [{"name": "a", "type": "stow-rs", "url": "https://p.example.org/x",
                        "auth": {"type": "basic", "username": "u",
                                 "password_env": "NOPE_UNSET"}}]}, "NOPE_UNSET"),
    ({"destinations": [{"name": "a", "type": "stow-rs", "url": "https://p/x", "verify": False}]},
     "unknown keys verify"),
    ({"destinations": [{"name": "a", "type": "c-store", "host": "h", "port": 104,
                        "called_aet": "A\\B"}]}, "AE titles"),
    ({"destinations": [{"name": "a", "type": "c-store", "host": "h", "port": 104,
                        "called_aet": "A"}, {"name": "a", "type": "c-store", "host": "h",
                                             "port": 104, "called_aet": "A"}]}, "unique"),
    ({"destinations": [{"name": "a b", "type": "c-store"}]}, "name must be"),
    ({"destinations": [{"name": "a", "type": "stow-rs", "url": "https://p/x",
                        "match": {"ward": "7"}}]}, "unknown keys ward"),
    ({"routes": []}, "unknown keys routes"),
])
def test_bad_destinations_files_stop_startup(config: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        registry_from_config(config)


def test_unreadable_destinations_file_names_the_variable(tmp_path: Path) -> None:
    bad = tmp_path / "d.json"
    bad.write_text("{not json")
    with pytest.raises(SettingsError, match="EBIW_DESTINATIONS_FILE"):
        build_registry(Settings(destinations_file=bad))
    with pytest.raises(SettingsError, match="cannot read"):
        build_registry(Settings(destinations_file=tmp_path / "missing.json"))


def test_rows_for_unknown_destinations_stay_queued(deploy: Callable[..., Deployment],
                                                   fake: FakeStow) -> None:
    d = deploy([stow("pacs", fake)])
    session = d.open_session()
    d.upload(session, NOCHART)
    assert DeliveryWorker(d.services.db, d.services.archive, Registry()).run_once() == 0
    assert d.states(session["study_instance_uid"])[0].state == "queued"


def test_delivery_thread_of_the_web_process(deploy: Callable[..., Deployment],
                                            fake: FakeStow, tmp_path: Path) -> None:
    env = {"EBIW_DATA_DIR": str(tmp_path / "settings")}
    assert Settings.from_env({**env, "EBIW_DELIVERY_THREAD": "on"}).delivery_thread is True
    assert Settings.from_env({**env, "EBIW_DELIVERY_THREAD": "off"}).delivery_thread is False
    with pytest.raises(SettingsError, match="EBIW_DELIVERY_THREAD"):
        Settings.from_env({**env, "EBIW_DELIVERY_THREAD": "sometimes"})
    deploy([])  # the schema, as `ebiw db upgrade` makes it before `ebiw serve`
    d = deploy([stow("pacs", fake)], delivery_thread=True)
    session = d.open_session()
    sop = d.upload(session, NOCHART)["sop_instance_uid"]
    wait_for(lambda: fake.stored[sop] == 1, 10, "delivery by the web process's thread")
    wait_for(lambda: d.states(session["study_instance_uid"])[0].state == "sent", 5, "sent")

