"""Benchmark the viewer's measuring routes: POST /api/v1/studies/<study>/measurements and
POST /api/v1/outline, each beside its own core step timed alone in the same run.

Run: ``.venv/bin/python bench/bench_measure_api.py`` from the repo root.

Data: the 16 ``jtvd_*`` board photos of ``../shared/testdata/colourchart`` (tilted ColorChecker
boards, 12 MP and 3 MP), each uploaded once, then measured with one length, one width and one
polygon (stored as an SR each time); the FUSeg photos of ``../shared/testdata/wounds`` that hold
a wound (512 x 512, uploaded as JPEGs), outlined from one tap at the innermost point of the
largest wound. Wall time of the request through the Flask test client (the route, the
database, the archive, the audit), beside the step that dominates it: calibrating the stored
photo (``calibrate_photo``) and outlining it (``outline_photo``). One core, OpenCV
single-threaded; the machine's load average is printed.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.encaps import generate_frames

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.factory import create_app  # noqa: E402
from app.pipeline.geometry import calibrate_photo  # noqa: E402
from app.pipeline.outline import outline_photo  # noqa: E402
from app.workflow.tokens import create_token  # noqa: E402
from bench.common import TESTDATA, median_ms, pin_one_core, table  # noqa: E402

SESSION = {"patient": {"id": "00123456", "issuer": "BENCH", "name": "BENCH^ONE"},
           "encounter": "E1", "body_site": "14975008", "laterality": "L"}


def innermost(label: Path) -> tuple[int, int] | None:
    mask = (cv2.imread(str(label), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:count, cv2.CC_STAT_AREA]))
    distance = cv2.distanceTransform((labels == largest).astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def main() -> None:
    pin_one_core()
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        app = create_app({"data_dir": Path(tmp) / "var", "env": "test",
                          "color_normalization": False, "emr_notifiers": "",
                          "rate_upload_per_minute": 0})
        svc = app.extensions["ebiw"]
        svc.db.create_schema()
        headers = {"Authorization": f"Bearer {create_token(svc.db, 'bench', 'admin')}"}
        client = app.test_client()

        def upload(data: bytes) -> tuple[str, str, bytes]:
            session = client.post("/api/v1/sessions", json=SESSION, headers=headers).get_json()
            put = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                             data=data, headers=headers)
            assert put.status_code == 201, put.get_json()
            uid = put.get_json()["sop_instance_uid"]
            path = next(svc.settings.archive_root.rglob(f"{uid}.dcm"))
            frame = next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))
            return session["study_instance_uid"], uid, frame

        api, calibrate = [], []
        for photo in sorted((TESTDATA / "colourchart").glob("jtvd_*.jpg")):
            study, uid, frame = upload(photo.read_bytes())
            ds = pydicom.dcmread(next(svc.settings.archive_root.rglob(f"{uid}.dcm")),
                                 stop_before_pixels=True)
            w, h = int(ds.Columns), int(ds.Rows)
            body = {"instance": uid, "lines": [
                {"points": [[w * 0.2, h * 0.2], [w * 0.8, h * 0.8]]},
                {"kind": "width", "points": [[w * 0.6, h * 0.4], [w * 0.4, h * 0.6]]}],
                "polygons": [{"points": [[w * 0.3, h * 0.3], [w * 0.7, h * 0.3],
                                         [w * 0.7, h * 0.7], [w * 0.3, h * 0.7]]}]}
            start = time.perf_counter()
            answer = client.post(f"/api/v1/studies/{study}/measurements", json=body,
                                 headers=headers)
            api.append(time.perf_counter() - start)
            assert answer.status_code == 201, answer.get_json()
            start = time.perf_counter()
            calibrate_photo(frame)
            calibrate.append(time.perf_counter() - start)

        outline_api, outline_alone = [], []
        for image in sorted((TESTDATA / "wounds" / "images").iterdir()):
            seed = innermost(TESTDATA / "wounds" / "labels" / image.name)
            if seed is None:
                continue
            jpeg = cv2.imencode(".jpg", cv2.imread(str(image)),
                                [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            study, uid, frame = upload(jpeg)
            start = time.perf_counter()
            answer = client.post("/api/v1/outline", json={"study": study, "instance": uid,
                                                          "seed": list(seed)}, headers=headers)
            outline_api.append(time.perf_counter() - start)
            assert answer.status_code == 200, answer.get_json()
            start = time.perf_counter()
            outline_photo(frame, seed)
            outline_alone.append(time.perf_counter() - start)
        svc.db.engine.dispose()

    def p95(values: list[float]) -> str:
        return f"{float(np.percentile(values, 95)) * 1000:.0f}"

    print(table(["what", "photos", "p50 ms", "p95 ms", "max ms"], [
        ["POST /measurements (2 lines + 1 polygon, SR + PR stored)", len(api),
         f"{median_ms(api):.0f}", p95(api), f"{max(api) * 1000:.0f}"],
        ["  peer: calibrate_photo alone on the stored JPEG", len(calibrate),
         f"{median_ms(calibrate):.0f}", p95(calibrate), f"{max(calibrate) * 1000:.0f}"],
        ["POST /outline (512 x 512)", len(outline_api), f"{median_ms(outline_api):.0f}",
         p95(outline_api), f"{max(outline_api) * 1000:.0f}"],
        ["  peer: outline_photo alone on the stored JPEG", len(outline_alone),
         f"{median_ms(outline_alone):.0f}", p95(outline_alone),
         f"{max(outline_alone) * 1000:.0f}"],
    ]))


if __name__ == "__main__":
    main()
