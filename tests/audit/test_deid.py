"""De-identified export for research: DICOM PS3.15 Basic Profile output that dciodvfy accepts,
holds none of the original identifiers, keeps pseudonyms consistent across a batch, copies the
pixel data byte for byte, leaves burned-in images out by default and flags faces."""

from __future__ import annotations

import io
import json
import re
import uuid
import zipfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
from flask import Flask
from sqlalchemy import select

from app.db.models import AuditEvent, CaptureSession, Instance
from app.gateways.archive import InstanceKey
from app.pipeline.decode import prepare_for_dicom
from app.pipeline.dicom.builder import (
    VL_PHOTOGRAPHIC_IMAGE_STORAGE,
    InstanceInfo,
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    build_vl_photo,
)
from app.pipeline.dicom.codes import body_site
from app.pipeline.dicom.uids import uid_from_uuid
from app.workflow.accounts import create_user
from tests.audit.conftest import (
    DEPARTMENT,
    ENCOUNTER,
    FOREARM,
    INSTITUTION,
    PASSWORD,
    PATIENT,
    Captured,
    bearer,
    capture,
    ebiw,
)
from tests.conftest import CHARTS, dicom_validate, log_in, services
from tests.faults.conftest import fill, small_disk  # noqa: F401 - a fixture used below

ACCESSION = "ACCZ9911"
WORKLIST_STUDY = "1.2.826.0.1.3680043.10.999.48213377.1"


def _add_screened_images(app: Flask, study: Captured) -> None:
    """Series 3 of the study: a wristband photo (burned-in text) and a photo of the face."""
    svc = services(app)
    photo = prepare_for_dicom((CHARTS / "jtvd_classic_03.jpg").read_bytes(),
                              svc.settings.max_pixels)
    patient = PatientInfo(PATIENT["id"], PATIENT["issuer"], PATIENT["name"],
                          datetime(1953, 4, 17).date(), "M")
    with svc.db.session() as db:
        session = db.get(CaptureSession, study.session_id)
        assert session is not None
        zone = timezone(timedelta(minutes=session.utc_offset_minutes))
        started = session.created_at.replace(tzinfo=UTC).astimezone(zone)
    info = StudyInfo(study.study_uid, started, accession_number=ACCESSION,
                     admission_id=ENCOUNTER)  # the study's own context, as intake builds it
    series = SeriesInfo(uid_from_uuid(uuid.uuid4()), 3, body_site=body_site(FOREARM),
                        laterality="L", department=DEPARTMENT, institution=INSTITUTION)
    with svc.db.session() as db:
        for number, flags in ((1, {"burned_in_annotation": True}),
                              (2, {"recognizable_visual_features": True})):
            sop = uid_from_uuid(uuid.uuid4())
            data = build_vl_photo(photo, patient, info, series, InstanceInfo(sop, number, **flags))
            svc.archive.store(db, InstanceKey(study.study_uid, series.uid, sop,
                                              VL_PHOTOGRAPHIC_IMAGE_STORAGE), data,
                              {"SeriesNumber": 3, "InstanceNumber": number, "Modality": "XC"})


@pytest.fixture
def two_studies(audit_app: Flask) -> list[Captured]:
    """Two studies of PATIENT through the API: the first fulfils a worklist item (accession
    number) and gets a wristband photo and a face photo besides its two photos."""
    client = audit_app.test_client()
    headers = bearer(audit_app, "ward7", "capture")
    first = capture(client, headers, worklist_item={"study_instance_uid": WORKLIST_STUDY,
                                                    "accession_number": ACCESSION})
    second = capture(client, headers, names=("jtvd_classic_04.jpg",))
    _add_screened_images(audit_app, first)
    return [first, second]


def _originals(app: Flask, studies: list[Captured]) -> list[pydicom.Dataset]:
    svc = services(app)
    with svc.db.session() as db:
        rows = db.scalars(select(Instance).where(
            Instance.study_uid.in_([s.study_uid for s in studies]))).all()
    return [pydicom.dcmread(svc.archive.path(row)) for row in rows]


def _identifiers(originals: list[pydicom.Dataset]) -> set[str]:
    found = {PATIENT["id"], PATIENT["issuer"], "ZEBRA", "QUINTUS", "19530417", ACCESSION,
             ENCOUNTER, INSTITUTION, "Saint Zephyr", DEPARTMENT, WORKLIST_STUDY}
    for ds in originals:
        found |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
    return found


def test_cli_export_is_deidentified_valid_and_consistent(
        audit_app: Flask, two_studies: list[Captured], tmp_path: Path) -> None:
    out = tmp_path / "export"
    proc = ebiw(audit_app, "export-deid", *(s.study_uid for s in two_studies), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    originals = _originals(audit_app, two_studies)
    api_instances = sum(len(s.instances) for s in two_studies)
    assert len(originals) == api_instances + 2
    report = json.loads((out / "deid-report.json").read_text())
    assert report["instances"] == {"exported": api_instances + 1, "excluded": 1,
                                   "flagged_for_review": 1}
    assert report["exclusions"] == [{"study": 1, "series_number": 3, "instance_number": 1,
                                     "reason": "burned-in annotation"}]
    assert report["patients"] == 1 and report["dates"] == "modified"
    assert report["studies"] == {"requested": 2, "found": 2}
    assert [f["flags"] for f in report["files"] if f["flags"]] == [
        ["recognizable visual features"]]
    assert lines[-1]["excluded"] == 1 and lines[-2] == {"excluded": report["exclusions"][0]}
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == api_instances + 1

    errors, warnings, output = dicom_validate(*files)
    assert (errors, warnings) == (0, 0), output
    secrets = _identifiers(originals)
    for path in [*files, out / "deid-report.json"]:
        data = path.read_bytes()
        leaked = [s for s in secrets if s.encode() in data]
        assert not leaked, (path.name, leaked)

    exported = [pydicom.dcmread(f) for f in files]
    assert {ds.PatientID for ds in exported} == {exported[0].PatientID}
    assert exported[0].PatientID.startswith("ANON")
    assert len({ds.StudyInstanceUID for ds in exported}) == 2
    assert all(ds.PatientIdentityRemoved == "YES" for ds in exported)
    assert all([c.CodeValue for c in ds.DeidentificationMethodCodeSequence] ==
               ["113100", "113107"] for ds in exported)
    assert all(ds.LongitudinalTemporalInformationModified == "MODIFIED" for ds in exported)
    assert all(not any(e.tag.is_private for e in ds) for ds in exported)
    assert all("ICCProfile" in ds for ds in exported)
    by_pixels = {ds.PixelData: ds for ds in originals}
    assert all(ds.PixelData in by_pixels for ds in exported)  # byte for byte
    shifts = {(datetime.strptime(by_pixels[ds.PixelData].StudyDate, "%Y%m%d")
               - datetime.strptime(ds.StudyDate, "%Y%m%d")).days for ds in exported}
    assert len(shifts) == 1 and 365 <= shifts.pop() <= 3651  # one shift for the patient
    sop_uids = {ds.SOPInstanceUID for ds in exported}
    derived = [ds for ds in exported if ds.ImageType[0] == "DERIVED"]
    assert all(ds.SourceImageSequence[0].ReferencedSOPInstanceUID in sop_uids
               for ds in derived)

    with services(audit_app).db.session() as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "export.deid")).one()
    assert event.actor.startswith("cli:") and event.outcome == "success"
    assert event.entities == [f"patient:{PATIENT['issuer']}|{PATIENT['id']}",
                              *(f"study:{s.study_uid}" for s in two_studies)]


def test_admin_export_with_full_dates_and_burned_in_images(
        audit_app: Flask, two_studies: list[Captured]) -> None:
    client = audit_app.test_client()
    admin = bearer(audit_app, "research-admin", "admin")
    studies = [s.study_uid for s in two_studies]
    assert client.post("/admin/api/exports/deid", json={"studies": studies},
                       headers=bearer(audit_app, "v", "view")).status_code == 403
    answer = client.post("/admin/api/exports/deid", headers=admin, json={
        "studies": studies, "retain_dates": True, "include_burned_in": True})
    assert answer.status_code == 201, answer.get_json()
    report = answer.get_json()
    assert report["dates"] == "full" and report["instances"]["excluded"] == 0
    assert sorted(f["flags"] for f in report["files"] if f["flags"]) == [
        ["burned-in annotation"], ["recognizable visual features"]]
    folder = services(audit_app).settings.data_dir / "exports" / report["export"]
    exported = [pydicom.dcmread(folder / f["file"]) for f in report["files"]]
    originals = {ds.PixelData: ds for ds in _originals(audit_app, two_studies)}
    assert all(ds.StudyDate == originals[ds.PixelData].StudyDate for ds in exported)
    assert all([c.CodeValue for c in ds.DeidentificationMethodCodeSequence] ==
               ["113100", "113106"] for ds in exported)
    errors, _, output = dicom_validate(*(folder / f["file"] for f in report["files"]))
    assert errors == 0, output

    again = client.post("/admin/api/exports/deid", headers=admin,
                        json={"studies": studies}).get_json()
    first_ids = {ds.PatientID for ds in exported}
    second_folder = folder.parent / again["export"]
    second_ids = {pydicom.dcmread(second_folder / f["file"]).PatientID for f in again["files"]}
    assert first_ids.isdisjoint(second_ids)  # a new secret per export: nothing links them
    bad = client.post("/admin/api/exports/deid", headers=admin, json={"studies": ["x;1"]})
    assert bad.status_code == 422


def test_the_page_shows_what_would_be_exported_before_exporting_and_keeps_what_was_typed(
        audit_app: Flask, two_studies: list[Captured]) -> None:
    """The first tap writes nothing and says how many studies, images and patients, with
    which options; the export is made on Confirm only. A refused request (a malformed UID,
    no study here) answers 422 with the reason, writes nothing and keeps the list typed."""
    create_user(services(audit_app).db, "ada", PASSWORD, "admin")
    client = audit_app.test_client()
    csrf = log_in(client, "ada")
    exports = services(audit_app).settings.data_dir / "exports"

    def page(**form: str) -> tuple[int, str]:
        answer = client.post("/admin/exports/deid", data={"csrf_token": csrf, **form})
        return answer.status_code, answer.get_data(as_text=True)

    def exported() -> list[str]:
        with services(audit_app).db.session() as db:
            events = db.scalars(select(AuditEvent).where(AuditEvent.action == "export.deid"))
            assert [e.outcome for e in events] in ([], ["success"])
        return sorted(p.name for p in exports.iterdir()) if exports.exists() else []

    typed = f"{two_studies[0].study_uid}\r\n{two_studies[1].study_uid}\r\n1.2.3.4\r\n"
    status, html = page(studies=typed, retain_dates="on")
    shown = re.sub(r"\s+", " ", html)
    images = sum(len(s.instances) for s in two_studies) + 2
    assert status == 200 and "Export 2 studies, de-identified?" in shown
    assert f"{images} DICOM images of 1 patient; 1 of the 3 studies named is not here" in shown
    assert "Dates: kept in full." in shown and "burned-in annotation (wristbands, labels): " \
        "left out." in shown
    assert exported() == []
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))
    assert fields["confirmed"] == "yes"
    status, html = page(**fields)
    assert status == 200 and len(exported()) == 1
    assert f"Export {exported()[0]}" in html and "2 of 3 studies. Dates: full." in \
        re.sub(r"\s+", " ", html)

    status, html = page(studies=f"{two_studies[0].study_uid}\nnot-a-uid", include_burned_in="on")
    assert status == 422 and "Every study must be a Study Instance UID (digits and dots); not " \
        "one: study 2 of the list." in html
    assert f">{two_studies[0].study_uid}\nnot-a-uid</textarea>" in html
    assert 'name="include_burned_in" checked' in html
    status, html = page(studies="1.2.3.4")
    assert status == 422 and "The study named is not in the archive here." in html
    assert ">1.2.3.4</textarea>" in html and len(exported()) == 1


def test_a_finished_export_is_downloaded_from_its_page_as_one_audited_zip(
        audit_app: Flask, two_studies: list[Captured]) -> None:
    create_user(services(audit_app).db, "ada", PASSWORD, "admin")
    client = audit_app.test_client()
    csrf = log_in(client, "ada")
    page = client.post("/admin/exports/deid", data={
        "csrf_token": csrf, "studies": two_studies[1].study_uid, "confirmed": "yes"})
    link = re.search(r'<a class="button primary" href="(/admin/exports/([^"/]+)\.zip)" '
                     r'download>Download the export \(zip\)</a>', page.get_data(as_text=True))
    assert link, page.get_data(as_text=True)
    answer = client.get(link.group(1))
    assert answer.status_code == 200 and answer.mimetype == "application/zip"
    assert answer.headers["Cache-Control"] == "no-store"
    name = f"deid-{link.group(2)}"
    assert f'filename={name}.zip' in answer.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(answer.data)) as bundle:
        files = bundle.namelist()
        report = json.loads(bundle.read(f"{name}/deid-report.json"))
    assert sorted(files) == sorted([f"{name}/deid-report.json",
                                    *(f"{name}/{f['file']}" for f in report["files"])])
    assert len(report["files"]) == len(two_studies[1].instances)
    for missing in ("20261207T000000Z-00000000", "..%2Fexports"):
        assert client.get(f"/admin/exports/{missing}.zip").status_code == 404
    assert audit_app.test_client().get(link.group(1)).status_code in (302, 401)  # no login
    with services(audit_app).db.session() as db:
        events = db.scalars(select(AuditEvent).where(AuditEvent.action.in_(
            ["export.deid", "export.download"])).order_by(AuditEvent.seq)).all()
    assert [(e.action, e.actor, e.outcome, e.detail.get("export")) for e in events] == [
        ("export.deid", "ada", "success", link.group(2)),
        ("export.download", "ada", "success", link.group(2))]


def test_an_export_the_full_disk_stops_keeps_nothing_is_audited_and_keeps_the_form(
        audit_app: Flask, two_studies: list[Captured],
        small_disk: Path) -> None:  # noqa: F811 - the fixture
    """The exports folder on a disk with room for about half of the images: the export stops
    part way, leaves no file behind, is audited as failed, and the page says so (507) with
    the list typed still there to try again."""
    svc = services(audit_app)
    (svc.settings.data_dir / "exports").symlink_to(small_disk, target_is_directory=True)
    with svc.db.session() as db:
        archived = [svc.archive.path(row).stat().st_size for row in db.scalars(select(
            Instance).where(Instance.study_uid == two_studies[0].study_uid))]
    filler = fill(small_disk, leave=sum(archived) // 2)
    create_user(svc.db, "ada", PASSWORD, "admin")
    client = audit_app.test_client()
    answer = client.post("/admin/exports/deid", data={
        "csrf_token": log_in(client, "ada"), "studies": two_studies[0].study_uid,
        "confirmed": "yes"})
    html = re.sub(r"\s+", " ", answer.get_data(as_text=True))
    assert answer.status_code == 507
    assert "The server&#39;s storage is full: nothing of the export was kept; try again " \
        "later." in html
    assert f">{two_studies[0].study_uid}</textarea>" in html
    assert [p for p in small_disk.rglob("*") if p.is_file()] == [filler]
    with svc.db.session() as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "export.deid")).one()
    assert (event.actor, event.outcome, event.detail["error"]) == ("ada", "failed",
                                                                   "write failed")
    assert event.entities == [f"patient:{PATIENT['issuer']}|{PATIENT['id']}",
                              f"study:{two_studies[0].study_uid}"]
    assert 0 < event.detail["exported"] < len(archived)  # it had written some before
