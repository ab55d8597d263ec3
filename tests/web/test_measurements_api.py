"""The measurements API: lines and polygons drawn on a stored photo are measured on the
chart's plane and stored as a TID 1500 SR (Width coded SCT 103355008), listed back for the
viewer; the assisted outline from a tap. Every bad input is refused with a 4xx naming the
field and stores nothing."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.encaps import generate_frames
from pydicom.sr.codedict import codes
from sqlalchemy import select

from app.db.models import AuditEvent, WoundMeasurement
from app.pipeline.dicom.sr import LOCAL_SCHEME, MEASUREMENT_WARNING, WARNING_CODES
from app.pipeline.geometry import FAR_FROM_CHART, WARNINGS, calibrate_photo
from app.pipeline.outline import outline_photo
from tests.conftest import CHARTS, PEERS, WOUNDS, dicom_validate, log_in, services
from tests.test_measure_instance import NO_CHART, PHOTO, read_sr, state, stored_photo

LENGTH = [[200, 300], [1300, 1800]]
WIDTH = [[1000, 800], [500, 1200]]
SQUARE = [[300, 400], [900, 420], [880, 1000], [320, 980]]


@pytest.fixture
def app_overrides() -> dict[str, object]:
    """No PACS or EMR destination: what is stored is counted in the archive and database."""
    return {"emr_notifiers": ""}


def post(client: FlaskClient, headers: dict[str, str], study: str,
         body: dict[str, Any]) -> Any:
    return client.post(f"/api/v1/studies/{study}/measurements", json=body, headers=headers)


def study_of(app: Flask, sop_uid: str) -> str:
    return str(pydicom.dcmread(io.BytesIO(read_sr(app, sop_uid)[1])).StudyInstanceUID)


def test_saved_measurements_are_the_servers_stored_as_sr_and_listed_back(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    photo_uid = stored_photo(client, auth["capture"], PHOTO)
    study = study_of(app, photo_uid)
    response = post(client, auth["view"], study, {
        "instance": photo_uid, "wound": "Heel ulcer",
        "lines": [{"points": LENGTH, "kind": "length"}, {"points": WIDTH, "kind": "width"}],
        "polygons": [{"points": SQUARE}]})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()

    # The values are measured on the stored pixels' chart-plane homography.
    source = pydicom.dcmread(io.BytesIO(read_sr(app, photo_uid)[1]))
    calibration = calibrate_photo(next(generate_frames(source.PixelData, number_of_frames=1)))
    expected_width = calibration.length_mm((1000, 800), (500, 1200))
    expected_area = calibration.area_mm2([tuple(p) for p in SQUARE])
    assert [line["kind"] for line in body["lines"]] == ["length", "width"]
    assert body["lines"][1]["length"]["value"] == round(expected_width.value, 2)
    assert body["lines"][1]["length"]["uncertainty"] == round(expected_width.uncertainty, 2)
    assert body["lines"][1]["length"]["unit"] == "mm"
    assert body["polygons"][0]["area"]["value"] == round(expected_area.value, 2)
    assert body["polygons"][0]["perimeter"]["unit"] == "mm"
    assert body["calibration"]["tilt_deg"] == round(calibration.tilt_deg, 1)
    assert body["wound"] == "Heel ulcer" and body["study_instance_uid"] == study

    # The SR: Length and Width (SCT 103355008) and Area groups, in the order given.
    row, data = read_sr(app, body["sr_sop_instance_uid"])
    assert row.study_uid == study and row.attributes["Modality"] == "SR"
    report = hd.sr.srread(io.BytesIO(data))
    groups = report.content.get_planar_roi_measurement_groups()
    names = [[m.name for m in g.get_measurements()] for g in groups]
    assert names == [[codes.SCT.Length], [codes.SCT.Width],
                     [codes.SCT.Area, codes.SCT.Perimeter]]
    assert codes.SCT.Width.value == "103355008"
    width = groups[1].get_measurements()[0]
    assert width.value == pytest.approx(expected_width.value, abs=1e-3)
    assert width.unit == codes.UCUM.Millimeter
    assert groups[1].tracking_identifier == "Heel ulcer"
    assert groups[1].tracking_uid == body["tracking_uid"]
    assert groups[1].roi.value.tolist() == [[1000.0, 800.0], [500.0, 1200.0]]
    items = pydicom.dcmread(io.BytesIO(data)).ContentSequence  # observer: the caller
    assert [str(i.PersonName) for i in items if "PersonName" in i] == ["view-user^"]

    # One row per value, width as "width", with the region's points.
    with services(app).db.session() as db:
        rows = db.scalars(select(WoundMeasurement).where(
            WoundMeasurement.report_sop_uid == body["sr_sop_instance_uid"])
            .order_by(WoundMeasurement.region, WoundMeasurement.quantity)).all()
        assert [(r.region, r.quantity, r.unit) for r in rows] == [
            (1, "length", "mm"), (2, "width", "mm"), (3, "area", "mm2"),
            (3, "perimeter", "mm")]
        assert rows[1].points == [[1000.0, 800.0], [500.0, 1200.0]]
        assert rows[1].observer == "view-user" and rows[1].wound_label == "Heel ulcer"

    listed = client.get(f"/api/v1/studies/{study}/measurements", headers=auth["view"])
    assert listed.status_code == 200 and listed.headers["Cache-Control"] == "no-store"
    items = listed.get_json()["measurements"]
    assert [(i["region"], i["kind"]) for i in items] == [(1, "length"), (2, "width"),
                                                         (3, "polygon")]
    assert items[1]["points"] == WIDTH
    assert items[1]["values"]["width"]["value"] == pytest.approx(expected_width.value)
    assert set(items[2]["values"]) == {"area", "perimeter"}
    assert items[2]["photo_sop_instance_uid"] == photo_uid
    assert items[2]["report_sop_instance_uid"] == body["sr_sop_instance_uid"]
    assert items[0]["observer"] == "view-user" and items[0]["wound"] == "Heel ulcer"
    with services(app).db.session() as db:
        actions = db.scalars(select(AuditEvent.action)).all()
    assert "measurement.store" in actions and "measurement.read" in actions


def test_bad_input_is_refused_naming_the_field_and_stores_nothing(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    photo_uid = stored_photo(client, auth["capture"], PHOTO)
    study = study_of(app, photo_uid)
    other_uid = stored_photo(client, auth["capture"], PHOTO, id="00999999", name="DEMO^BOB")
    chartless_uid = stored_photo(client, auth["capture"], NO_CHART)
    chartless_study = study_of(app, chartless_uid)
    good = {"instance": photo_uid, "lines": [{"points": LENGTH}]}
    before = state(app)
    cases = [
        (study, {**good, "instance": other_uid}, 422, "instance:"),  # another patient's study
        (study, {**good, "instance": "1.2.3.4"}, 404, "instance:"),
        ("1.2.3.4", good, 404, "study:"),
        (study, {**good, "lines": [{"points": [[200, 300], [1600, 100]]}]}, 422,
         "lines[0].points: line 1: point (1600, 100) is outside"),
        (study, {**good, "lines": [{"points": [[1, 1], [1, 1]]}]}, 422, "lines[0].points"),
        (study, {**good, "lines": [{"points": LENGTH, "kind": "depth"}]}, 422, "lines[0].kind"),
        (study, {**good, "lines": [{"points": [[1, "x"], [2, 2]]}]}, 422,
         "lines[0].points[0][1]"),
        (study, {"instance": photo_uid, "polygons": [{"points": [[0, 0], [10, 10], [20, 20]]}]},
         422, "polygons[0].points: the polygon has no area"),
        (study, {"instance": photo_uid, "polygons": [
            {"points": [[0, 0], [100, 100], [100, 0], [0, 100]]}]}, 422, "polygons[0].points"),
        (study, {"instance": photo_uid}, 422, "lines:"),
        (study, {**good, "wound": "x" * 65}, 422, "wound:"),
        (chartless_study, {"instance": chartless_uid, "lines": [{"points": LENGTH}]}, 422,
         "instance: no colour chart"),
    ]
    for target, body, status, field in cases:
        response = post(client, auth["view"], target, body)
        assert response.status_code == status, (body, response.get_json())
        assert response.get_json()["error"]["message"].startswith(field), response.get_json()
    assert post(client, auth["view"], chartless_study, {
        "instance": chartless_uid, "lines": [{"points": LENGTH}]}).get_json()["error"][
        "code"] == "no_chart"
    after = state(app)
    assert after[:3] == before[:3]  # no instance, file or delivery was added
    with services(app).db.session() as db:
        assert db.scalars(select(WoundMeasurement)).all() == []
        refusals = db.scalars(select(AuditEvent).where(
            AuditEvent.action == "measurement.store")).all()
    assert refusals and all(r.outcome != "0" for r in refusals)
    assert client.post(f"/api/v1/studies/{study}/measurements", json=good).status_code == 401


def test_outline_proposes_the_wound_under_the_tap(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    wound = sorted((WOUNDS / "images").iterdir())[0]
    photo_uid = stored_photo(client, auth["capture"], wound)
    study = study_of(app, photo_uid)
    source = pydicom.dcmread(io.BytesIO(read_sr(app, photo_uid)[1]))
    seed = [source.Columns // 2, source.Rows // 2]
    response = client.post("/api/v1/outline", json={"study": study, "instance": photo_uid,
                                                    "seed": seed}, headers=auth["view"])
    assert response.status_code == 200, response.get_json()
    polygon = response.get_json()["polygon"]
    # The stored photo has no normalized version (no chart): the outline is of its pixels.
    frame = next(generate_frames(source.PixelData, number_of_frames=1))
    assert polygon == [list(p) for p in outline_photo(frame, tuple(seed))]
    assert len(polygon) >= 3
    outside = client.post("/api/v1/outline", json={
        "study": study, "instance": photo_uid, "seed": [source.Columns + 5, 10]},
        headers=auth["view"])
    assert outside.status_code == 422
    assert outside.get_json()["error"]["message"].startswith("seed: the seed")
    other = client.post("/api/v1/outline", json={
        "study": "1.2.3", "instance": photo_uid, "seed": seed}, headers=auth["view"])
    assert other.status_code == 404


def test_the_session_cookie_needs_the_csrf_token(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        users: dict[str, str]) -> None:
    photo_uid = stored_photo(client, auth["capture"], PHOTO)
    study = study_of(app, photo_uid)
    csrf = log_in(client, users["view"])
    body = {"instance": photo_uid, "lines": [{"points": LENGTH}]}
    refused = client.post(f"/api/v1/studies/{study}/measurements", json=body)
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "csrf"
    with services(app).db.session() as db:
        assert db.scalars(select(WoundMeasurement)).all() == []
    stored = client.post(f"/api/v1/studies/{study}/measurements", json=body,
                         headers={"X-CSRF-Token": csrf})
    assert stored.status_code == 201, stored.get_json()
    assert client.get(f"/api/v1/studies/{study}/measurements").get_json()[
        "measurements"][0]["observer"] == users["view"]


def test_dciodvfy_finds_no_error_in_an_sr_with_a_width(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    photo_uid = stored_photo(client, auth["capture"], PHOTO)
    body = post(client, auth["view"], study_of(app, photo_uid), {
        "instance": photo_uid, "lines": [{"points": LENGTH}, {"points": WIDTH, "kind": "width"}],
        "polygons": [{"points": SQUARE}]}).get_json()
    path = tmp_path / "sr.dcm"
    path.write_bytes(read_sr(app, body["sr_sop_instance_uid"])[1])
    proc = subprocess.run(["bash", str(PEERS / "dicom_validate.sh"), "--iod",
                           "Comprehensive3DSR", str(path)], capture_output=True, text=True,
                          check=False)
    assert "TOTAL errors=0 warnings=0" in proc.stdout, proc.stdout + proc.stderr


def test_a_stored_report_is_withdrawn_by_its_author_or_an_admin_as_an_iocm_rejection(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    photo_uid = stored_photo(client, auth["capture"], PHOTO)
    study = study_of(app, photo_uid)
    saved = [post(client, auth["view"], study, {
        "instance": photo_uid, "wound": wound, "lines": [{"points": LENGTH}]}).get_json()
        for wound in ("Heel ulcer", "Sacrum")]
    first, second = (body["sr_sop_instance_uid"] for body in saved)
    graphics = saved[0]["pr_sop_instance_uid"]
    url = f"/api/v1/studies/{study}/measurements/"

    # Another user's report, a photo, an unknown UID, another study: refused, nothing changed.
    refused = client.delete(url + first, headers=auth["capture"])
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "not_allowed"
    assert client.delete(url + photo_uid, headers=auth["view"]).status_code == 404
    assert client.delete(url + graphics, headers=auth["view"]).status_code == 404
    assert client.delete(url + "2.25.999", headers=auth["view"]).status_code == 404
    assert client.delete(f"/api/v1/studies/2.25.7/measurements/{first}",
                         headers=auth["view"]).status_code == 404
    listed = client.get(url[:-1], headers=auth["view"]).get_json()["measurements"]
    assert {m["report_sop_instance_uid"] for m in listed} == {first, second}

    answer = client.delete(url + first, headers=auth["view"])
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["withdrawn"] == [first, graphics] and body["study_instance_uid"] == study
    again = client.delete(url + first, headers=auth["view"])
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "withdrawn"
    assert client.delete(url + second, headers=auth["admin"]).status_code == 200

    # The reports are rejected, with their presentation states, by a KOS (113001) in the
    # study that references them, and leave the list the viewer draws and QIDO.
    assert client.get(url[:-1], headers=auth["view"]).get_json()["measurements"] == []
    for uid in (first, graphics):
        row, _ = read_sr(app, uid)
        assert (row.rejection_code, row.rejected_by_kos) == ("113001",
                                                             body["kos_sop_instance_uid"])
    for modality in ("SR", "PR"):
        assert client.get(f"/dicomweb/studies/{study}/series?Modality={modality}",
                          headers=auth["view"]).get_json() in ([], None)
    _, note = read_sr(app, body["kos_sop_instance_uid"])
    kos = pydicom.dcmread(io.BytesIO(note))
    assert kos.StudyInstanceUID == study and kos.ConceptNameCodeSequence[0].CodeValue == "113001"
    assert [i.ReferencedSOPInstanceUID for s in kos.CurrentRequestedProcedureEvidenceSequence
            for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence] == [
                first, graphics]
    with services(app).db.session() as db:
        actions = db.scalars(select(AuditEvent.action).where(
            AuditEvent.action.in_(("measurement.withdraw", "correction.reject")))).all()
    assert actions.count("correction.reject") == 2 and actions.count("measurement.withdraw") == 8


def test_warnings_are_kept_in_the_sr_and_the_index_and_listed_back(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    """A line and an outline far from a Mini chart, a line beside it: the far regions' SR
    groups carry the warning as a coded qualitative evaluation (local scheme declared), their
    rows keep it and the list the viewer reads after a reload says it; dciodvfy: no error."""
    photo_uid = stored_photo(client, auth["capture"], CHARTS / "jtvd_mini_01.jpg")
    study = study_of(app, photo_uid)
    far, near = [[100, 100], [700, 100]], [[100, 1900], [700, 1900]]
    corner = [[0, 0], [600, 0], [600, 600], [0, 600]]
    body = post(client, auth["view"], study, {
        "instance": photo_uid, "lines": [{"points": far}, {"points": near}],
        "polygons": [{"points": corner}]}).get_json()
    assert [line["length"]["warnings"] for line in body["lines"]] == [[FAR_FROM_CHART], []]
    assert body["polygons"][0]["area"]["warnings"] == [FAR_FROM_CHART]

    data = read_sr(app, body["sr_sop_instance_uid"])[1]
    groups = hd.sr.srread(io.BytesIO(data)).content.get_planar_roi_measurement_groups()
    evaluations = [[(e.name, e.value) for e in g.get_qualitative_evaluations()]
                   for g in groups]
    assert evaluations == [[(MEASUREMENT_WARNING, WARNING_CODES[FAR_FROM_CHART])], [],
                           [(MEASUREMENT_WARNING, WARNING_CODES[FAR_FROM_CHART])]]
    assert WARNING_CODES[FAR_FROM_CHART].value == FAR_FROM_CHART
    [scheme] = pydicom.dcmread(io.BytesIO(data)).CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == LOCAL_SCHEME == "99EBIW"
    path = tmp_path / "sr.dcm"
    path.write_bytes(data)
    errors, _, report = dicom_validate(path, iod="Comprehensive3DSR", decode=False)
    assert errors == 0, report
    # Its only warnings: dciodvfy knows no private ("99") coding scheme designator.
    assert {line.split(" - ")[-1] for line in report.splitlines()
            if line.strip().startswith("Warning")} == {"Unrecognized defined term = <99EBIW>"}

    with services(app).db.session() as db:
        rows = db.scalars(select(WoundMeasurement).order_by(
            WoundMeasurement.region, WoundMeasurement.quantity)).all()
        assert [(r.region, r.quantity, r.warnings) for r in rows] == [
            (1, "length", [FAR_FROM_CHART]), (2, "length", []),
            (3, "area", [FAR_FROM_CHART]), (3, "perimeter", [FAR_FROM_CHART])]
    items = client.get(f"/api/v1/studies/{study}/measurements",
                       headers=auth["view"]).get_json()["measurements"]
    message = {"code": FAR_FROM_CHART, "message": WARNINGS[FAR_FROM_CHART]}
    assert [i["warnings"] for i in items] == [[message], [], [message]]
