"""Retention: the rules decide on real database rows (departments, body sites, adults,
minors, unknown birth dates, legal holds on a study or a patient); ``ebiw retention report``
is a dry run; ``ebiw retention purge`` sends a 113039 rejection note to the real Orthanc
through the outbox, deletes the files, marks the rows, audits, and finishes an interrupted
purge on a rerun; bad input changes nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import astuple
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from app.db.models import (
    AuditEvent,
    CaptureSession,
    Delivery,
    Instance,
    LegalHold,
    StagedClip,
)
from app.pipeline.dicom.kos import KOS_SOP_CLASS_UID, referenced_instances
from app.settings import SettingsError
from app.workflow import intake, retention
from app.workflow.delivery import REENCODE_QUEUE
from tests.corrections.conftest import ebiw, job_worker, snapshot, stage_clip
from tests.corrections.test_peers import stored
from tests.corrections.test_reject import imaging_study
from tests.delivery.conftest import NOCHART, SMALL, Deployment, Orthanc

RULES = {
    "default": {"years_after_last_study": 10, "minor_age": 18, "minor_years_after_age": 7},
    "rules": [
        {"name": "burns", "department": ["Burns unit"], "years_after_last_study": 20},
        {"name": "face", "body_site": "89545001", "years_after_last_study": 5},
    ],
}
TODAY = date(2040, 1, 1)
TEN_YEARS = {"default": {"years_after_last_study": 10}}


def rules_file(tmp_path: Path, rules: dict[str, Any]) -> Path:
    path = tmp_path / "retention.json"
    path.write_text(json.dumps(rules))
    return path


def add_study(d: Deployment, mrn: str, taken: date, *, department: str | None = None,
              body_site: str | None = None, birth: date | None = None, files: int = 1) -> str:
    """A capture session row taken on ``taken`` with ``files`` indexed instances; its UID."""
    session_id = str(uuid.uuid4())
    study = f"2.25.{uuid.UUID(session_id).int}"
    with d.services.db.session() as db:
        db.add(CaptureSession(
            id=session_id, study_uid=study, patient_id=mrn, issuer="HOSP-A",
            birth_date=birth, department=department, body_site=body_site, status="complete",
            created_by="cal", created_at=datetime(taken.year, taken.month, taken.day, 12,
                                                  tzinfo=UTC)))
        for n in range(files):
            db.add(Instance(sop_uid=f"{study}.{n + 1}", study_uid=study,
                            series_uid=f"{study}.0", sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.4",
                            path=f"{study}/x/{n}.dcm", sha256="0" * 64, size=1))
    return study


def test_rules_decide_by_department_body_site_age_and_hold(
        deploy: Callable[..., Deployment], tmp_path: Path) -> None:
    d = deploy([])
    rules = retention.rules_from_config(RULES)
    adult = add_study(d, "A1", date(2029, 6, 1), birth=date(1970, 1, 1))  # 10 y: 2039-06-01
    recent_patient_old = add_study(d, "A2", date(2020, 1, 1), birth=date(1970, 1, 1))
    add_study(d, "A2", date(2035, 1, 1), birth=date(1970, 1, 1), files=0)  # last study: 2035
    burns = add_study(d, "A3", date(2025, 1, 1), department="Burns unit")  # 20 y: 2045
    face = add_study(d, "A4", date(2034, 6, 1), body_site="89545001")  # 5 y: 2039-06-01
    minor_due = add_study(d, "M1", date(2012, 1, 1), birth=date(2008, 3, 1))  # 2033-03-01
    minor_kept = add_study(d, "M2", date(2030, 1, 1), birth=date(2015, 3, 1))  # 2040-03-01
    leap = add_study(d, "M3", date(2010, 1, 1), birth=date(2004, 2, 29))  # 25 on 2029-03-01
    unknown = add_study(d, "U1", date(2001, 1, 1))  # the default has a minor clause
    held_study = add_study(d, "H1", date(2001, 1, 1), birth=date(1970, 1, 1))
    held_patient = add_study(d, "H2", date(2001, 1, 1), birth=date(1970, 1, 1))
    with d.services.db.session() as db:
        db.add_all([LegalHold(study_uid=held_study, reason="court", set_by="ada"),
                    LegalHold(issuer="HOSP-A", patient_id="H2", reason="claim", set_by="ada")])

    with d.services.db.session() as db:
        found = retention.assess(db, rules, TODAY)
    due = {a.study_uid: (a.rule, a.due_date) for a in found.due}
    assert due == {adult: ("default", date(2039, 6, 1)), face: ("face", date(2039, 6, 1)),
                   minor_due: ("default", date(2033, 3, 1)), leap: ("default", date(2029, 3, 1))}
    assert {a.study_uid: a.hold for a in found.held} == {held_study: "study",
                                                         held_patient: "patient"}
    assert [a.study_uid for a in found.undetermined] == [unknown]
    assert found.studies == 10  # the study without files is not counted
    for kept in (recent_patient_old, burns, minor_kept):
        assert kept not in due
    with d.services.db.session() as db:  # a year later the minor's time has come
        later = {a.study_uid for a in retention.assess(db, rules, date(2041, 1, 1)).due}
    assert minor_kept in later and burns not in later


def test_a_hold_on_a_patient_without_any_study_of_ours_is_released(
        deploy: Callable[..., Deployment]) -> None:
    d = deploy([])
    add_study(d, "A1", date(2001, 1, 1))  # another patient's study: not the held one's
    with d.services.db.session() as db:
        db.add(LegalHold(issuer="HOSP-A", patient_id="00999999", reason="pending claim",
                         set_by="ada"))
    target = retention.HoldTarget(issuer="HOSP-A", patient_id="00999999")

    retention.release_hold(d.services, target, actor="bob")
    with d.services.db.session() as db:
        assert db.scalars(select(LegalHold)).all() == []
        event = db.scalars(select(AuditEvent).where(
            AuditEvent.action == "retention.release")).one()
        assert (event.actor, event.entities) == ("bob", ["patient:HOSP-A|00999999"])
        assert event.detail["scope"] == "patient" and event.detail["held_by"] == "ada"
    before = snapshot(d)
    with pytest.raises(retention.RetentionError, match=r"^this patient is not on legal hold$"):
        retention.release_hold(d.services, target, actor="bob")
    assert snapshot(d) == before


def test_rules_refuse_bad_files(tmp_path: Path) -> None:
    for bad, message in (({"rules": []}, "a \\[default\\] rule is required"),
                         ({"default": {"years_after_last_study": -1}}, "whole number"),
                         ({"default": {"years_after_last_study": 1, "department": "x"}},
                          "misplaced key department"),
                         ({"default": {"years_after_last_study": 1},
                           "rules": [{"years_after_last_study": 1}]}, "name is required")):
        with pytest.raises(SettingsError, match=message):
            retention.rules_from_config(bad)


def test_report_purge_and_holds_end_to_end_with_orthanc(
        deploy: Callable[..., Deployment], orthancs: Callable[[], Orthanc],
        tmp_path: Path) -> None:
    pacs = orthancs().start()
    d = deploy([{"name": "pacs", "type": "stow-rs", "url": pacs.dicomweb}],
               emr_notifiers="local", retention_rules_file=rules_file(tmp_path, TEN_YEARS))
    old = d.open_session(department="Wound care")
    d.upload(old, NOCHART)
    d.upload(old, SMALL[0])  # an original and its colour-normalized version
    other = d.open_session(patient={"id": "00999999", "issuer": "HOSP-A"})
    d.upload(other, NOCHART)
    study, kept = old["study_instance_uid"], other["study_instance_uid"]
    assert d.worker().drain() == 3 + 1 + 2  # the instances, and the EMR notices
    originals = d.instances(study)
    with d.services.db.session() as db:  # both studies were taken 11 years ago
        db.execute(update(CaptureSession).values(
            created_at=datetime.now(UTC) - timedelta(days=366 * 11)))

    refused = ebiw(d, "retention", "hold", "--study", "1.2.3.4", "--reason", "court")
    assert refused.exit_code == 1
    assert json.loads(refused.output) == {
        "error": "no study of ours has Study Instance UID 1.2.3.4"}
    held = ebiw(d, "retention", "hold", "--patient-id", "00999999", "--issuer", "HOSP-A",
                "--reason", "pending claim")
    assert held.exit_code == 0, held.output
    assert json.loads(held.output) == {"scope": "patient", "held": True}
    twice = ebiw(d, "retention", "hold", "--patient-id", "00999999", "--issuer", "HOSP-A",
                 "--reason", "again")
    assert json.loads(twice.output) == {"error": "this patient is on legal hold already"}

    before = snapshot(d)
    report = ebiw(d, "retention", "report")
    assert report.exit_code == 0, report.output
    out = json.loads(report.output)
    assert set(out) == {"as_of", "studies", "due", "held", "undetermined"}
    assert [(a["study_instance_uid"], a["rule"], a["files"], a["interrupted"])
            for a in out["due"]] == [(study, "default", 3, False)]
    assert [(a["study_instance_uid"], a["hold"]) for a in out["held"]] == [(kept, "patient")]
    assert "00123456" not in report.output and "00999999" not in report.output
    assert snapshot(d) == before  # the dry run changed nothing

    purged = ebiw(d, "retention", "purge")
    assert purged.exit_code == 0, purged.output
    [entry] = json.loads(purged.output)["purged"]
    assert (entry["study_instance_uid"], entry["deleted_files"]) == (study, 3)
    assert sorted(entry["rejected"]) == originals
    kos_uid = entry["kos_sop_instance_uid"]
    assert d.worker().drain() == 2  # the note to the PACS, the EMR notice
    kos = stored(pacs, study, kos_uid)
    assert (kos.SOPClassUID, kos.ConceptNameCodeSequence[0].CodeValue) == \
        (KOS_SOP_CLASS_UID, "113039")
    assert sorted(uid for *_, uid in referenced_instances(kos)) == originals
    assert all(s == study for s, *_ in referenced_instances(kos))

    files = snapshot(d)["files"]
    assert not any(f"/{uid}.dcm" in f for f in files for uid in originals)
    assert any(f.endswith(f"/{kos_uid}.dcm") for f in files)  # the note is kept
    assert len([f for f in files if f.startswith(kept)]) == 1  # the held study is intact
    with d.services.db.session() as db:
        rows = db.scalars(select(Instance).where(Instance.study_uid == study)).all()
        session = db.scalar(select(CaptureSession).where(CaptureSession.study_uid == study))
        assert session is not None and session.purged_at is not None
        assert {r.sop_uid: (r.rejection_code, r.purged_at is not None) for r in rows} == {
            **{u: ("113039", True) for u in originals}, kos_uid: (None, False)}
        events = db.scalars(select(AuditEvent).where(AuditEvent.action == "retention.purge"))
        [event] = events.all()
    assert event.actor.startswith("cli:") and event.detail["kos"] == kos_uid
    assert sorted(event.detail["deleted"]) == originals and event.detail["rule"] == "default"
    assert imaging_study(d, study)["status"] == "entered-in-error"

    again = ebiw(d, "retention", "purge")
    assert json.loads(again.output) == {"purged": []}
    named = ebiw(d, "retention", "purge", "--study", study)
    assert named.exit_code == 1
    assert json.loads(named.output) == {"error": f"study {study} was purged already"}
    held_one = ebiw(d, "retention", "purge", "--study", kept)
    assert json.loads(held_one.output) == {"error": f"study {kept} is on legal hold"}
    released = ebiw(d, "retention", "release", "--patient-id", "00999999", "--issuer", "HOSP-A")
    assert json.loads(released.output) == {"scope": "patient", "held": False}
    assert [a["study_instance_uid"] for a in json.loads(
        ebiw(d, "retention", "report").output)["due"]] == [kept]
    with d.services.db.session() as db:
        actions = [e.action for e in db.scalars(select(AuditEvent).where(
            AuditEvent.action.like("retention.%")).order_by(AuditEvent.seq))]
    assert actions == ["retention.hold", "retention.purge", "retention.release"]


def test_an_interrupted_purge_is_finished_by_the_rerun(
        deploy: Callable[..., Deployment], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    d = deploy([{"name": "pacs", "type": "stow-rs", "url": "http://127.0.0.1:9/dicom-web"}],
               retention_rules_file=rules_file(tmp_path, TEN_YEARS))
    session = d.open_session()
    d.upload(session, NOCHART)
    d.upload(session, NOCHART)
    study = session["study_instance_uid"]
    originals = d.instances(study)
    with d.services.db.session() as db:
        db.execute(update(CaptureSession).values(
            created_at=datetime.now(UTC) - timedelta(days=366 * 11)))
    archive = d.services.archive
    real_delete = archive.delete
    calls: list[str] = []

    def crash_after_one(row: Instance) -> None:
        calls.append(row.sop_uid)
        if len(calls) == 2:
            raise OSError("the disk went away")
        real_delete(row)

    monkeypatch.setattr(archive, "delete", crash_after_one)
    with pytest.raises(retention.RetentionError, match="rerun the purge"):
        retention.purge(d.services, actor="ada")
    monkeypatch.undo()
    with d.services.db.session() as db:
        rows = db.scalars(select(Instance).where(Instance.study_uid == study)).all()
        assert {r.sop_uid for r in rows if r.rejection_code == "113039"} == set(originals)
        assert all(r.purged_at is None for r in rows)  # the marking waits for every file
    [entry] = retention.report(d.services).due
    assert (entry.study_uid, entry.interrupted, entry.files) == (study, True, 2)

    [done] = retention.purge(d.services, actor="ada")
    assert (done.kos_sop_uid, done.rejected, done.deleted) == (None, (), 2)  # no second note
    with d.services.db.session() as db:
        notes = db.scalars(select(Instance).where(
            Instance.study_uid == study, Instance.sop_class_uid == KOS_SOP_CLASS_UID)).all()
        assert len(notes) == 1
        assert all(r.purged_at is not None for r in db.scalars(select(Instance).where(
            Instance.sop_uid.in_(originals))))
    assert not any(p.name[:-4] in originals
                   for p in d.services.settings.archive_root.rglob("*.dcm"))
    assert retention.report(d.services).due == []


def test_a_purge_discards_the_clips_still_staged_for_a_reencode(
        deploy: Callable[..., Deployment], tmp_path: Path) -> None:
    """A WebM clip answered 202 and never re-encoded (waiting, or failed) keeps its bytes in
    the data dir: the study's purge deletes them with the study, cancels the job, and a
    worker afterwards stores nothing."""
    d = deploy([], retention_rules_file=rules_file(tmp_path, TEN_YEARS))
    study, clip = astuple(stage_clip(d, tmp_path))
    staged_dir = d.services.settings.data_dir / "staged-clips"
    assert len(list(staged_dir.iterdir())) == 1
    with d.services.db.session() as db:
        db.execute(update(CaptureSession).values(
            created_at=datetime.now(UTC) - timedelta(days=366 * 11)))

    purged = ebiw(d, "retention", "purge")
    assert purged.exit_code == 0, purged.output
    assert [e["study_instance_uid"] for e in json.loads(purged.output)["purged"]] == [study]
    assert list(staged_dir.iterdir()) == []
    with d.services.db.session() as db:
        assert db.scalars(select(StagedClip)).all() == []
        assert [j.status for j in db.scalars(select(Delivery).where(
            Delivery.destination == REENCODE_QUEUE))] == ["cancelled"]
        [event] = db.scalars(select(AuditEvent).where(AuditEvent.action == "retention.purge"))
        assert event.detail["discarded_clips"] == [clip]
    job_worker(d).drain()
    with d.services.db.session() as db:
        assert db.get(Instance, clip) is None


def test_a_clip_whose_study_is_purged_during_its_reencode_is_not_stored(
        deploy: Callable[..., Deployment], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The study is purged while the worker re-encodes its clip: the worker stores nothing,
    no instance and no file."""
    d = deploy([], retention_rules_file=rules_file(tmp_path, TEN_YEARS))
    study, clip = astuple(stage_clip(d, tmp_path))
    with d.services.db.session() as db:
        db.execute(update(CaptureSession).values(
            created_at=datetime.now(UTC) - timedelta(days=366 * 11)))
    real = intake.reencode_h264

    def purged_meanwhile(source: Path, target: Path) -> None:
        real(source, target)
        retention.purge(d.services, actor="admin", studies=[study])

    monkeypatch.setattr(intake, "reencode_h264", purged_meanwhile)
    job_worker(d).drain()
    with d.services.db.session() as db:
        assert db.get(Instance, clip) is None
        assert db.scalars(select(StagedClip)).all() == []
    archive = d.services.settings.archive_root
    assert not any(p.name.startswith(clip) for p in archive.rglob("*"))
