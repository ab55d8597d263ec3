"""Helpers shared by the benchmarks: test data paths, one-core pinning, tables."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO.parent / "shared" / "testdata"


def twelve_mp_jpegs() -> list[Path]:
    """The chart photos of 11-14 MP (the phones' 12 MP), in name order."""
    from app.pipeline.decode import probe

    files = []
    for path in sorted((TESTDATA / "colourchart").glob("*.jpg")):
        info = probe(path.read_bytes())
        if 11_000_000 <= info.width * info.height <= 14_000_000:
            files.append(path)
    return files


def pin_one_core() -> None:
    """Run this process (and its children) on one core, OpenCV single-threaded."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import cv2

    cv2.setNumThreads(1)


def median_ms(seconds: Sequence[float]) -> float:
    return statistics.median(seconds) * 1000


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table with right-aligned columns."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
