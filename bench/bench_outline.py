"""Benchmark the assisted outline against a GrabCut from a box around the same tap, in one run.

Run: ``.venv/bin/python bench/bench_outline.py`` (from the repo root). Uses the 40 FUSeg photos
with expert outlines in ``../shared/testdata/wounds`` (512 x 512). The tap for each photo is
the innermost point of its largest wound: the pixel where the distance transform of the
expert mask's largest connected component is greatest (the photo whose mask is empty has no
wound to tap and is left out, so 39 count). Dice compares the filled polygon (ours) or mask
(the peer) with the whole expert mask, every wound in the photo included; "largest" compares
with the tapped wound alone. Per photo it also prints our precision and recall on the tapped
wound (low precision: leaked onto skin; low recall: stopped short) and the mask's wound count.

The peer is OpenCV GrabCut initialised with a 128 x 128 rectangle centred on the tap, 5
iterations on the whole photo (the baseline of ``../shared/testdata/wounds/SOURCES.md``).
Ours is `app.pipeline.outline.outline` on the decoded RGB pixels. Its choices were made on
the first half (the 20 photos before ``fuseg_train_0500``); the other 19 are held out.
Timings: from RGB pixels to polygon (mask for the peer), one core, OpenCV single-threaded,
each photo the fastest of `REPEATS` runs.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.pipeline.outline import outline  # noqa: E402
from bench.common import TESTDATA, pin_one_core, table  # noqa: E402

WOUNDS = TESTDATA / "wounds"
REPEATS = 3
BOX = 128
HALF = "fuseg_train_0500.png"  # the first photo of the held-out half


@dataclass
class Photo:
    name: str
    rgb: np.ndarray
    mask: np.ndarray  # every wound
    largest: np.ndarray  # the tapped wound
    seed: tuple[int, int]


def load() -> list[Photo]:
    """The photos with at least one wound, their masks and taps, in name order."""
    photos = []
    for path in sorted((WOUNDS / "images").glob("*.png")):
        mask = cv2.imread(str(WOUNDS / "labels" / path.name), cv2.IMREAD_GRAYSCALE) > 127
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
        if count < 2:
            continue
        largest = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        depth = cv2.distanceTransform(largest.astype(np.uint8), cv2.DIST_L2, 5)
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        photos.append(Photo(path.name, rgb, mask, largest, (int(x), int(y))))
    return photos


def ours(rgb: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    filled = np.zeros(rgb.shape[:2], np.uint8)
    cv2.fillPoly(filled, [np.array(outline(rgb, seed), np.int32)], 1)
    return filled > 0


def grabcut_box(rgb: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    height, width = rgb.shape[:2]
    x, y = seed
    x0, y0 = max(0, x - BOX // 2), max(0, y - BOX // 2)
    x1, y1 = min(width, x + BOX // 2), min(height, y + BOX // 2)
    mask = np.zeros((height, width), np.uint8)
    cv2.setRNGSeed(0)
    cv2.grabCut(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), mask, (x0, y0, x1 - x0, y1 - y0),
                np.zeros((1, 65)), np.zeros((1, 65)), 5, cv2.GC_INIT_WITH_RECT)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


METHODS: dict[str, Callable[[np.ndarray, tuple[int, int]], np.ndarray]] = {
    "ours (seeded Lab level set + mask GrabCut)": ours,
    f"peer: GrabCut, {BOX}-px box": grabcut_box,
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def main() -> None:
    pin_one_core()
    photos = load()
    held_out = [p.name >= HALF for p in photos]
    rows = []
    per_photo: dict[str, list[float]] = {}
    found_by: dict[str, list[np.ndarray]] = {}
    for name, method in METHODS.items():
        scores, largest, ms = [], [], []
        found_by[name] = []
        for photo in photos:
            times = []
            for _ in range(REPEATS):
                start = time.perf_counter()
                found = method(photo.rgb, photo.seed)
                times.append((time.perf_counter() - start) * 1000)
            ms.append(min(times))
            found_by[name].append(found)
            scores.append(dice(found, photo.mask))
            largest.append(dice(found, photo.largest))
        per_photo[name] = scores
        first = [s for s, h in zip(scores, held_out, strict=True) if not h]
        second = [s for s, h in zip(scores, held_out, strict=True) if h]
        rows.append([name, f"{statistics.mean(scores):.3f}", f"{statistics.median(scores):.3f}",
                     f"{min(scores):.3f}", f"{statistics.mean(first):.3f}",
                     f"{statistics.mean(second):.3f}", f"{statistics.mean(largest):.3f}",
                     f"{statistics.median(ms):.0f}", f"{max(ms):.0f}"])
    print(f"{len(photos)} FUSeg photos 512 x 512 with a wound (first half {held_out.count(False)}, "
          f"held-out half {held_out.count(True)}); one tap at the largest wound's innermost "
          "point; one core\n")
    print(table(["method", "Dice mean", "median", "min", "1st half", "held-out half",
                 "largest wound", "ms median", "ms max"], rows))
    print("\nPer photo: Dice of each method vs the whole mask; for ours also vs the tapped wound "
          "alone, its precision and recall on that wound (low precision: leaked onto skin; low "
          "recall: stopped short), and how many wounds the expert mask holds:")
    ours_name, peer_name = METHODS
    print(table(["photo", "ours", "ours vs tapped", "precision", "recall", "wounds", "peer"],
                [[p.name, f"{per_photo[ours_name][i]:.2f}", *diagnosis(found_by[ours_name][i], p),
                  f"{per_photo[peer_name][i]:.2f}"] for i, p in enumerate(photos)]))


def diagnosis(found: np.ndarray, photo: Photo) -> list[str]:
    """Dice vs the tapped wound, precision and recall on it, and the mask's wound count."""
    hit = float((found & photo.largest).sum())
    wounds = cv2.connectedComponents(photo.mask.astype(np.uint8))[0] - 1
    return [f"{dice(found, photo.largest):.2f}", f"{hit / max(1, int(found.sum())):.2f}",
            f"{hit / float(photo.largest.sum()):.2f}", str(wounds)]


if __name__ == "__main__":
    main()
