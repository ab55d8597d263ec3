"""Pass-through wrap of 12 MP phone JPEGs (header, strip, wrap, durable write) vs DCMTK img2dcm.

Both run on one core, on the same files, in the same run. Ours is measured in process
(prepare_for_dicom + build_vl_photo + atomic write with fsync); img2dcm is measured as the
command a converter would run (process start included), with and without the fsync our
2xx implies.
Usage: .venv/bin/python bench/bench_wrap.py [REPEATS]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

from common import median_ms, pin_one_core, table, twelve_mp_jpegs

from app.durable import write_durably
from app.pipeline.decode import prepare_for_dicom
from app.pipeline.dicom.builder import (
    InstanceInfo,
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    build_vl_photo,
)
from app.pipeline.dicom.uids import uid_from_uuid


def ours(data: bytes, out: Path) -> None:
    photo = prepare_for_dicom(data)
    dicom = build_vl_photo(photo, PatientInfo("BENCH", "BENCH"),
                           StudyInfo(uid_from_uuid(uuid.uuid4()), datetime.now().astimezone()),
                           SeriesInfo(uid_from_uuid(uuid.uuid4()), 1),
                           InstanceInfo(uid_from_uuid(uuid.uuid4()), 1))
    write_durably(out, dicom)


def img2dcm(src: Path, out: Path, *, durable: bool = False) -> None:
    """DCMTK's converter; ``durable`` adds the fsync of file and folder that our 2xx implies."""
    subprocess.run(["img2dcm", "-q", "-vlp", "-k", "PatientID=BENCH", str(src), str(out)],
                   check=True)
    if durable:
        fd = os.open(out, os.O_RDONLY)
        os.fdatasync(fd)
        os.close(fd)
        folder = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(folder)
        os.close(folder)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    pin_one_core()
    files = twelve_mp_jpegs()
    ours_t: list[float] = []
    peer_t: list[float] = []
    durable_t: list[float] = []
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        for _ in range(repeats):
            for path in files:
                data = path.read_bytes()
                t0 = time.perf_counter()
                ours(data, Path(tmp) / "ours.dcm")
                ours_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                img2dcm(path, Path(tmp) / "peer.dcm")
                peer_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                img2dcm(path, Path(tmp) / "peer-durable.dcm", durable=True)
                durable_t.append(time.perf_counter() - t0)
    ours_ms, peer_ms, durable_ms = median_ms(ours_t), median_ms(peer_t), median_ms(durable_t)
    print(f"12 MP phone JPEGs: {len(files)} files x {repeats} repeats, one core\n")
    print(table(["path", "median ms/photo", "ratio to img2dcm"], [
        ["ebiw pass-through (strip + wrap + fsync'd write)", f"{ours_ms:.1f}",
         f"{ours_ms / peer_ms:.2f}"],
        ["DCMTK img2dcm --vl-photo (process per file)", f"{peer_ms:.1f}", "1.00"],
        ["img2dcm + fsync of its output (our durability)", f"{durable_ms:.1f}",
         f"{durable_ms / peer_ms:.2f}"],
    ]))
    print(f"\nspeed-up vs img2dcm: {peer_ms / ours_ms:.1f}x, vs img2dcm made as durable as us: "
          f"{durable_ms / ours_ms:.1f}x (goal >= 2x); goal <= 25 ms: "
          f"{'met' if ours_ms <= 25 else 'NOT met'}")


if __name__ == "__main__":
    main()
