"""Corrections (IHE IOCM, issue 19): time to reject one photo and to move a study of 12 MP
phone photos to the right patient, on one core.

Ours: :func:`app.workflow.corrections.reject` (the rejection note built from the photo's header,
stored, the photo marked, the note queued, audited: one transaction) and
:func:`~app.workflow.corrections.move_to_patient` of a study of ``PHOTOS`` photos (a corrected
copy of each written durably and indexed, one note rejecting the originals, every outbox row and
audit record, one transaction). Peer, same run, same files: dcmtk's ``dcmodify`` giving copies of
the stored instances a new patient and new Study/Series/SOP Instance UIDs (a process per file,
no index, no note, no durability).
Usage: .venv/bin/python bench/bench_corrections.py [RUNS]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import median_ms, pin_one_core, table, twelve_mp_jpegs

from app.db.models import Instance, Patient
from app.factory import create_app
from app.pipeline.dicom.kos import RejectionReason
from app.workflow import corrections
from app.workflow.intake import SessionRequest

PHOTOS = 5
RIGHT = ("00234567", "HOSP-A")


def main(runs: int) -> None:
    pin_one_core()
    photos = twelve_mp_jpegs()[:PHOTOS]
    rejects, moves, peers = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"data_dir": Path(tmp) / "var", "env": "test",
                          "color_normalization": False, "emr_notifiers": "local"})
        svc = app.extensions["ebiw"]
        svc.db.create_schema()
        with svc.db.session() as db:
            db.add(Patient(mrn=RIGHT[0], issuer=RIGHT[1], family="RIGHT", given="BOB"))
        for _ in range(runs):
            session, _ = svc.intake.open_session(SessionRequest.from_json(
                {"patient": {"id": "00123456", "issuer": "HOSP-A"}}, "HOSP-A"), "bench")
            uids = [svc.intake.accept_photo(session.id, str(uuid.uuid4()),
                                            p.read_bytes())[0].sop_uid
                    for p in [photos[0], *photos]]  # one more, to reject
            start = time.perf_counter()
            corrections.reject(svc, uids[0], RejectionReason.QUALITY, actor="bench")
            rejects.append(time.perf_counter() - start)
            start = time.perf_counter()
            corrections.move_to_patient(svc, session.study_uid, *RIGHT, "bench", actor="bench")
            moves.append(time.perf_counter() - start)

            with svc.db.session() as db:
                files = [svc.settings.archive_root / db.get(Instance, uid).path
                         for uid in uids[1:]]
            work = Path(tmp) / "peer"
            work.mkdir(exist_ok=True)
            copies = [Path(shutil.copy(f, work / f.name)) for f in files]
            start = time.perf_counter()
            for copy in copies:
                subprocess.run(["dcmodify", "-nb", "-gst", "-gse", "-gin",
                                "-m", f"PatientID={RIGHT[0]}", "-m", "PatientName=RIGHT^BOB",
                                str(copy)], check=True, capture_output=True)
            peers.append(time.perf_counter() - start)
            for copy in copies:
                copy.unlink()
    print(f"{runs} runs, {PHOTOS} photos of 11-14 MP per study, one core, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(table(["what", "median ms"], [
        ["reject 1 photo (ours)", f"{median_ms(rejects):.0f}"],
        [f"move a study of {PHOTOS} photos (ours)", f"{median_ms(moves):.0f}"],
        [f"dcmodify of the same {PHOTOS} files (peer)", f"{median_ms(peers):.0f}"]]))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
