"""The healing trajectory of a wound: real measurement SRs (``ebiw measure --instance``) on real
chart photos uploaded with EXIF capture times weeks apart, then the computed figures, the CSV,
the page and the viewer's link, audited; refused as the viewer's data is refused."""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select

from app.db.models import AuditEvent, LaunchContext, Patient, WoundMeasurement
from app.pipeline.dicom.kos import RejectionReason
from app.web.auth import SESSION_COOKIE
from app.workflow import corrections
from app.workflow.accounts import launch_login
from app.workflow.trajectory import UnknownWound, csv_columns, wound_trajectory
from tests.conftest import CHARTS, services
from tests.test_measure_instance import SESSION, measure

PHOTO = CHARTS / "jtvd_classic_02.jpg"  # a tilted Classic chart, 1530 x 2040
HTML = {"Accept": "text/html"}
CENTRE = (600.0, 700.0)
OUTLINE = [(300, 400), (900, 420), (880, 1000), (320, 980)]


def polygon(scale: float) -> str:
    """The test outline scaled about :data:`CENTRE`, as ``--polygon`` takes it."""
    x0, y0 = CENTRE
    return ",".join(f"{x0 + (x - x0) * scale:.0f},{y0 + (y - y0) * scale:.0f}"
                    for x, y in OUTLINE)


def photo_taken(when: datetime, path: Path = PHOTO) -> bytes:
    """``path`` re-encoded as a JPEG whose EXIF says it was taken at ``when`` (UTC)."""
    image = Image.open(path).convert("RGB")
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = when.strftime("%Y:%m:%d %H:%M:%S")
    exif.get_ifd(0x8769)[0x9011] = "+00:00"
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92, exif=exif)
    return out.getvalue()


def visit(client: FlaskClient, headers: dict[str, str], when: datetime,
          patient_id: str = "00123456") -> tuple[str, str]:
    """A new capture session with one photo taken at ``when``: (study UID, photo SOP UID)."""
    body = {**SESSION, "patient": {**SESSION["patient"], "id": patient_id}}
    session = client.post("/api/v1/sessions", json=body, headers=headers).get_json()
    put = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                     data=photo_taken(when), headers=headers)
    assert put.status_code == 201, put.get_json()
    return session["study_instance_uid"], put.get_json()["sop_instance_uid"]


def measured(app: Flask, photo_uid: str, *args: str, wound: str = "left heel") -> dict:
    """``ebiw measure --instance`` on ``photo_uid`` (must succeed): its JSON record."""
    result = measure(app, "--instance", photo_uid, "--wound", wound, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@dataclass(frozen=True)
class Seeded:
    """Four visits of one wound: study UIDs, and the measured records that count."""

    studies: list[str]
    records: list[dict]  # the record that counts, per visit
    superseded: dict  # the earlier report of visit 3
    other_wound: dict  # another wound of the same patient, at visit 2

    @property
    def tracking_uid(self) -> str:
        return self.records[0]["tracking_uid"]


DAYS = [datetime(2024, 3, 1, 10, 0, tzinfo=UTC), datetime(2024, 3, 15, 10, 0, tzinfo=UTC),
        datetime(2024, 3, 28, 10, 0, tzinfo=UTC), datetime(2024, 4, 5, 10, 0, tzinfo=UTC)]
"""Days 0, 14, 27 and 35: day 27 is the visit nearest 4 weeks; day 35 is in the window too."""


def seed(app: Flask, client: FlaskClient, headers: dict[str, str]) -> Seeded:
    visits = [visit(client, headers, when) for when in DAYS]
    records = [measured(app, visits[0][1], "--polygon", polygon(1.0), "--line",
                        "300,400,880,1000")]
    other = measured(app, visits[1][1], "--polygon", polygon(0.5), wound="sacrum")
    records.append(measured(app, visits[1][1], "--polygon", polygon(0.85)))
    superseded = measured(app, visits[2][1], "--polygon", polygon(0.3))
    records.append(measured(app, visits[2][1], "--polygon", polygon(0.6), "--polygon",
                            "1000,1500,1100,1500,1100,1600,1000,1600"))
    records.append(measured(app, visits[3][1], "--polygon", polygon(0.5)))
    return Seeded([study for study, _ in visits], records, superseded, other)


@pytest.fixture
def seeded(app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> Seeded:
    return seed(app, client, auth["capture"])


def change(value: float, reference: float) -> tuple[float, float]:
    return value - reference, (value - reference) / reference * 100


def test_the_trajectory_follows_the_rules_and_the_csv_and_page_give_its_figures(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        seeded: Seeded) -> None:
    printed = [sum(r["areas_mm2"]) for r in seeded.records]  # rounded to 0.1 mm² each
    assert printed[0] > printed[1] > printed[2] > printed[3] > 0
    trajectory = wound_trajectory(services(app), seeded.tracking_uid)
    assert trajectory.wound_label == "left heel" and trajectory.patient_id == "00123456"
    # one visit per study, in time order; visit 3 counts its latest report (two regions)
    assert [v.study_uid for v in trajectory.visits] == seeded.studies
    assert [v.taken_at for v in trajectory.visits] == DAYS
    assert [v.report_sop_uid for v in trajectory.visits] == [
        r["sr_sop_instance_uid"] for r in seeded.records]
    assert seeded.superseded["sr_sop_instance_uid"] not in {
        v.report_sop_uid for v in trajectory.visits}
    areas = [v.figures["area"].value for v in trajectory.visits]
    assert areas == pytest.approx(printed, abs=0.1)
    first, *later = trajectory.visits
    assert first.figures["area"].since_first is None
    assert first.figures["length"].value == pytest.approx(seeded.records[0]["lines_mm"][0],
                                                          abs=0.01)
    assert all("length" not in v.figures and "width" not in v.figures for v in later)
    for n, v in enumerate(later, start=1):
        since_first, since_previous = v.figures["area"].since_first, \
            v.figures["area"].since_previous
        assert since_first is not None and since_previous is not None
        assert (since_first.absolute, since_first.percent) == pytest.approx(
            change(areas[n], areas[0]), abs=1e-9)
        assert (since_previous.absolute, since_previous.percent) == pytest.approx(
            change(areas[n], areas[n - 1]), abs=1e-9)
    four = trajectory.four_week
    assert four.baseline is first and four.week4 is trajectory.visits[2]
    assert four.days == pytest.approx(27.0)
    assert four.percent == pytest.approx((areas[0] - areas[2]) / areas[0] * 100, abs=1e-9)

    # The CSV: the same figures, one row per visit, PHI-free file name, not cached, audited.
    response = client.get(f"/api/v1/wounds/{seeded.tracking_uid}/trajectory.csv",
                          headers=auth["view"])
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == \
        'attachment; filename="wound-trajectory.csv"'
    assert response.headers["Cache-Control"] == "no-store"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert list(rows[0]) == csv_columns()
    assert [r["study_instance_uid"] for r in rows] == seeded.studies
    assert [datetime.fromisoformat(r["taken_at"]) for r in rows] == DAYS
    assert [float(r["area_mm2"]) for r in rows] == pytest.approx(areas, abs=0.006)
    assert rows[0]["area_mm2_change_since_first"] == "" and rows[0]["length_mm"] != ""
    assert float(rows[3]["area_percent_change_since_first"]) == pytest.approx(
        change(areas[3], areas[0])[1], abs=0.006)
    assert float(rows[2]["area_mm2_change_since_previous"]) == pytest.approx(
        areas[2] - areas[1], abs=0.006)
    assert [r["four_week_role"] for r in rows] == ["baseline", "", "week 4", ""]
    assert float(rows[2]["four_week_area_reduction_percent"]) == pytest.approx(
        four.percent, abs=0.006)
    assert {r["width_mm"] for r in rows} == {""}
    assert "DEMO" not in response.get_data(as_text=True)  # no patient name in the export

    # The page: the same figures in the table, each visit linking to its study.
    page = client.get(f"/wounds/{seeded.tracking_uid}", headers={**auth["view"], **HTML})
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert page.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    for study, area in zip(seeded.studies, areas, strict=True):
        assert f'href="/studies/{study}"' in html
        assert f'data-area="{area:.2f}"' in html
    assert f"{four.percent:.0f} %" in html and "Sheehan" in html
    assert '<a class="back" href="/">← Home</a>' in html  # a way back, as from the viewer
    assert "<script>" not in html and "style=" not in html

    with services(app).db.session() as db:
        events = db.scalars(select(AuditEvent).where(AuditEvent.action.in_(
            ["wound.read", "wound.export"])).order_by(AuditEvent.seq)).all()
        assert [(e.action, e.outcome, e.actor) for e in events] == [
            ("wound.export", "success", "view-user"), ("wound.read", "success", "view-user")]
        for event in events:
            assert f"wound:{seeded.tracking_uid}" in event.entities
            assert "patient:HOSP-A|00123456" in event.entities
            assert all(f"study:{s}" in event.entities for s in seeded.studies)


def test_another_wound_has_its_own_trajectory_and_the_viewer_links_each_wound(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        users: dict[str, str], seeded: Seeded) -> None:
    other = wound_trajectory(services(app), seeded.other_wound["tracking_uid"])
    assert other.wound_label == "sacrum" and len(other.visits) == 1
    assert other.four_week.percent is None
    assert other.four_week.reason == "no visit 3 to 5 weeks after the first area measurement"
    # The study of visit 2 links both of its wounds, for a logged-in user only.
    assert client.post("/login", json={"username": users["view"],
                                       "password": "correct horse battery staple"}
                       ).status_code == 200
    html = client.get(f"/studies/{seeded.studies[1]}", headers=HTML).get_data(as_text=True)
    assert f'href="/wounds/{seeded.tracking_uid}">left heel: size over time' in html
    assert f'href="/wounds/{other.tracking_uid}">sacrum: size over time' in html
    anonymous = app.test_client().get(f"/studies/{seeded.studies[1]}", headers=HTML)
    assert "/wounds/" not in anonymous.get_data(as_text=True)
    # The logged-in session opens the page through its cookie.
    assert client.get(f"/wounds/{seeded.tracking_uid}", headers=HTML).status_code == 200


def test_refused_as_the_viewer_data_is_and_unknown_wounds_are_404(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]]) -> None:
    _, photo_uid = visit(client, auth["capture"], DAYS[0])
    tracking = measured(app, photo_uid, "--polygon", polygon(1.0))["tracking_uid"]
    for path in (f"/wounds/{tracking}", f"/api/v1/wounds/{tracking}/trajectory.csv"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get(path, headers=auth["capture"]).status_code == 200
    for path in ("/wounds/1.2.3.4", "/api/v1/wounds/1.2.3.4/trajectory.csv",
                 "/wounds/not-a-uid", f"/api/v1/wounds/{tracking}9/trajectory.csv"):
        assert client.get(path, headers=auth["view"]).status_code == 404, path

    # A session the EMR launched for another patient sees neither the page nor the CSV.
    svc = services(app)
    context = LaunchContext(fhir_base="https://emr.example/fhir", fhir_patient="p2",
                            patient_id="00999999", issuer="HOSP-A")
    session_id, _ = launch_login(svc.db, svc.settings, context, issuer="https://emr.example",
                                 subject="doc-1", username="dr.who", role="view")
    launched = app.test_client()
    launched.set_cookie(SESSION_COOKIE, session_id)
    for path in (f"/wounds/{tracking}", f"/api/v1/wounds/{tracking}/trajectory.csv"):
        refused = launched.get(path, headers=HTML)
        assert refused.status_code == 403
        assert "00123456" not in refused.get_data(as_text=True)
    with svc.db.session() as db:
        outcomes = [(e.action, e.outcome) for e in db.scalars(
            select(AuditEvent).where(AuditEvent.action.like("wound.%"))
            .order_by(AuditEvent.seq))]
    assert outcomes.count(("wound.read", "denied")) >= 3
    assert ("wound.export", "denied") in outcomes


def test_rejected_and_moved_measurements_leave_the_trajectory(
        app: Flask, client: FlaskClient, auth: dict[str, dict[str, str]],
        users: dict[str, str]) -> None:
    """A rejected photo's measurement is no visit (nor a wound link in its study's viewer); a
    study moved to another patient takes its wound to that patient's trajectory, and the old
    one is 404 once nothing is left."""
    svc = services(app)
    first_study, first_photo = visit(client, auth["capture"], DAYS[0])
    second_study, second_photo = visit(client, auth["capture"], DAYS[1])
    tracking = measured(app, first_photo, "--polygon", polygon(1.0))["tracking_uid"]
    assert measured(app, second_photo, "--polygon", polygon(0.8))["tracking_uid"] == tracking
    assert [v.study_uid for v in wound_trajectory(svc, tracking).visits] == \
        [first_study, second_study]

    corrections.reject(svc, second_photo, RejectionReason.QUALITY, actor="admin-user")
    assert [v.study_uid for v in wound_trajectory(svc, tracking).visits] == [first_study]
    rows = list(csv.DictReader(io.StringIO(client.get(
        f"/api/v1/wounds/{tracking}/trajectory.csv", headers=auth["view"]).get_data(True))))
    assert [r["study_instance_uid"] for r in rows] == [first_study]
    assert client.post("/login", json={"username": users["view"],
                                       "password": "correct horse battery staple"}
                       ).status_code == 200
    for study, linked in ((first_study, True), (second_study, False)):
        html = client.get(f"/studies/{study}", headers=HTML).get_data(as_text=True)
        assert (f'href="/wounds/{tracking}"' in html) is linked

    with svc.db.session() as db:
        db.add(Patient(mrn="00999999", issuer="HOSP-A", family="RIGHT", given="BOB"))
    moved = corrections.move_to_patient(svc, first_study, "00999999", "HOSP-A",
                                        "wrong wristband", actor="admin-user")
    with pytest.raises(UnknownWound):
        wound_trajectory(svc, tracking)
    assert client.get(f"/wounds/{tracking}", headers=auth["view"]).status_code == 404
    with svc.db.session() as db:
        [new_tracking] = set(db.scalars(select(WoundMeasurement.tracking_uid).where(
            WoundMeasurement.study_uid == moved.new_study_uid)))
    right = wound_trajectory(svc, new_tracking)
    assert right.patient_id == "00999999"
    assert [v.study_uid for v in right.visits] == [moved.new_study_uid]
