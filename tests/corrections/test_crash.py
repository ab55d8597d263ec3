"""kill -9 in the middle of ``ebiw correct patient`` leaves no half-corrected state: the
database is exactly as before (no copy indexed, nothing rejected, nothing queued or audited;
at most unreferenced files), and the same correction then succeeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

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
if point == "store":
    LocalArchive.store = dying(LocalArchive.store)
else:
    audit.record = dying(audit.record)
from app.cli import cli
cli(sys.argv[3:])
"""


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
    proc = subprocess.run([sys.executable, "-c", KILLER, point, str(after), *args],
                          env={**os.environ, **cli_env(d), "PYTHONPATH": str(REPO)},
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    after_crash = snapshot(d)
    assert {k: v for k, v in after_crash.items() if k != "files"} == \
        {k: v for k, v in before.items() if k != "files"}
    assert set(before["files"]) <= set(after_crash["files"])  # orphans at most, never indexed

    result = ebiw(d, *args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert sorted(out["rejected"]) == sorted(before["instances"])  # the 3 originals
    assert sorted(out["copies"].values()) == d.instances(out["new_study_instance_uid"])
