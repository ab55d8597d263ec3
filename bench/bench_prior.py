"""The prior photo for the camera overlay (issue 16): server time to answer POST /api/v1/prior
for a patient whose last photo of the site is a 12 MP phone photo, on one core.

Ours: the whole request through the app (validation, the SQL that picks the latest photo, the
archive read, the render of its colour-normalized instance to an sRGB JPEG of 1280 px, the audit
record), and the render alone (:func:`app.workflow.prior.render_prior`).
Peer, same run, same files: dcmtk's ``dcmj2pnm +oj`` scaling the same DICOM instance to 1280 px
(a process per image, as a PACS-side converter would run it).
Usage: .venv/bin/python bench/bench_prior.py [RUNS]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import median_ms, pin_one_core, table, twelve_mp_jpegs

from app.db.models import Instance
from app.factory import create_app
from app.workflow.prior import PriorRequest, find_prior, render_prior
from app.workflow.tokens import create_token

FOREARM = "14975008"


def main(runs: int) -> None:
    pin_one_core()
    photos = twelve_mp_jpegs()
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"data_dir": Path(tmp) / "var", "env": "test",
                          "rate_upload_per_minute": 0})
        svc = app.extensions["ebiw"]
        svc.db.create_schema()
        headers = {"Authorization": f"Bearer {create_token(svc.db, 'bench', 'capture')}"}
        client = app.test_client()
        rows = []
        for n, path in enumerate(photos):
            ask = {"patient": {"id": f"BENCH{n:03d}"}, "body_site": FOREARM, "laterality": "L"}
            session = client.post("/api/v1/sessions", json=ask, headers=headers).get_json()
            put = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                             data=path.read_bytes(),
                             headers={**headers, "Content-Type": "image/jpeg"})
            assert put.status_code == 201, put.get_json()
            request_s, render_s, peer_s = [], [], []
            size = 0
            for _ in range(runs):
                start = time.perf_counter()
                answer = client.post("/api/v1/prior", json=ask, headers=headers)
                request_s.append(time.perf_counter() - start)
                assert answer.status_code == 200
                size = len(answer.data)
            prior = find_prior(svc.db, PriorRequest.from_json(ask, svc.settings.default_issuer))
            assert prior is not None
            for _ in range(runs):
                start = time.perf_counter()
                render_prior(svc.archive, prior)
                render_s.append(time.perf_counter() - start)
            with svc.db.session() as db:
                row = db.get(Instance, prior.instance.sop_uid)
                assert row is not None
                dicom = svc.settings.archive_root / row.path
            landscape = put.get_json()["width"] >= put.get_json()["height"]
            out = Path(tmp) / "peer.jpg"
            for _ in range(runs):
                start = time.perf_counter()
                subprocess.run(["dcmj2pnm", "+oj", "+Sxv" if landscape else "+Syv", "1280",
                                str(dicom), str(out)], check=True, capture_output=True)
                peer_s.append(time.perf_counter() - start)
            rows.append((path.name, "normalized" if prior.normalized else "original",
                         f"{median_ms(request_s):.0f}", f"{median_ms(render_s):.0f}",
                         f"{median_ms(peer_s):.0f}", f"{size // 1024}",
                         f"{out.stat().st_size // 1024}"))
        svc.db.engine.dispose()
    print(f"POST /api/v1/prior, 12 MP photos, 1280 px JPEG, one core, median of {runs} runs")
    print(table(("photo", "instance", "ours request ms", "ours render ms",
                 "dcmj2pnm ms", "ours KB", "dcmj2pnm KB"), rows))
    print(f"median over photos: ours request "
          f"{statistics.median(float(r[2]) for r in rows):.0f} ms, dcmj2pnm "
          f"{statistics.median(float(r[4]) for r in rows):.0f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
