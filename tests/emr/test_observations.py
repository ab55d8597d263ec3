"""Wound measurements reach the EMR as data: real SRs (``measure --instance`` on real chart
photos) become one FHIR Observation per value in the local store and on the FHIR peer (exactly
once, through failures), valid for the peer's validator, and numeric OBX segments in the
ORU^R01 that an independent parser (python-hl7) reads back."""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import hl7
import pydicom
import pytest
import requests
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from pydicom.valuerep import DT
from sqlalchemy import select

from app.cli import cli
from app.db.models import (
    AuditEvent,
    CaptureSession,
    FhirResource,
    Instance,
    Photo,
    WoundMeasurement,
    as_utc,
)
from app.db.models import Patient as PatientRow
from app.gateways.emr import build_notifiers
from app.gateways.emr.hl7v2 import Hl7v2Notifier
from app.gateways.emr.local import LocalFhirStore
from app.gateways.emr.remote import RemoteFhirNotifier
from app.gateways.errors import TransientError
from app.pipeline.dicom.kos import RejectionReason
from app.pipeline.fhir_observation import observation_uid
from app.pipeline.geometry import FAR_FROM_CHART, WARNINGS
from app.workflow import audit, corrections
from app.workflow.delivery.worker import drain
from tests.conftest import CHARTS, FhirPeer, services
from tests.emr.conftest import ENCOUNTER_SYSTEM, FaultProxy, fhir_validate, notify
from tests.mllp_peer import mllp_receiver
from tests.test_measure_instance import LINE, PHOTO, SQUARE, measure, stored_photo

OFFSET_MINUTES = 120  # the session's clock: UTC+02:00
LOINC, SNOMED = "http://loinc.org", "http://snomed.info/sct"


@pytest.fixture
def app_overrides(tmp_path: Path) -> dict[str, object]:
    """No PACS is contacted (no worker runs); the notifiers are called by the tests."""
    path = tmp_path / "destinations.json"
    path.write_text(json.dumps({"destinations": []}))
    return {"destinations_file": path, "emr_notifiers": "", "color_normalization": False}


def measured_study(app: Flask, client: FlaskClient, headers: dict[str, str],
                   monkeypatch: pytest.MonkeyPatch, **patient: str
                   ) -> tuple[str, str, dict[str, Any]]:
    """A real photo uploaded into a session while the server's clock is on UTC+02:00, then
    measured (one line, one outline): (session id, Study UID, the ``measure`` JSON)."""
    monkeypatch.setenv("TZ", "Etc/GMT-2")  # POSIX sign: UTC+02:00
    time.tzset()
    try:
        photo_uid = stored_photo(client, headers, PHOTO, **patient)
        result = measure(app, "--instance", photo_uid, "--line", LINE, "--polygon", SQUARE,
                         "--wound", "Heel ulcer")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert result.exit_code == 0, result.output
    with services(app).db.session() as db:
        photo = db.scalars(select(Photo).where(Photo.sop_uid == photo_uid)).one()
        session = db.get(CaptureSession, photo.session_id)
        assert session is not None and session.utc_offset_minutes == OFFSET_MINUTES
        return session.id, session.study_uid, json.loads(result.output)


def photo_time(app: Flask, record: dict[str, Any]) -> datetime:
    """When the measured photo was taken, as its archived DICOM header says."""
    svc = services(app)
    with svc.db.session() as db:
        row = db.get(Instance, record["instance"])
        assert row is not None
        header = pydicom.dcmread(io.BytesIO(svc.archive.read(row)), stop_before_pixels=True)
    stamp = DT(f"{header.ContentDate}{header.ContentTime}{header.TimezoneOffsetFromUTC}")
    assert stamp.utcoffset() == timedelta(minutes=OFFSET_MINUTES)
    return stamp.replace(microsecond=0)


def rows(app: Flask, study_uid: str) -> list[WoundMeasurement]:
    with services(app).db.session() as db:
        found = list(db.scalars(select(WoundMeasurement).where(
            WoundMeasurement.study_uid == study_uid).order_by(WoundMeasurement.id)))
        db.expunge_all()
    return found


def check_observation(obs: dict[str, Any], row: WoundMeasurement, study_ref: str,
                      subject: dict[str, Any], taken: datetime) -> None:
    """The Observation of one ``wound_measurement`` row, field by field; ``taken`` is the
    photo's time."""
    codes = {(c["system"], c["code"]) for c in obs["code"]["coding"]}
    expected = {"length": {(LOINC, "39126-8"), (SNOMED, "410668003")},
                "area": {(LOINC, "89260-4"), (SNOMED, "42798000")},
                "perimeter": {(SNOMED, "131191004")}}[row.quantity]
    assert codes == expected
    assert obs["status"] == "final"
    assert obs["category"][0]["coding"][0]["code"] == "exam"
    assert obs["identifier"] == [{"system": "urn:ietf:rfc:3986", "value": "urn:oid:" +
                                  observation_uid(row.report_sop_uid, row.region,
                                                  row.quantity)}]
    quantity = obs["valueQuantity"]
    assert quantity["value"] == pytest.approx(row.value, abs=0.005)
    assert (quantity["system"], quantity["code"], quantity["unit"]) == (
        "http://unitsofmeasure.org", row.unit, row.unit)
    [uncertainty] = quantity["extension"]
    assert uncertainty["url"].endswith("/iso21090-uncertainty")
    assert uncertainty["valueDecimal"] == pytest.approx(row.uncertainty, abs=0.0005) != 0
    assert obs["subject"] == subject
    # The photo's time, in the session's offset (the same instant as the stored UTC time).
    assert obs["effectiveDateTime"] == taken.isoformat()  # with the photo's +02:00
    assert obs["bodySite"]["coding"] == [{"system": SNOMED, "code": "14975008",
                                          "display": "Forearm"}]
    [wound] = obs["contained"]
    assert obs["bodySite"]["extension"] == [{
        "url": "http://hl7.org/fhir/StructureDefinition/bodySite",
        "valueReference": {"reference": f"#{wound['id']}"}}]
    assert wound["locationQualifier"][0]["coding"][0]["code"] == "7771000"  # left
    assert {"system": "urn:dicom:uid", "value": f"urn:oid:{row.tracking_uid}"} in [
        {k: i[k] for k in ("system", "value") if k in i} for i in wound["identifier"]]
    assert obs["derivedFrom"][0] == {"reference": study_ref}
    assert obs["derivedFrom"][1]["identifier"] == {"system": "urn:dicom:uid",
                                                   "value": f"urn:oid:{row.report_sop_uid}"}


def test_local_store_holds_one_valid_observation_per_value(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    session_id, study_uid, record = measured_study(app, client, auth["capture"], monkeypatch)
    taken = photo_time(app, record)
    values = rows(app, study_uid)
    assert [(r.region, r.quantity) for r in values] == [
        (1, "length"), (2, "area"), (2, "perimeter")]
    store = LocalFhirStore(services(app).settings)
    notify(app, store, study_uid)
    notify(app, store, study_uid)  # a retry of the same state changes nothing
    with services(app).db.session() as db:
        stored = db.scalars(select(FhirResource).where(
            FhirResource.resource_type == "Observation")).all()
        assert sorted(r.version_id for r in stored) == [1, 1, 1]

    view = auth["view"]
    found = client.get(f"/fhir/Observation?derived-from=ImagingStudy/{session_id}",
                       headers=view)
    assert found.status_code == 200 and found.mimetype == "application/fhir+json"
    bundle = found.get_json()
    assert bundle["total"] == 3
    observations = [e["resource"] for e in bundle["entry"]]
    by_identifier = {o["identifier"][0]["value"]: o for o in observations}
    subject = {"identifier": {"system": "urn:ebiw:issuer:HOSP-A", "value": "00123456"}}
    for row in values:
        key = "urn:oid:" + observation_uid(row.report_sop_uid, row.region, row.quantity)
        check_observation(by_identifier[key], row, f"ImagingStudy/{session_id}", subject,
                          taken)
    assert {o["valueQuantity"]["value"] for o in observations} >= {record["lines_mm"][0]}
    one = observations[0]
    read = client.get(f"/fhir/Observation/{one['id']}", headers=view)
    assert read.status_code == 200 and read.get_json()["identifier"] == one["identifier"]
    assert client.get(f"/fhir/Observation?identifier=urn:ietf:rfc:3986|"
                      f"{one['identifier'][0]['value']}", headers=view).get_json()["total"] == 1
    assert client.get("/fhir/Observation?derived-from=ImagingStudy/unknown",
                      headers=view).get_json()["total"] == 0
    assert client.get("/fhir/Observation?code=39126-8", headers=view).status_code == 400

    with services(app).db.session() as db:  # who saw which study and patient
        events = db.scalars(select(AuditEvent).where(
            AuditEvent.action == "fhir.search_observations").order_by(AuditEvent.id)).all()
        by_study, by_identifier, unknown = (e.entities for e in events[:3])
        assert f"study:{study_uid}" in by_study and f"study:{study_uid}" in by_identifier
        assert audit.patient_ref("00123456", "HOSP-A") in by_study
        assert unknown == []
        read_event = db.scalars(select(AuditEvent).where(
            AuditEvent.action == "fhir.read_observation")).one()
        assert f"study:{study_uid}" in read_event.entities

    reports = fhir_validate(tmp_path, observations)
    assert [r["errors"] for r in reports] == [[], [], []], reports


def _remote(app: Flask, base: str) -> RemoteFhirNotifier:
    settings = replace(services(app).settings, emr_notifiers="fhir",
                       emr_fhir_url=f"{base}/fhir", emr_timeout_seconds=1,
                       emr_encounter_system=ENCOUNTER_SYSTEM).checked()
    [notifier] = build_notifiers(settings)
    assert isinstance(notifier, RemoteFhirNotifier)
    return notifier


def test_remote_observations_exactly_once_through_failures(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        fhir_peer: FhirPeer, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second Observation is written but its answer is lost, the third refused (503):
    later calls create only what is missing, and a repeat writes nothing."""
    _, study_uid, record = measured_study(app, client, auth["capture"], monkeypatch,
                                          id="MRN0001", issuer="1.2.3.4.5.6")
    values = rows(app, study_uid)
    notifier = _remote(app, proxy.url)
    proxy.plan["POST /fhir/Observation"] = ["pass", "late", "pass", "pass", "503"]
    with pytest.raises(TransientError, match="unreachable while creating the Observation"):
        notify(app, notifier, study_uid)
    with pytest.raises(TransientError, match="answered 503 while creating the Observation"):
        notify(app, notifier, study_uid)
    notify(app, notifier, study_uid)
    posts = fhir_peer.log("POST", "/fhir/Observation")
    # Created, created (answer lost); found, found (the 503 was never forwarded); found,
    # found, created.
    assert [e["status"] for e in posts] == [201, 201, 200, 200, 200, 200, 201]
    notify(app, notifier, study_uid)  # the same state again: found, nothing is written
    assert [e["status"] for e in fhir_peer.log("POST", "/fhir/Observation")[7:]] == [200] * 3
    assert not [e for e in fhir_peer.log("PUT") if "/Observation/" in e["path"]]

    [study] = fhir_peer.studies(study_uid)
    bundle = requests.get(f"{fhir_peer.url}/Observation", params={"subject": "Patient/p1"},
                          timeout=5).json()
    observations = [e["resource"] for e in bundle.get("entry", [])]
    assert len(observations) == len(values) == 3
    for row in values:
        token = "urn:ietf:rfc:3986|urn:oid:" + observation_uid(row.report_sop_uid, row.region,
                                                              row.quantity)
        [one] = [e["resource"] for e in requests.get(
            f"{fhir_peer.url}/Observation", params={"identifier": token},
            timeout=5).json().get("entry", [])]
        check_observation(one, row, f"ImagingStudy/{study['id']}",
                          {"reference": "Patient/p1"}, photo_time(app, record))
        assert one.get("encounter") == study.get("encounter")  # ENC1001: not in this EMR


def test_oru_carries_numeric_obx_per_value(app: Flask, client: FlaskClient,
                                           auth: dict[str, dict[str, str]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _, study_uid, record = measured_study(app, client, auth["capture"], monkeypatch)
    taken = photo_time(app, record)
    values = rows(app, study_uid)
    with mllp_receiver() as receiver:
        settings = replace(services(app).settings, emr_notifiers="hl7v2",
                           emr_mllp_address=receiver.address, emr_timeout_seconds=1).checked()
        [notifier] = build_notifiers(settings)
        assert isinstance(notifier, Hl7v2Notifier)
        notify(app, notifier, study_uid)  # hl7apy's strict parse in the receiver passed
    [raw] = receiver.raw
    message = hl7.parse(raw)
    numeric = [s for s in message.segments("OBX") if str(s[2]) == "NM" and
               str(s[3][0][0]) != "NINST"]
    assert len(numeric) == len(values) == 3
    for segment, row in zip(numeric, values, strict=True):
        code = segment[3][0]
        expected = {"length": ["39126-8", "Length of Wound", "LN", "410668003", "Length", "SCT"],
                    "area": ["89260-4", "Area of wound", "LN", "42798000", "Area", "SCT"],
                    "perimeter": ["131191004", "Perimeter", "SCT"]}[row.quantity]
        assert [str(c) for c in code] == expected
        assert float(str(segment[5])) == pytest.approx(row.value, abs=0.005)
        assert [str(c) for c in segment[6][0]] == [row.unit, row.unit, "UCUM"]
        assert str(segment[11]) == "F"
        assert str(segment[14]) == taken.strftime("%Y%m%d%H%M%S%z")  # the photo's, +0200
        measured = datetime.strptime(str(segment[19]), "%Y%m%d%H%M%S%z")
        assert measured == as_utc(row.measured_at).replace(microsecond=0)
    # One wound: its line is region 1.1, the outline's area and perimeter share 1.2.
    assert [str(s[4]) for s in numeric] == ["1.1", "1.2", "1.2"]


@pytest.mark.parametrize("app_overrides", [{"emr_notifiers": "local",
                                            "color_normalization": False}])
def test_storing_a_report_sends_its_values_through_the_outbox(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    """The SR's transaction re-queues the study's notifier row; the worker then writes the
    Observations (no notifier is called by hand here)."""
    svc = services(app)
    photo_uid = stored_photo(client, auth["capture"], PHOTO)
    drain(svc.db, svc.archive, svc.registry)

    def observations() -> int:
        with svc.db.session() as db:
            return len(db.scalars(select(FhirResource).where(
                FhirResource.resource_type == "Observation")).all())

    assert observations() == 0
    env = {"EBIW_DATA_DIR": str(svc.settings.data_dir), "EBIW_ENV": "test",
           "EBIW_EMR_NOTIFIERS": "local",
           "EBIW_DATABASE_URL": svc.settings.database_url or ""}
    result = CliRunner().invoke(cli, ["measure", "--instance", photo_uid, "--line", LINE,
                                      "--polygon", SQUARE], env=env)
    assert result.exit_code == 0, result.output
    assert drain(svc.db, svc.archive, svc.registry) == 1  # the study's "local" row
    assert observations() == 3


# --- corrections (IHE IOCM): the values of rejected or moved instances -----------------------


def _observations(app: Flask) -> dict[str, FhirResource]:
    """The local store's Observations by logical id."""
    with services(app).db.session() as db:
        found = {r.logical_id: r for r in db.scalars(select(FhirResource).where(
            FhirResource.resource_type == "Observation"))}
        db.expunge_all()
    return found


def test_rejecting_the_measured_photo_puts_its_observations_in_error_once(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Local store: the same Observations, one new version each, ``entered-in-error``, valid;
    a repeat changes nothing. HL7 v2: the values' OBX-11 is W (posted as wrong)."""
    _, study_uid, record = measured_study(app, client, auth["capture"], monkeypatch)
    store = LocalFhirStore(services(app).settings)
    notify(app, store, study_uid)
    before = _observations(app)
    assert [r.body["status"] for r in before.values()] == ["final"] * 3

    corrections.reject(services(app), record["instance"], RejectionReason.QUALITY,
                       actor="admin-user")
    notify(app, store, study_uid)
    notify(app, store, study_uid)  # a retry of the same state changes nothing
    after = _observations(app)
    assert sorted(after) == sorted(before)  # the same resources, no new one
    assert [(r.version_id, r.body["status"]) for r in after.values()] == \
        [(2, "entered-in-error")] * 3
    for logical_id, row in after.items():  # only the status changed
        assert {**row.body, "status": "final"} == before[logical_id].body
    reports = fhir_validate(tmp_path, [LocalFhirStore.render(r) for r in after.values()])
    assert [r["errors"] for r in reports] == [[], [], []], reports

    with mllp_receiver() as receiver:
        settings = replace(services(app).settings, emr_notifiers="hl7v2",
                           emr_mllp_address=receiver.address, emr_timeout_seconds=1).checked()
        [notifier] = build_notifiers(settings)
        notify(app, notifier, study_uid)
    message = hl7.parse(receiver.raw[-1])
    numeric = [s for s in message.segments("OBX") if str(s[2]) == "NM" and
               str(s[3][0][0]) != "NINST"]
    assert [str(s[11]) for s in numeric] == ["W", "W", "W"]


def test_a_moved_study_s_observations_in_error_and_new_ones_for_the_right_patient(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        fhir_peer: FhirPeer, proxy: FaultProxy, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On the FHIR peer: the old study's Observations become ``entered-in-error`` (same
    resources, the wrong patient's), the copied SR's values are new Observations of the right
    patient, each exactly once through a retry; all valid."""
    _, old_study, _ = measured_study(app, client, auth["capture"], monkeypatch,
                                     id="MRN0001", issuer="1.2.3.4.5.6")
    with services(app).db.session() as db:  # the peer's Patient p2, in our directory
        db.add(PatientRow(mrn="MRN0002", issuer="1.2.3.4.5.6", family="TEST", given="BOB"))
    notifier = _remote(app, proxy.url)
    notify(app, notifier, old_study)

    def on_peer(patient: str) -> list[dict[str, Any]]:
        bundle = requests.get(f"{fhir_peer.url}/Observation", timeout=5,
                              params={"subject": f"Patient/{patient}"}).json()
        return sorted((e["resource"] for e in bundle.get("entry", [])),
                      key=lambda r: r["identifier"][0]["value"])

    first = on_peer("p1")
    assert [o["status"] for o in first] == ["final"] * 3

    moved = corrections.move_to_patient(services(app), old_study, "MRN0002", "1.2.3.4.5.6",
                                        "wrong wristband", actor="admin-user")
    # The update of the second old Observation is refused once (503): a retry finishes.
    refused = f"PUT /fhir/Observation/{first[1]['id']}"
    proxy.plan[refused] = ["503"]
    with pytest.raises(TransientError, match="answered 503 while updating the Observation"):
        notify(app, notifier, old_study)
    for study in (old_study, moved.new_study_uid, old_study, moved.new_study_uid):
        notify(app, notifier, study)  # the second round: the same state, nothing written
    puts = [s["key"] for s in proxy.seen if s["key"].startswith("PUT /fhir/Observation/")]
    assert sorted(puts) == sorted([*(f"PUT /fhir/Observation/{o['id']}" for o in first),
                                   refused])  # each once, the refused one twice
    in_error, right = on_peer("p1"), on_peer("p2")
    assert [(o["id"], o["status"]) for o in in_error] == \
        [(o["id"], "entered-in-error") for o in first]
    assert [o["status"] for o in right] == ["final"] * 3
    copies = rows(app, moved.new_study_uid)
    assert {o["identifier"][0]["value"] for o in right} == {
        "urn:oid:" + observation_uid(r.report_sop_uid, r.region, r.quantity) for r in copies}
    assert {o["identifier"][0]["value"] for o in right}.isdisjoint(
        o["identifier"][0]["value"] for o in first)
    [new_imaging] = fhir_peer.studies(moved.new_study_uid)
    assert {o["derivedFrom"][0]["reference"] for o in right} == \
        {f"ImagingStudy/{new_imaging['id']}"}
    everyone = requests.get(f"{fhir_peer.url}/Observation", timeout=5).json()
    assert len(everyone.get("entry", [])) == 6
    reports = fhir_validate(tmp_path, [*in_error, *right])
    assert [r["errors"] for r in reports] == [[]] * 6, reports


WARNED_PHOTO = CHARTS / "jtvd_mini_01.jpg"  # a Mini chart in the middle of a 1530 x 2040 photo
WARNED_LINE = "100,100,700,100"  # along the top edge: more than 2 chart diagonals away


def test_a_value_s_warnings_reach_the_emr_and_survive_a_move(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    """A line far from the chart: its row keeps the warning, its Observation has it as a
    note (valid), its OBX is followed by an NTE with it; a moved study's copies keep it."""
    photo_uid = stored_photo(client, auth["capture"], WARNED_PHOTO, id="MRN0001",
                             issuer="1.2.3.4.5.6")
    result = measure(app, "--instance", photo_uid, "--line", WARNED_LINE, "--line", LINE)
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert [w["code"] for w in record["warnings"]] == [FAR_FROM_CHART]
    study_uid = record["study_instance_uid"]
    values = rows(app, study_uid)
    assert [(r.region, r.warnings) for r in values] == [(1, [FAR_FROM_CHART]), (2, [])]

    store = LocalFhirStore(services(app).settings)
    notify(app, store, study_uid)
    with services(app).db.session() as db:
        observations = list(db.scalars(select(FhirResource.body).where(
            FhirResource.resource_type == "Observation")))
    notes = {o["valueQuantity"]["value"]: o.get("note") for o in observations}
    assert notes == {round(values[0].value, 2): [{"text": WARNINGS[FAR_FROM_CHART]}],
                     round(values[1].value, 2): None}
    reports = fhir_validate(tmp_path, observations)
    assert [r["errors"] for r in reports] == [[], []], reports

    with mllp_receiver() as receiver:
        settings = replace(services(app).settings, emr_notifiers="hl7v2",
                           emr_mllp_address=receiver.address, emr_timeout_seconds=1).checked()
        [notifier] = build_notifiers(settings)
        notify(app, notifier, study_uid)  # hl7apy's strict parse in the receiver passed
    [raw] = receiver.raw
    segments = [s for s in hl7.parse(raw) if str(s[0]) in ("OBX", "NTE")]
    after = [(str(s[0]), str(s[3][0][0]) if str(s[0]) == "OBX" else str(s[3]))
             for s in segments[3:]]  # after the study UID, instance count and viewer OBX
    assert after == [("OBX", "39126-8"), ("NTE", WARNINGS[FAR_FROM_CHART]),
                     ("OBX", "39126-8")]
    [nte] = [s for s in segments if str(s[0]) == "NTE"]
    assert (str(nte[1]), str(nte[2])) == ("1", "L")

    with services(app).db.session() as db:
        db.add(PatientRow(mrn="MRN0002", issuer="1.2.3.4.5.6", family="TEST", given="BOB"))
    moved = corrections.move_to_patient(services(app), study_uid, "MRN0002", "1.2.3.4.5.6",
                                        "wrong wristband", actor="admin-user")
    assert [(r.region, r.warnings) for r in rows(app, moved.new_study_uid)] == \
        [(1, [FAR_FROM_CHART]), (2, [])]
