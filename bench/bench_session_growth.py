"""Does an upload get slower as its session fills? 200 photos into one session through
``ebiw serve`` (gunicorn, 1 worker, SQLite, the local archive, colour normalization on), one
after another as the phone's outbox sends them; the first 20 uploads beside the last 20.

Photo: a real chart photo (``jtvd_classic_07.jpg``) reduced to 640 px on its long side, so the
pixel work is small and what grows with the session (database rows read per upload) shows.
One PACS destination (STOW-RS to a closed loopback port, delivery thread off) so every photo
queues deliveries in its study, as in production. Figures: server time (``Server-Timing``,
body received to response ready) and client time (PUT sent to answer read), mean and p95 of
uploads 1-20 and 181-200, and last / first. Target: last-20 mean <= 1.2 x first-20 mean.

Usage: .venv/bin/python bench/bench_session_growth.py [PHOTOS=200] [WINDOW=20]
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import REPO, TESTDATA, table
from PIL import Image

sys.path.insert(0, str(REPO))  # the harness is shared with tests/load

from tests.load.harness import Server, Upload, percentile, run_load
from tests.s3_peer import free_port

PHOTO = TESTDATA / "colourchart" / "jtvd_classic_07.jpg"
LONG_SIDE = 640
TARGET_RATIO = 1.2


def reduced_photo() -> bytes:
    """The bench photo reduced to ``LONG_SIDE`` px on its long side, as a JPEG."""
    with Image.open(PHOTO) as image:
        image.thumbnail((LONG_SIDE, LONG_SIDE))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
    return out.getvalue()


def stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), percentile(values, 0.95)


def main(count: int, window: int) -> int:
    data = reduced_photo()
    with tempfile.TemporaryDirectory(prefix="ebiw-bench-growth-") as tmp:
        destinations = Path(tmp) / "destinations.json"
        destinations.write_text(json.dumps({"destinations": [{
            "name": "pacs", "type": "stow-rs", "url": f"http://127.0.0.1:{free_port()}"}]}))
        env = {"EBIW_DESTINATIONS_FILE": str(destinations), "EBIW_DELIVERY_THREAD": "off"}
        with Server(Path(tmp) / "var", "", workers=1, env=env) as server:
            run_load(server, [[Upload(0, PHOTO, data)]], 120)  # warm-up, its own session
            uploads = [Upload(0, PHOTO, data) for _ in range(count)]
            run = run_load(server, [uploads], 1800)
    if len(run.acked) != count:
        print(f"only {len(run.acked)} of {count} uploads acknowledged")
        return 1
    rows, ratios = [], {}
    for name, times in (("server ms", [u.server_ms or 0.0 for u in uploads]),
                        ("client ms", [u.client_ms or 0.0 for u in uploads])):
        first, last = stats(times[:window]), stats(times[-window:])
        ratios[name] = last[0] / first[0]
        rows.append((name, f"{first[0]:.1f}", f"{first[1]:.1f}", f"{last[0]:.1f}",
                     f"{last[1]:.1f}", f"{ratios[name]:.2f}"))
    print(f"{count} uploads of a {len(data) // 1024} KiB photo into one session, "
          f"ebiw serve with 1 worker, SQLite")
    print(table(("figure", f"first {window} mean", "p95", f"last {window} mean", "p95",
                 f"last/first (target <= {TARGET_RATIO})"), rows))
    return 0 if ratios["server ms"] <= TARGET_RATIO else 1


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    sys.exit(main(*(args + [200, 20][len(args):])))
