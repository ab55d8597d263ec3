"""Tilt-corrected measurement against the single px-per-mm scale, on equal printed markers.

Run: ``.venv/bin/python bench/bench_geometry.py`` from the repo root.

Data: the board photos of ``../shared/testdata/colourchart`` (``jtvd_*``: a ColorChecker
Classic, or a Classic Mini, lying on a printed sheet with four ArUco markers of the 4 x 4
dictionary, all the same size; one sheet per chart type, photographed 10 and 6 times from
different angles). OpenCV's ArUco detector (``DICT_4X4_50``) gives each marker's 4 corners.

Each side of each marker is measured in mm two ways, from the same chart in the same photo:
(a) *homography*: `Calibration.length_mm` on the chart's plane; (b) *single scale*: the side
in pixels divided by the chart's mean patch pitch in px per mm (`Calibration.px_per_mm`), which
is what a frontal approximation does. Equal markers should give equal sides:

- *within a photo*: max / min - 1 over the photo's marker sides (target: median over the
  photos <= 10 %);
- *across photos of one board*: coefficient of variation (sd / mean) of the photo's mean
  side (target <= 2 %);
- *within 2u*: share of the sides within two standard uncertainties of the board's median
  side (about 95 % if the uncertainty is right).

Time per photo (one core, OpenCV single-threaded, median): decode + find the chart +
calibrate, and calibrate + 16 lengths with their uncertainties alone.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.pipeline.color import find_chart  # noqa: E402
from app.pipeline.decode import load_pixels  # noqa: E402
from app.pipeline.geometry import calibrate  # noqa: E402
from bench.common import TESTDATA, median_ms, pin_one_core, table  # noqa: E402

BOARDS = {"Classic board": "jtvd_classic_*.jpg", "Mini board": "jtvd_mini_*.jpg"}


@dataclass
class Photo:
    """The marker sides of one photo, both ways, and the time taken."""

    name: str
    tilt_deg: float
    markers: int
    homography: list[float] = field(default_factory=list)
    uncertainty: list[float] = field(default_factory=list)
    single: list[float] = field(default_factory=list)
    seconds_all: float = 0.0
    seconds_measure: float = 0.0


def spread(values: list[float]) -> float:
    return max(values) / min(values) - 1


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values)


def measure(path: Path, detector: cv2.aruco.ArucoDetector) -> Photo:
    started = time.perf_counter()
    bgr = load_pixels(path.read_bytes())
    chart = find_chart(bgr)
    assert chart is not None, path.name
    size = (bgr.shape[1], bgr.shape[0])
    cal = calibrate(chart, size)
    seconds_all = time.perf_counter() - started
    corners, _, _ = detector.detectMarkers(bgr)
    quads = [c.reshape(4, 2).astype(np.float64) for c in corners]
    ends = [(quad[i], quad[(i + 1) % 4]) for quad in quads for i in range(4)]
    photo = Photo(path.name, cal.tilt_deg, len(quads), seconds_all=seconds_all)
    started = time.perf_counter()
    cal = calibrate(chart, size)
    lengths = [cal.length_mm((p[0], p[1]), (q[0], q[1])) for p, q in ends]
    photo.seconds_measure = time.perf_counter() - started
    photo.homography = [m.value for m in lengths]
    photo.uncertainty = [m.uncertainty for m in lengths]
    photo.single = [float(np.linalg.norm(q - p)) / cal.px_per_mm for p, q in ends]
    return photo


def main() -> None:
    pin_one_core()
    detector = cv2.aruco.ArucoDetector(
        cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50), cv2.aruco.DetectorParameters()
    )
    photo_rows, board_rows, everything = [], [], []
    for board, pattern in BOARDS.items():
        photos = [measure(p, detector) for p in sorted((TESTDATA / "colourchart").glob(pattern))]
        everything += photos
        centre = statistics.median(s for p in photos for s in p.homography)
        covered = [
            abs(s - centre) <= 2 * u
            for p in photos
            for s, u in zip(p.homography, p.uncertainty, strict=True)
        ]
        for p in photos:
            photo_rows.append(
                [
                    p.name,
                    f"{p.tilt_deg:.0f}",
                    p.markers,
                    f"{spread(p.homography):.1%}",
                    f"{spread(p.single):.1%}",
                    f"{statistics.median(p.uncertainty):.2f}",
                    f"{p.seconds_all * 1000:.0f}",
                ]
            )
        means_h = [statistics.mean(p.homography) for p in photos]
        means_s = [statistics.mean(p.single) for p in photos]
        board_rows.append(
            [
                board,
                len(photos),
                f"{statistics.mean(means_h):.2f}",
                f"{cv(means_h):.1%}",
                f"{cv(means_s):.1%}",
                f"{statistics.median(spread(p.homography) for p in photos):.1%}",
                f"{statistics.median(spread(p.single) for p in photos):.1%}",
                f"{sum(covered) / len(covered):.0%}",
            ]
        )
    print(
        table(
            [
                "photo",
                "tilt deg",
                "markers",
                "max/min-1 homography",
                "max/min-1 single scale",
                "median u mm",
                "decode+find+calibrate ms",
            ],
            photo_rows,
        )
    )
    print()
    print(
        table(
            [
                "board",
                "photos",
                "mean side mm",
                "CV homography",
                "CV single scale",
                "median max/min-1 homography",
                "median max/min-1 single scale",
                "within 2u",
            ],
            board_rows,
        )
    )
    print()
    print(
        f"all {len(everything)} photos: median max/min-1 homography "
        f"{statistics.median(spread(p.homography) for p in everything):.1%}, single scale "
        f"{statistics.median(spread(p.single) for p in everything):.1%} (target <= 10 %); "
        f"time per photo: decode + find + calibrate "
        f"{median_ms([p.seconds_all for p in everything]):.0f} ms, calibrate + 16 lengths "
        f"{median_ms([p.seconds_measure for p in everything]):.1f} ms"
    )


if __name__ == "__main__":
    main()
