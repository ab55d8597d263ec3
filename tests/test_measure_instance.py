"""``ebiw measure --instance``: a photo stored by the intake is measured on its stored pixels,
the result stored as a TID 1500 SR in its study with a colour presentation state drawing the
regions, indexed, found by QIDO, queued for the PACS, audited; bad input stores nothing."""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from datetime import UTC
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from click.testing import CliRunner, Result
from flask import Flask
from flask.testing import FlaskClient
from pydicom.encaps import generate_frames
from pydicom.sr.codedict import codes
from pydicom.valuerep import DT
from sqlalchemy import func, select

from app.cli import cli
from app.db.models import (
    AuditEvent,
    Delivery,
    DeliveryKind,
    Instance,
    WoundMeasurement,
    as_utc,
)
from app.pipeline.dicom.kos import RejectionReason
from app.pipeline.dicom.pr import PR_SOP_CLASS_UID
from app.pipeline.dicom.sr import SR_SOP_CLASS_UID
from app.pipeline.geometry import calibrate_photo
from app.workflow.corrections import reject
from app.workflow.intake import MEASUREMENT_SERIES_NUMBER, PRESENTATION_SERIES_NUMBER
from tests.conftest import CHARTS, PEERS, dicom_validate, services

PHOTO = CHARTS / "jtvd_classic_02.jpg"  # a tilted Classic chart, 1530 x 2040
NO_CHART = CHARTS / "karnehen_cam2_nochart.jpg"
SESSION = {"patient": {"id": "00123456", "issuer": "HOSP-A", "name": "DEMO^ALICE",
                       "birth_date": "1950-03-14", "sex": "F"},
           "encounter": "ENC1001", "body_site": "14975008", "laterality": "L",
           "department": "Wound care"}
LINE = "200,300,1300,1800"
SQUARE = "300,400,900,420,880,1000,320,980"


@pytest.fixture
def app_overrides(tmp_path: Path) -> dict[str, object]:
    """One STOW-RS PACS destination (never contacted: no worker runs), no EMR notifier."""
    path = tmp_path / "destinations.json"
    path.write_text(json.dumps({"destinations": [
        {"name": "pacs", "type": "stow-rs", "url": "http://127.0.0.1:9/dicom-web"}]}))
    return {"destinations_file": path, "emr_notifiers": ""}


def stored_photo(client: FlaskClient, headers: dict[str, str], photo: Path,
                 **patient: str) -> str:
    """Upload ``photo`` through the API into a new session; its SOP Instance UID."""
    body = {**SESSION, "patient": {**SESSION["patient"], **patient}}
    session = client.post("/api/v1/sessions", json=body, headers=headers).get_json()
    response = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                          data=photo.read_bytes(), headers=headers)
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["sop_instance_uid"])


def measure(app: Flask, *args: str) -> Result:
    """``ebiw measure ARGS`` against ``app``'s data directory, database and destinations."""
    settings = services(app).settings
    env = {"EBIW_DATA_DIR": str(settings.data_dir), "EBIW_ENV": "test",
           "EBIW_DESTINATIONS_FILE": str(settings.destinations_file or ""),
           "EBIW_EMR_NOTIFIERS": "", "EBIW_DATABASE_URL": settings.database_url or ""}
    return CliRunner().invoke(cli, ["measure", *args], env=env)


def state(app: Flask) -> tuple[int, int, int, int]:
    """(instance rows, files in the archive, delivery rows, audit records)."""
    svc = services(app)
    with svc.db.session() as db:
        rows = [db.scalar(select(func.count()).select_from(model))
                for model in (Instance, Delivery, AuditEvent)]
    files = sum(1 for _ in svc.settings.archive_root.rglob("*.dcm"))
    return rows[0] or 0, files, rows[1] or 0, rows[2] or 0


def read_sr(app: Flask, sop_uid: str) -> tuple[Instance, bytes]:
    svc = services(app)
    with svc.db.session() as db:
        row = db.get(Instance, sop_uid)
        assert row is not None
        db.expunge(row)
    return row, svc.archive.read(row)


def test_the_sr_is_stored_in_the_study_indexed_queued_and_matches_the_json(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    source_uid = stored_photo(client, auth["capture"], PHOTO)
    result = measure(app, "--instance", source_uid, "--line", LINE, "--polygon", SQUARE,
                     "--wound", "Heel ulcer", "--observer", "NURSE^JANE")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    sr_uid = record["sr_sop_instance_uid"]
    assert record["instance"] == source_uid and record["wound"] == "Heel ulcer"

    row, data = read_sr(app, sr_uid)
    ds = pydicom.dcmread(io.BytesIO(data))
    source = pydicom.dcmread(io.BytesIO(read_sr(app, source_uid)[1]))
    assert ds.SOPClassUID == SR_SOP_CLASS_UID == row.sop_class_uid
    assert ds.Modality == "SR" and ds.SeriesNumber == MEASUREMENT_SERIES_NUMBER
    assert ds.StudyInstanceUID == source.StudyInstanceUID == record["study_instance_uid"]
    assert ds.SeriesInstanceUID not in (source.SeriesInstanceUID, "")
    assert (ds.PatientID, ds.PatientName) == (source.PatientID, source.PatientName)
    assert row.attributes["Modality"] == "SR"

    # The values are those printed, measured on the stored pixels (not the uploaded file).
    frame = next(generate_frames(source.PixelData, number_of_frames=1))
    calibration = calibrate_photo(frame)
    assert record["lines_mm"] == [round(calibration.length_mm((200, 300), (1300, 1800)).value, 2)]
    report = hd.sr.srread(io.BytesIO(data))
    groups = report.content.get_planar_roi_measurement_groups()
    assert len(groups) == 2
    line_group, area_group = groups
    [length] = line_group.get_measurements(name=codes.SCT.Length)
    assert length.value == pytest.approx(record["lines_mm"][0], abs=0.01)
    assert length.unit == codes.UCUM.Millimeter
    [area] = area_group.get_measurements(name=codes.SCT.Area)
    [perimeter] = area_group.get_measurements(name=codes.SCT.Perimeter)
    assert area.value == pytest.approx(record["areas_mm2"][0], abs=0.05)
    assert perimeter.value == pytest.approx(record["perimeters_mm"][0], abs=0.01)
    for group in groups:
        assert group.tracking_identifier == "Heel ulcer"
        assert group.tracking_uid == record["tracking_uid"]
        region = group.roi
        assert region is not None and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        [image] = region.ContentSequence  # the SCOORD is selected from the source image
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source_uid
    assert line_group.roi is not None and line_group.roi.value.tolist() == [
        [200.0, 300.0], [1300.0, 1800.0]]

    # QIDO finds it as an SR series of the study, and the study lists SR among its modalities.
    view = auth["view"]
    url = f"/dicomweb/studies/{ds.StudyInstanceUID}/series?Modality=SR"
    series = client.get(url, headers=view).get_json()
    assert [s["0020000E"]["Value"][0] for s in series] == [ds.SeriesInstanceUID]
    studies = client.get(f"/dicomweb/studies?ModalitiesInStudy=SR&StudyInstanceUID="
                         f"{ds.StudyInstanceUID}", headers=view).get_json()
    assert len(studies) == 1 and "SR" in studies[0]["00080061"]["Value"]

    with services(app).db.session() as db:
        queued = db.scalars(select(Delivery).where(Delivery.sop_uid == sr_uid)).all()
        assert [(d.destination, d.kind, d.status) for d in queued] == [
            ("pacs", DeliveryKind.PACS, "pending")]
        event = db.scalars(select(AuditEvent).where(
            AuditEvent.action == "measurement.store")).one()
        assert f"instance:{sr_uid}" in event.entities
        # The values are indexed, one row per value, in the SR's region order.
        rows = db.scalars(select(WoundMeasurement).where(
            WoundMeasurement.report_sop_uid == sr_uid).order_by(WoundMeasurement.id)).all()
        assert [(r.region, r.quantity, r.unit) for r in rows] == [
            (1, "length", "mm"), (2, "area", "mm2"), (2, "perimeter", "mm")]
        assert [r.value for r in rows] == pytest.approx(
            [length.value, area.value, perimeter.value], abs=1e-3)
        assert {(r.photo_sop_uid, r.study_uid, r.tracking_uid, r.wound_label, r.observer)
                for r in rows} == {(source_uid, ds.StudyInstanceUID, record["tracking_uid"],
                                    "Heel ulcer", "NURSE^JANE")}
        assert rows[0].points == [[200.0, 300.0], [1300.0, 1800.0]]
        expected = DT(f"{source.ContentDate}{source.ContentTime}"
                      f"{source.get('TimezoneOffsetFromUTC', '')}")  # no EXIF time: content
        assert as_utc(rows[0].taken_at) == expected.astimezone(UTC).replace(microsecond=0) \
            or as_utc(rows[0].taken_at) == expected.astimezone(UTC)


def test_dciodvfy_finds_no_error_or_warning(app: Flask, client: FlaskClient,
                                            auth: dict[str, dict[str, str]],
                                            tmp_path: Path) -> None:
    source_uid = stored_photo(client, auth["capture"], PHOTO)
    record = json.loads(measure(app, "--instance", source_uid, "--line", LINE,
                                "--polygon", SQUARE).output)
    path, photo = tmp_path / "sr.dcm", tmp_path / "photo.dcm"
    path.write_bytes(read_sr(app, record["sr_sop_instance_uid"])[1])
    photo.write_bytes(read_sr(app, source_uid)[1])
    proc = subprocess.run(["bash", str(PEERS / "dicom_validate.sh"), "--iod",
                           "Comprehensive3DSR", str(path)], capture_output=True, text=True,
                          check=False)
    assert "TOTAL errors=0 warnings=0" in proc.stdout, proc.stdout + proc.stderr
    # dcentvfy: the SR's patient and study agree with the photo's (one study, two series).
    both = subprocess.run(["bash", str(PEERS / "dicom_validate.sh"), "--any-iod", str(photo),
                           str(path)], capture_output=True, text=True, check=False)
    assert both.returncode == 0 and "TOTAL errors=0 warnings=0" in both.stdout, both.stdout


def test_a_presentation_state_draws_the_regions_on_the_photo(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    source_uid = stored_photo(client, auth["capture"], PHOTO)
    result = measure(app, "--instance", source_uid, "--line", LINE, "--polygon", SQUARE,
                     "--wound", "Heel ulcer", "--observer", "NURSE^JANE")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    row, data = read_sr(app, record["pr_sop_instance_uid"])
    pr = pydicom.dcmread(io.BytesIO(data))
    source = pydicom.dcmread(io.BytesIO(read_sr(app, source_uid)[1]))
    assert pr.SOPClassUID == PR_SOP_CLASS_UID == row.sop_class_uid
    assert (pr.Modality, pr.SeriesNumber) == ("PR", PRESENTATION_SERIES_NUMBER)
    assert row.attributes["Modality"] == "PR"
    assert pr.StudyInstanceUID == source.StudyInstanceUID
    assert pr.SeriesInstanceUID not in (source.SeriesInstanceUID, record["sr_series_instance_uid"])
    [series] = pr.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source_uid

    # The graphics are the drawn points (the stored photo's pixels, as the SR's SCOORD), the
    # polygon closed, each with its value and unit, on the wound's tracking identifiers.
    line, area = pr.GraphicAnnotationSequence
    assert [a.ReferencedImageSequence[0].ReferencedSOPInstanceUID for a in (line, area)] == [
        source_uid, source_uid]
    report = hd.sr.srread(io.BytesIO(read_sr(app, record["sr_sop_instance_uid"])[1]))
    for annotation, group in zip((line, area),
                                 report.content.get_planar_roi_measurement_groups(), strict=True):
        [graphic] = annotation.GraphicObjectSequence
        assert (graphic.GraphicType, graphic.GraphicAnnotationUnits) == ("POLYLINE", "PIXEL")
        assert group.roi is not None
        assert graphic.GraphicData == group.roi.value.ravel().tolist()
        assert (graphic.TrackingID, graphic.TrackingUID) == ("Heel ulcer", record["tracking_uid"])
    assert line.GraphicObjectSequence[0].GraphicData == [200, 300, 1300, 1800]
    assert area.GraphicObjectSequence[0].GraphicData == [
        300, 400, 900, 420, 880, 1000, 320, 980, 300, 400]
    assert line.TextObjectSequence[0].UnformattedTextValue == f"L {record['lines_mm'][0]:.1f} mm"
    assert area.TextObjectSequence[0].UnformattedTextValue == (
        f"A {record['areas_mm2'][0]:.1f} mm\N{SUPERSCRIPT TWO} / "
        f"P {record['perimeters_mm'][0]:.1f} mm")
    assert pr.ContentCreatorName == "NURSE^JANE"
    # The photo's profile, an Input Device profile (PS3.3 C.11.15.1.1) as the photo has it.
    assert pr.ICCProfile == source.ICCProfile and pr.ICCProfile[12:16] == b"scnr"

    path = tmp_path / "pr.dcm"
    path.write_bytes(data)
    errors, warnings, output = dicom_validate(path, iod="ColorSoftcopyPresentationState",
                                              decode=False)
    assert (errors, warnings) == (0, 0), output

    view = auth["view"]
    found = client.get(f"/dicomweb/studies/{pr.StudyInstanceUID}/series?Modality=PR",
                       headers=view).get_json()
    assert [s["0020000E"]["Value"][0] for s in found] == [pr.SeriesInstanceUID]
    with services(app).db.session() as db:
        queued = db.scalars(select(Delivery).where(Delivery.sop_uid == pr.SOPInstanceUID)).all()
        assert [(d.destination, d.status) for d in queued] == [("pacs", "pending")]
        event = db.scalars(select(AuditEvent).where(
            AuditEvent.action == "measurement.store")).one()
        assert f"instance:{pr.SOPInstanceUID}" in event.entities


def test_rejecting_a_report_rejects_its_presentation_state(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    source_uid = stored_photo(client, auth["capture"], PHOTO)
    kept, rejected = (json.loads(measure(app, "--instance", source_uid, "--line", LINE).output)
                      for _ in range(2))
    rejection = reject(services(app), rejected["sr_sop_instance_uid"], RejectionReason.QUALITY,
                       actor="admin")
    assert rejection.rejected == (rejected["sr_sop_instance_uid"],
                                  rejected["pr_sop_instance_uid"])
    rows = {uid: read_sr(app, uid)[0] for record in (kept, rejected)
            for uid in (record["sr_sop_instance_uid"], record["pr_sop_instance_uid"])}
    assert {uid for uid, row in rows.items() if row.rejected_at is not None} == {
        rejected["sr_sop_instance_uid"], rejected["pr_sop_instance_uid"]}


def test_the_same_wound_keeps_its_tracking_uid_across_visits(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    first = stored_photo(client, auth["capture"], PHOTO)
    second = stored_photo(client, auth["capture"], PHOTO)
    other_patient = stored_photo(client, auth["capture"], PHOTO, id="00999999")

    def tracking(uid: str, label: str) -> tuple[str, str]:
        result = measure(app, "--instance", uid, "--line", LINE, "--wound", label)
        assert result.exit_code == 0, result.output
        record = json.loads(result.output)
        return record["tracking_uid"], record["sr_sop_instance_uid"]

    (a, sr_a), (b, sr_b) = tracking(first, "left heel"), tracking(second, " Left Heel ")
    assert a == b and sr_a != sr_b
    assert tracking(second, "sacrum")[0] != a
    assert tracking(other_patient, "left heel")[0] != a
    report = hd.sr.srread(io.BytesIO(read_sr(app, sr_b)[1]))
    assert report.content.get_planar_roi_measurement_groups()[0].tracking_uid == a


@pytest.mark.parametrize(("args", "message"), [
    (["--line", "10,10,20,20", "--line", "100,100,1600,100"],
     "line 2: point (1600, 100) is outside the 1530 x 2040"),
    (["--polygon", "10,10,20,20,30,30"], "no area"),
    (["--polygon", "0,0,100,100,100,0,0,100"], "cross"),
    (["--line", LINE, "--wound", "x" * 65], "wound label"),
])
def test_bad_input_is_an_error_and_stores_nothing(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]], args: list[str],
        message: str) -> None:
    source_uid = stored_photo(client, auth["capture"], PHOTO)
    before = state(app)
    result = measure(app, "--instance", source_uid, *args)
    assert result.exit_code != 0
    assert message in result.output
    assert state(app) == before


def test_an_unknown_instance_or_a_photo_without_a_chart_stores_nothing(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    no_chart = stored_photo(client, auth["capture"], NO_CHART)
    before = state(app)
    unknown = measure(app, "--instance", "1.2.3.4", "--line", LINE)
    assert unknown.exit_code == 1
    assert json.loads(unknown.output)["error"] == "no archived photo has SOP Instance UID 1.2.3.4"
    chartless = measure(app, "--instance", no_chart, "--line", LINE)
    assert chartless.exit_code == 1 and "no colour chart" in json.loads(chartless.output)["error"]
    assert measure(app, "--instance", no_chart).exit_code == 2  # nothing to measure
    assert measure(app, "--instance", no_chart, str(PHOTO), "--line", LINE).exit_code == 2
    assert state(app) == before
    next(services(app).settings.archive_root.rglob(f"{no_chart}.dcm")).unlink()
    gone = measure(app, "--instance", no_chart, "--line", LINE)
    assert gone.exit_code == 1 and "cannot be read" in json.loads(gone.output)["error"]
