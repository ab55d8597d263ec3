"""Run colour-checker-detection's segmentation detector on photos; one JSON line per photo.

Runs inside ``.venv-peers`` (colour-checker-detection pulls opencv-python, which must not
enter the project's venv); ``bench/bench_color.py`` calls it as a subprocess:
``.venv-peers/bin/python bench/peers_color.py PHOTO...``. Pinned to one core like the bench.
Each line: file, found, swatches (24 x 3 sRGB 0-255 in the peer's patch order), quad, seconds
(detection only, on the image decoded by cv2.imread with EXIF orientation).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

import cv2
import numpy as np

warnings.simplefilter("ignore")
from colour_checker_detection import detect_colour_checkers_segmentation  # noqa: E402


def main(paths: list[str]) -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)
    for path in paths:
        rgb = cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
        start = time.perf_counter()
        found = detect_colour_checkers_segmentation(rgb, additional_data=True)
        seconds = time.perf_counter() - start
        line: dict[str, object] = {"file": os.path.basename(path), "seconds": seconds}
        if found:
            line["swatches"] = (np.asarray(found[0].swatch_colours) * 255).tolist()
            line["quad"] = np.asarray(found[0].quadrilateral).tolist()
        line["found"] = bool(found)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
