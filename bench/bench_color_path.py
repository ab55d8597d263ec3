"""The colour path against a plain Pillow decode + re-encode of the same photo, in one run.

Run: ``.venv/bin/python bench/bench_color_path.py [ROUNDS]`` from the repo root (default 5).

Photos: the 12 MP phone JPEGs of ``../shared/testdata/colourchart`` (`twelve_mp_jpegs`: 11-14
MP). Ours is `normalize_photo` as intake runs it at the defaults (full-size colour): decode,
find the chart, the photo's quality record, fit, apply to every pixel, encode the normalized
JPEG once. Its parts are timed again one by one on the same photo. The peer is Pillow:
``Image.open`` + ``load`` of the same bytes, then ``save`` as JPEG with our encoder's settings
(quality 95, 4:2:2), so both write the same kind of file from the same pixels.

Each round times, for every photo in turn, the peer, ours whole and ours by parts, so load on
the machine hits both alike. Times are CPU seconds of this process (``time.process_time``),
pinned to one core with OpenCV single-threaded: on a shared machine, wall time would also count
other processes' turns. The table gives medians over photos x rounds; the ratio column is the
median of the per-photo, per-round ratios ours / peer.
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.pipeline import quality as photo_quality  # noqa: E402
from app.pipeline.color import find_chart, normalize, normalize_photo  # noqa: E402
from app.pipeline.decode import JPEG_QUALITY, encode_jpeg, load_pixels  # noqa: E402
from bench.common import pin_one_core, table, twelve_mp_jpegs  # noqa: E402

T = TypeVar("T")
PARTS = ("decode", "detect", "quality", "fit+apply", "encode")


def timed(seconds: dict[str, list[float]], name: str, work: Callable[[], T]) -> T:
    """Run ``work``, add its CPU seconds to ``seconds[name]`` and return its result."""
    start = time.process_time()
    result = work()
    seconds.setdefault(name, []).append(time.process_time() - start)
    return result


def peer(data: bytes, seconds: dict[str, list[float]]) -> float:
    """Pillow decode + encode (quality 95, 4:2:2) of one photo; returns its CPU seconds."""

    def decode() -> Image.Image:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image

    image = timed(seconds, "peer decode", decode)
    timed(seconds, "peer encode", lambda: image.save(
        io.BytesIO(), "JPEG", quality=JPEG_QUALITY, subsampling="4:2:2"))
    return seconds["peer decode"][-1] + seconds["peer encode"][-1]


def ours_by_parts(data: bytes, seconds: dict[str, list[float]]) -> None:
    """The colour path's parts, one by one, on one photo (as `normalize_photo` runs them)."""
    bgr = timed(seconds, "decode", lambda: load_pixels(data))
    chart = timed(seconds, "detect", lambda: find_chart(bgr))
    timed(seconds, "quality", lambda: photo_quality.assess(bgr, chart))
    if chart is None:
        raise SystemExit("no chart found: the benchmark photos all have one")
    corrected, _ = timed(seconds, "fit+apply", lambda: normalize(bgr, chart, in_place=True))
    timed(seconds, "encode", lambda: encode_jpeg(bgr if corrected is None else corrected))


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    pin_one_core()
    photos = [(path.name, path.read_bytes()) for path in twelve_mp_jpegs()]
    seconds: dict[str, list[float]] = {}
    ratios = []
    for _ in range(rounds):
        for _name, data in photos:
            peer_total = peer(data, seconds)
            ours = timed(seconds, "total", lambda data=data: normalize_photo(data))
            if ours.jpeg is None:
                raise SystemExit("no normalized image: the benchmark photos all have a chart")
            ratios.append(seconds["total"][-1] / peer_total)
            ours_by_parts(data, seconds)
    seconds["peer total"] = [
        d + e for d, e in zip(seconds["peer decode"], seconds["peer encode"], strict=True)
    ]

    def ms(name: str) -> str:
        return f"{statistics.median(seconds[name]) * 1000:.0f}" if name in seconds else "-"

    rows = []
    for part in (*PARTS, "total"):
        peer_part = f"peer {part}"
        ratio = (
            f"{statistics.median(ratios):.2f}" if part == "total"
            else f"{statistics.median(seconds[part]) / statistics.median(seconds[peer_part]):.2f}"
            if peer_part in seconds else "-"
        )
        rows.append([part, ms(part), ms(peer_part), ratio])
    print(f"Colour path per 12 MP photo ({len(photos)} photos x {rounds} rounds, one core, "
          "CPU ms, median)")
    print(", ".join(name for name, _ in photos))
    print(table(["part", "ours", "Pillow decode + encode", "ratio"], rows))
    print("total: normalize_photo whole (parts timed separately do not add up exactly); "
          "ratio: median of per-photo ratios")


if __name__ == "__main__":
    main()
