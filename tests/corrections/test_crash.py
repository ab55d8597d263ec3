"""kill -9 in the middle of ``ebiw correct patient`` leaves no half-corrected state: the
database is exactly as before (no copy indexed, nothing rejected, nothing queued or audited;
at most unreferenced files), and the same correction then succeeds. kill -9 in the middle of
``ebiw retention purge`` leaves the study as before or rejected, and the rerun finishes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.db.models import AuditEvent, Instance
from app.pipeline.dicom.kos import KOS_SOP_CLASS_UID
from tests.conftest import REPO
from tests.corrections.conftest import add_patient, cli_env, ebiw, snapshot
from tests.corrections.test_reject import PACS
from tests.delivery.conftest import NOCHART, SMALL, Deployment

RIGHT = ("00234567", "HOSP-A")
# Runs ``ebiw`` with one function wrapped to SIGKILL the process right after its N-th call.
KILLER = """
import os, signal, sys
from app.gateways.archive.local import LocalArchive
from app.workflow import audit
point, after = sys.argv[1], int(sys.argv[2])
calls = 0
def dying(original):
    def call(*args, **kwargs):
        global calls
        result = original(*args, **kwargs)
        calls += 1
        if calls == after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return call
if point == "audit":
    audit.record = dying(audit.record)
else:  # an archive method: store, delete
    setattr(LocalArchive, point, dying(getattr(LocalArchive, point)))
from app.cli import cli
cli(sys.argv[3:])
"""


def _kill_during(d: Deployment, point: str, after: int, *args: str) -> None:
    """Run ``ebiw *args`` in a process SIGKILLed right after the ``after``-th call of
    ``point`` (see ``KILLER``)."""
    proc = subprocess.run([sys.executable, "-c", KILLER, point, str(after), *args],
                          env={**os.environ, **cli_env(d), "PYTHONPATH": str(REPO)},
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr


@pytest.mark.parametrize(("point", "after"), [
    ("store", 1),  # the first corrected copy is on disk
    ("store", 4),  # the rejection note, the last file, is on disk
    ("audit", 1),  # the originals are marked rejected (flushed)
    ("audit", 3),  # everything flushed, the clinician's notice the last write: not committed
])
def test_a_killed_move_leaves_nothing_half_done(deploy: Callable[..., Deployment],
                                                point: str, after: int) -> None:
    d = deploy(PACS, emr_notifiers="local")
    add_patient(d, *RIGHT, "RIGHT", "BOB")
    session = d.open_session()
    study = session["study_instance_uid"]
    d.upload(session, NOCHART)
    d.upload(session, SMALL[0])  # 3 instances: the move stores 3 copies and 1 note
    before = snapshot(d)
    args = ["correct", "patient", "--study", study, "--patient-id", RIGHT[0],
            "--issuer", RIGHT[1], "--reason", "wrong wristband"]
    _kill_during(d, point, after, *args)
    after_crash = snapshot(d)
    assert {k: v for k, v in after_crash.items() if k != "files"} == \
        {k: v for k, v in before.items() if k != "files"}
    assert set(before["files"]) <= set(after_crash["files"])  # orphans at most, never indexed

    result = ebiw(d, *args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert sorted(out["rejected"]) == sorted(before["instances"])  # the 3 originals
    assert sorted(out["copies"].values()) == d.instances(out["new_study_instance_uid"])


@pytest.mark.parametrize(("point", "after"), [
    ("store", 1),  # the rejection note is on disk, nothing committed
    ("delete", 1),  # the study is rejected and queued; one of its files is deleted
    ("audit", 2),  # every file deleted, the purge's marks and audit not committed
])
def test_a_killed_purge_is_finished_by_the_rerun(deploy: Callable[..., Deployment],
                                                 tmp_path: Path, point: str,
                                                 after: int) -> None:
    rules = tmp_path / "retention.json"
    rules.write_text(json.dumps({"default": {"years_after_last_study": 0}}))
    d = deploy(PACS, emr_notifiers="local", retention_rules_file=rules)
    session = d.open_session()
    study = session["study_instance_uid"]
    d.upload(session, NOCHART)
    d.upload(session, SMALL[0])
    originals = d.instances(study)
    _kill_during(d, point, after, "retention", "purge")
    report = json.loads(ebiw(d, "retention", "report").output)
    assert [(a["study_instance_uid"], a["interrupted"]) for a in report["due"]] == \
        [(study, point != "store")]

    result = ebiw(d, "retention", "purge")
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.output)["purged"]
    assert entry["study_instance_uid"] == study and entry["deleted_files"] == 3
    with d.services.db.session() as db:
        rows = db.scalars(select(Instance).where(Instance.study_uid == study)).all()
        notes = [r.sop_uid for r in rows if r.sop_class_uid == KOS_SOP_CLASS_UID]
        purges = db.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "retention.purge"))
    assert len(notes) == 1 and purges == 1  # one note, one purge, however it went
    assert {r.sop_uid for r in rows if r.purged_at is not None} == set(originals)
    left = {p.stem for p in d.services.settings.archive_root.glob(f"{study}/*/*.dcm")}
    assert set(notes) <= left and not left & set(originals)  # an orphan note file at most
    assert json.loads(ebiw(d, "retention", "report").output)["due"] == []
