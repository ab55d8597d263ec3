"""Benchmark the photo-quality checks (app/pipeline/quality.py) and the live guidance endpoint.

Run: ``.venv/bin/python bench/bench_quality.py`` from the repo root (``--endpoint``: only the
guidance endpoint's table).

Data: every JPEG in ``../shared/testdata/colourchart`` (48 real photos, 47 with a chart, one
without) as sharp originals, and Gaussian-blurred copies of each at sigma 1, 2, 3 and 5 px
(blurred at full resolution: the photo the camera would have taken out of focus or shaken).
Each is judged as a stored photo (full size, `quality.assess` with the chart found in it) and
as a live preview frame (reduced to 640 px, `assess(..., preview=True)`, photo width given).

Per check: its time per photo (median, at 640 px and at full size), how many sharp originals it
flags (a false alarm for sharpness; for the other checks a real finding: these photos include
dark linear lab shots, far-away charts and strongly tilted boards) and how many blurred copies
it flags at each sigma. The chart check's time is the detector's. Then the guidance endpoint's
server time (``Server-Timing``) on the 640 px frames of every photo, beside peers timed in the
same run on the same frames: decoding the frame alone (the app's decoder), and cv2.Laplacian
alone on it.
Everything runs pinned to one core with OpenCV single-threaded; the machine's load average is
printed (the figures scale with it).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.factory import create_app  # noqa: E402
from app.pipeline import quality  # noqa: E402
from app.pipeline.color.detect import Chart, find_chart  # noqa: E402
from app.pipeline.decode import encode_jpeg, load_pixels  # noqa: E402
from app.workflow.tokens import create_token  # noqa: E402
from bench.common import TESTDATA, median_ms, pin_one_core, table  # noqa: E402

SIGMAS = (1, 2, 3, 5)
FRAME_SIDE = quality.MAX_FRAME_SIDE
ROUNDS = 3  # endpoint requests per frame


def frame_of(bgr: np.ndarray) -> np.ndarray:
    scale = FRAME_SIDE / max(bgr.shape[:2])
    return cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def check_timers(img: np.ndarray, chart: Chart | None) -> dict[str, Callable[[], object]]:
    """Each check alone, as `quality.assess` runs it (its private steps, for the split)."""
    size = (img.shape[1], img.shape[0])
    return {
        "chart": lambda: find_chart(img),
        "distance": lambda: quality._distance_check(chart, quality._px_per_mm(chart, 1.0), size),
        "tilt": lambda: quality._tilt_deg(chart, size),
        "sharpness": lambda: quality.sharpness(img, quality._crop_box(chart, size)),
        "exposure": lambda: quality._exposure_check(quality._luma(quality._reduced(img)), chart),
        "glare": lambda: quality._glare_check(img, quality._reduced(img), chart),
        "all but chart": lambda: quality.assess(img, chart),
    }


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def failed(q: quality.Quality) -> set[str]:
    return {c.id for c in q.checks if c.ok is False}


def main() -> None:
    pin_one_core()
    files = sorted((TESTDATA / "colourchart").glob("*.jpg"))
    times: dict[str, dict[str, list[float]]] = {"640": {}, "full": {}}
    flags: dict[tuple[str, str], dict[str, int]] = {}  # (size, copy) -> check -> count
    frames: list[bytes] = []
    twelve_mp: list[float] = []  # assess() on the 12 MP photos: what intake adds per photo

    def count(size: str, copy: str, q: quality.Quality) -> None:
        row = flags.setdefault((size, copy), {})
        for check in failed(q):
            row[check] = row.get(check, 0) + 1

    for path in files:
        full = load_pixels(path.read_bytes())
        for sigma in (0, *SIGMAS):
            img = cv2.GaussianBlur(full, (0, 0), sigma) if sigma else full
            small = frame_of(img)
            copy = f"sigma {sigma}" if sigma else "original"
            for size, pixels in (("full", img), ("640", small)):
                chart = find_chart(pixels)
                if sigma == 0:
                    for name, fn in check_timers(pixels, chart).items():
                        times[size].setdefault(name, []).append(timed(fn))
                    if size == "full" and pixels.shape[0] * pixels.shape[1] >= 11_000_000:
                        twelve_mp.append(times[size]["all but chart"][-1])
                count(size, copy, quality.assess(pixels, chart, photo_width=img.shape[1],
                                                 preview=size == "640"))
            if sigma == 0:
                frames.append(encode_jpeg(small))

    checks = [*quality.CHECK_IDS, "all but chart"]
    copies = ["original", *(f"sigma {s}" for s in SIGMAS)]
    print(f"Photo quality checks on {len(files)} shared chart photos; blurred copies at "
          f"sigma {', '.join(map(str, SIGMAS))} px; load average {os.getloadavg()[0]:.1f}\n")
    header = ["check", "ms @640", "ms full",
              *(f"{c} flagged @640/full" for c in copies)]
    rows = []
    for check in checks:
        cells = [f"{flags.get(('640', c), {}).get(check, 0)}/"
                 f"{flags.get(('full', c), {}).get(check, 0)}" if check in quality.CHECK_IDS
                 else "" for c in copies]
        rows.append([check, f"{median_ms(times['640'][check]):.2f}",
                     f"{median_ms(times['full'][check]):.2f}", *cells])
    print(table(header, rows))
    print(f"\n(of {len(files)} photos each; sharpness thresholds: photo "
          f"{quality.MIN_SHARPNESS_PHOTO:g}, preview {quality.MIN_SHARPNESS_PREVIEW:g})")
    print(f"Added to the colour step of a stored photo (assess on the pixels it decoded, chart "
          f"found): {median_ms(twelve_mp):.1f} ms median per 12 MP photo "
          f"({len(twelve_mp)} photos)\n")
    endpoint(frames)


def endpoint(frames: list[bytes]) -> None:
    """Server time of POST /api/v1/guidance on every frame, beside the peers."""
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        app = create_app({"data_dir": Path(tmp) / "var", "env": "test", "server_timing": True,
                          "rate_guidance_per_10s": 0})
        svc = app.extensions["ebiw"]
        svc.db.create_schema()
        headers = {"Authorization": f"Bearer {create_token(svc.db, 'bench', 'capture')}",
                   "Content-Type": "image/jpeg"}
        client = app.test_client()
        server, decode, laplacian = [], [], []
        for _ in range(ROUNDS):
            for frame in frames:
                answer = client.post("/api/v1/guidance?photo_width=4032", data=frame,
                                     headers=headers)
                assert answer.status_code == 200, answer.get_json()
                server.append(float(answer.headers["Server-Timing"].split("dur=")[1]) / 1000)
                start = time.perf_counter()
                bgr = load_pixels(frame)
                decode.append(time.perf_counter() - start)
                gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
                start = time.perf_counter()
                cv2.Laplacian(gray, cv2.CV_32F).var()
                laplacian.append(time.perf_counter() - start)
        svc.db.engine.dispose()

    def p95(values: list[float]) -> float:
        return float(np.percentile(values, 95)) * 1000

    print(f"POST /api/v1/guidance, {len(frames)} frames of {FRAME_SIDE} px x {ROUNDS} "
          f"(goal: server time <= 50 ms)\n")
    print(table(["what", "p50 ms", "p95 ms", "mean ms"], [
        ["guidance endpoint (Server-Timing)", f"{median_ms(server):.1f}",
         f"{p95(server):.1f}", f"{statistics.mean(server) * 1000:.1f}"],
        ["peer: decoding the frame alone", f"{median_ms(decode):.2f}", f"{p95(decode):.2f}",
         f"{statistics.mean(decode) * 1000:.2f}"],
        ["peer: cv2.Laplacian variance alone", f"{median_ms(laplacian):.2f}",
         f"{p95(laplacian):.2f}", f"{statistics.mean(laplacian) * 1000:.2f}"],
    ]))


if __name__ == "__main__":
    if sys.argv[1:] == ["--endpoint"]:  # the guidance endpoint's table alone (about a minute)
        pin_one_core()
        endpoint([encode_jpeg(frame_of(load_pixels(path.read_bytes())))
                  for path in sorted((TESTDATA / "colourchart").glob("*.jpg"))])
    else:
        main()
