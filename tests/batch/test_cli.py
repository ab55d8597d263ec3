"""``ebiw import`` on a folder of real photos: sorting, the report, re-runs that store nothing
twice, a body site for every study (and so its clips), and an import killed mid-way (twice)
that the next run finishes with exact counts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from app.db.models import Batch, CaptureSession, Delivery, Instance, Photo
from app.pipeline.dicom.video import VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
from tests.batch.conftest import (
    ISSUER,
    PATIENTS,
    UNKNOWN_MRN,
    Shot,
    label,
    lesion,
    slip_sheet_batch,
)
from tests.clips import make_clip
from tests.conftest import REPO

EBIW = [sys.executable, "-m", "app.cli"]


def write_folder(folder: Path, shots: tuple[Shot, ...]) -> dict[str, Shot]:
    """The shots as files named in file order (``NN-<name>``); returns file path -> shot."""
    folder.mkdir(parents=True)
    files = {}
    for order, shot in enumerate(shots):
        path = folder / f"{order:02d}-{shot.name}"
        path.write_bytes(shot.data)
        files[str(path)] = shot
    return files


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    """The environment of the ``ebiw`` processes: a fresh data dir (and database), patients
    imported with ``ebiw patients import``."""
    environ = {**os.environ, "EBIW_DATA_DIR": str(tmp_path / "var"), "EBIW_ENV": "test",
               "EBIW_DATABASE_URL": database_url, "PYTHONPATH": str(REPO)}
    csv = tmp_path / "patients.csv"
    csv.write_text("mrn,issuer,family,given,birth_date,sex\n" + "".join(
        f"{mrn},{ISSUER},{f},{g},{born},{sex}\n" for mrn, (f, g, born, sex) in PATIENTS.items()))
    run(environ, "patients", "import", str(csv))
    return environ


def run(environ: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*EBIW, *args], env=environ, cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
    if check:
        assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc


def database(environ: dict[str, str]) -> str:
    return environ["EBIW_DATABASE_URL"] or \
        f"sqlite:///{Path(environ['EBIW_DATA_DIR']).resolve() / 'ebiw.sqlite3'}"


def counts(environ: dict[str, str]) -> dict[str, int]:
    """Rows (batches, photos, instances, sessions, deliveries) and DICOM files in the
    archive."""
    engine = create_engine(database(environ))
    try:
        with Session(engine) as db:
            out = {name: db.scalar(select(func.count()).select_from(model)) or 0
                   for name, model in (("batches", Batch), ("photos", Photo),
                                       ("instances", Instance),
                                       ("sessions", CaptureSession),
                                       ("deliveries", Delivery))}
            out["distinct_sops"] = db.scalar(text(
                "SELECT count(DISTINCT sop_uid) FROM instance")) or 0
    finally:
        engine.dispose()
    archive = Path(environ["EBIW_DATA_DIR"]) / "archive"
    out["files"] = len(list(archive.rglob("*.dcm"))) if archive.exists() else 0
    return out


def records(proc: subprocess.CompletedProcess) -> dict[str, dict]:
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return {r["file"]: r for r in lines}


def test_import_sorts_by_labels_reports_and_reruns(env: dict[str, str],
                                                   tmp_path: Path) -> None:
    files = write_folder(tmp_path / "photos", slip_sheet_batch())
    report_file = tmp_path / "report.json"
    first = run(env, "import", str(tmp_path / "photos"), "--report", str(report_file))
    assert first.returncode == 1  # C's photos and the one before any label stay unsorted
    out = records(first)
    assert set(out) == set(files)  # one line per file
    for path, shot in files.items():
        record = out[path]
        if shot.expect is None or shot.expect == UNKNOWN_MRN:
            assert record["status"] == "unsorted", record
            assert "sop_instance_uid" not in record
        else:
            assert record["status"] == "stored", record
            assert record["patient"] == {"mrn": shot.expect, "issuer": ISSUER}
            assert record["sop_instance_uid"].startswith("2.25.") and record["new"] is True
        assert record["role"] == shot.role
        assert "BATCH" not in json.dumps(record)  # MRNs only, never names
    report = json.loads(report_file.read_text())
    assert report["counts"] == {"stored": 9, "unsorted": 3}
    assert {f["file"] for f in report["files"]} == set(files)
    after_first = counts(env)
    stored_labels = [r for r in out.values() if r["status"] == "stored" and r["role"] == "label"]
    ds = pydicom.dcmread(next(Path(env["EBIW_DATA_DIR"], "archive").rglob(
        f"{stored_labels[0]['sop_instance_uid']}.dcm")), stop_before_pixels=True)
    assert ds.BurnedInAnnotation == "YES" and int(ds.SeriesNumber) == 3
    assert after_first["sessions"] == 3 and after_first["photos"] == 9
    assert after_first["instances"] == after_first["files"] == after_first["distinct_sops"]

    # The same folder again, and a copy of it elsewhere: nothing is stored twice.
    again = records(run(env, "import", str(tmp_path / "photos")))
    assert {r["status"] for r in again.values()} == {"stored", "unsorted"}
    assert not any(r.get("new") for r in again.values())
    assert {p: r.get("sop_instance_uid") for p, r in again.items()} == {
        p: r.get("sop_instance_uid") for p, r in out.items()}
    copy = tmp_path / "copy"  # another set of files: another batch, the same upload UUIDs
    copy.mkdir()
    skipped = next(iter(files))
    for path in list(files)[1:]:
        (copy / Path(path).name).write_bytes(Path(path).read_bytes())
    copied = records(run(env, "import", str(copy)))
    assert {Path(p).name: (r["status"], r.get("sop_instance_uid")) for p, r in copied.items()
            if r["status"] == "stored"} == {
        Path(p).name: ("stored", r["sop_instance_uid"]) for p, r in out.items()
        if r["status"] == "stored" and p != skipped}
    assert counts(env) == {**after_first, "batches": after_first["batches"] + 1}


def test_import_for_one_patient_and_dropping_labels(env: dict[str, str],
                                                    tmp_path: Path) -> None:
    shots = slip_sheet_batch()
    write_folder(tmp_path / "one", tuple(s for s in shots if s.role == "clinical")[:3])
    proc = run(env, "import", str(tmp_path / "one"), "--patient-id", "42094043",
               "--issuer", ISSUER)
    assert proc.returncode == 0, proc.stdout
    assert {(r["status"], r["patient"]["mrn"]) for r in records(proc).values()} == {
        ("stored", "42094043")}
    labels = write_folder(tmp_path / "labels", tuple(
        s for s in shots if s.expect == "15182881"))
    dropped = run({**env, "EBIW_BATCH_LABEL_PHOTOS": "drop"}, "import",
                  str(tmp_path / "labels"))
    out = records(dropped)
    assert {p: out[p]["status"] for p in labels} == {
        p: "skipped" if s.role == "label" else "stored" for p, s in labels.items()}


FOREARM = "14975008"  # paired: the API wants its side


def test_import_with_a_body_site_codes_the_photos_and_stores_a_clip(
        env: dict[str, str], tmp_path: Path) -> None:
    """Without --body-site, a group holding a clip stays held (unsorted, the reason given);
    the same folder again with --body-site and --laterality stores it, and every clinical
    instance carries that Anatomic Region and Image Laterality (the label photo none, as on
    the batch page)."""
    folder = tmp_path / "visit"
    write_folder(folder, (label("zx_code128-2_05.png", 1, "15182881"),
                          lesion(2, 2, "15182881")))
    clip = make_clip(folder / "02-wound.mp4")
    first = run(env, "import", str(folder))
    assert first.returncode == 1
    held = records(first)
    assert {r["status"] for r in held.values()} == {"unsorted"}
    assert "holds a video clip, which needs a body site" in held[str(clip)]["reason"]
    assert counts(env)["photos"] == 0

    report_file = tmp_path / "report.json"
    proc = run(env, "import", str(folder), "--body-site", FOREARM, "--laterality", "L",
               "--report", str(report_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    out = records(proc)
    assert {(r["status"], r["new"], r["patient"]["mrn"]) for r in out.values()} == {
        ("stored", True, "15182881")}
    assert json.loads(report_file.read_text())["counts"] == {"stored": 3}
    archive = Path(env["EBIW_DATA_DIR"], "archive")
    stored = {ds.SOPInstanceUID: ds for ds in (
        pydicom.dcmread(path, stop_before_pixels=True) for path in archive.rglob("*.dcm"))}
    assert stored[out[str(clip)]["sop_instance_uid"]].SOPClassUID == \
        VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
    labels = {r["sop_instance_uid"] for r in out.values() if r["role"] == "label"}
    assert len(labels) == 1 and len(stored) == 4  # label, lesion (and its normalized copy), clip
    assert {uid: ("AnatomicRegionSequence" in ds, ds.ImageLaterality)
            for uid, ds in stored.items() if uid in labels} == {uid: (False, "U")
                                                                for uid in labels}
    assert {(ds.AnatomicRegionSequence[0].CodeValue,
             ds.AnatomicRegionSequence[0].CodingSchemeDesignator,
             ds.AnatomicRegionSequence[0].CodeMeaning, ds.ImageLaterality)
            for uid, ds in stored.items() if uid not in labels} == {
        (FOREARM, "SCT", "Forearm", "L")}


@pytest.mark.parametrize(("args", "option"), [
    (("--body-site", "123456"), "--body-site"),  # not in the body-site table
    (("--body-site", FOREARM), "--laterality"),  # a paired site without its side
    (("--body-site", FOREARM, "--laterality", "U"), "--laterality"),
    (("--body-site", FOREARM, "--laterality", "X"), "--laterality"),
])
def test_import_refuses_a_bad_body_site_before_holding_anything(
        env: dict[str, str], tmp_path: Path, args: tuple[str, ...], option: str) -> None:
    write_folder(tmp_path / "photos", (lesion(2, 2, None),))
    before = counts(env)
    proc = run(env, "import", str(tmp_path / "photos"), "--patient-id", "42094043",
               "--issuer", ISSUER, *args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"Invalid value for '{option}'" in proc.stderr and proc.stdout == ""
    assert counts(env) == before == {**before, "batches": 0, "photos": 0}


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the import ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_an_interrupted_import_resumes_with_exact_counts(env: dict[str, str],
                                                         tmp_path: Path) -> None:
    files = write_folder(tmp_path / "photos", slip_sheet_batch())
    expected = sum(1 for s in files.values() if s.expect not in (None, UNKNOWN_MRN))
    archive = Path(env["EBIW_DATA_DIR"]) / "archive"

    # Killed while photos are being held (after the fourth), then while groups are stored.
    held: list[str] = []
    proc = subprocess.Popen([*EBIW, "import", str(tmp_path / "photos")], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    while len(held) < 4:
        line = proc.stderr.readline()
        assert line, "the import ended before it could be interrupted"
        if line.startswith("{"):
            held.append(line)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert counts(env)["photos"] == 0  # nothing stored before confirmation

    proc = subprocess.Popen([*EBIW, "import", str(tmp_path / "photos")], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: archive.exists() and any(archive.rglob("*.dcm")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    partial = counts(env)
    assert partial["photos"] < expected

    final = run(env, "import", str(tmp_path / "photos"))
    out = records(final)
    assert Counter(r["status"] for r in out.values()) == {"stored": expected, "unsorted": 3}
    done = counts(env)
    assert done["photos"] == expected
    assert done["instances"] == done["files"] == done["distinct_sops"]
    assert done["sessions"] == 3
    # Each instance once; re-running changes nothing.
    run(env, "import", str(tmp_path / "photos"))
    assert counts(env) == done


def test_batch_purge_discards_what_an_import_left_unsorted(env: dict[str, str],
                                                           tmp_path: Path) -> None:
    """`ebiw batch purge`: the 3 unsorted photos an import leaves held go once the batch has
    been idle for the hold time; the 9 stored ones stay; the purge is audited."""
    write_folder(tmp_path / "photos", slip_sheet_batch())
    run(env, "import", str(tmp_path / "photos"))
    staging = Path(env["EBIW_DATA_DIR"]) / "batches"
    held = [p for p in staging.rglob("*") if p.is_file()]
    assert held
    assert json.loads(run(env, "batch", "purge").stdout) == {"purged": {}}  # not idle yet
    engine = create_engine(database(env))
    with engine.begin() as conn:  # the import was four days ago
        for table in ("batch", "batch_item", "batch_group"):
            conn.execute(text(f"UPDATE {table} SET created_at = :t"),
                         {"t": "2000-01-01 00:00:00"})
        conn.execute(text("UPDATE batch_group SET confirmed_at = :t "
                          "WHERE confirmed_at IS NOT NULL"), {"t": "2000-01-01 00:00:00"})
    proc = run(env, "batch", "purge", "--idle-hours", "96")
    assert proc.returncode == 0, proc.stderr[-2000:]
    purged = json.loads(proc.stdout)["purged"]
    assert list(purged.values()) == [3]
    assert not [p for p in staging.rglob("*") if p.is_file()]
    assert counts(env)["photos"] == 9
    with engine.connect() as conn:
        actions = conn.execute(text("SELECT action, entities FROM audit_event "
                                    "WHERE action = 'batch.purge'")).all()
    engine.dispose()
    assert len(actions) == 1 and next(iter(purged)) in str(actions[0].entities)
    assert json.loads(run(env, "batch", "purge").stdout) == {"purged": {}}
