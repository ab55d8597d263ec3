"""Benchmark the colour step against OpenCV mcc and colour-checker-detection, in one run.

Run: ``.venv/bin/python bench/bench_color.py`` from the repo root. Peer setup (once):
``python3 -m venv .venv-peers && .venv-peers/bin/pip install colour-checker-detection``
(kept out of ``.venv``: it pulls opencv-python, which would replace opencv-python-headless 5).

Data: every photo in ``../shared/testdata/colourchart/groundtruth.json`` (47 with a 24-patch
chart, the no-chart photo, the Digital SG). Everything runs pinned to one core with OpenCV
single-threaded.

A detection is *correct* when the mean corner error is at most 3 % of the chart diagonal
with every corner nearest its own ground-truth corner (so corner 0 is at dark skin). 3 % of
the diagonal is about a fifth of a patch: the central 40 % sample of every cell stays inside
its patch, and it is twice the spread of the ground truth itself (the board-fiducial quads
disagree with mcc by up to ~1.5 %). *Swatches ok* is the data set's own criterion: mean
CIEDE2000 < 3 between the detector's 24 swatches and the ground-truth patch means.
colour-checker-detection's quad is in its own working resolution and includes the chart's
frame, so it is judged on swatches only. *Wrong* = found, but neither correct nor with the
right swatches: a place or orientation that would feed wrong colours to the correction. (On
jarrelscy_203518 the ground-truth quad itself sits off the patch grid: ours lands 4.4 %
away from it with the right swatches, so it is counted neither correct nor wrong.)

Correction quality is the leave-one-out mean CIEDE2000 of our fit on each correctly found
chart. The model table fits each model on those charts' patches (the unclipped ones) and
shows median, p90 and max over the charts of the leave-one-out mean, each model taking the
better linearization (sRGB or none) per photo as the shipped step does: ours (least squares
weighted by the Lab Jacobian at each reference colour) on Finlayson 2015 root-polynomial
terms of degree 1-3 (colour-science's expansion), with and without an offset, and
colour-science's own ``colour_correction`` (plain RGB least squares) for Finlayson 2015 and
Vandermonde. Time is the whole colour path for one photo -- decode the file, find the chart, fit,
apply to every pixel, encode JPEG once -- median over the 12 MP photos, each run 3 times.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.pipeline.color import delta_e_2000, find_chart, normalize  # noqa: E402
from app.pipeline.color.colorimetry import (  # noqa: E402
    REFERENCE_LAB_D50,
    linear_srgb_to_lab,
    srgb_decode,
)
from app.pipeline.color.correct import MIN_PATCHES, loo_delta_e  # noqa: E402
from app.pipeline.color.reference import REFERENCE_LINEAR_SRGB  # noqa: E402
from app.pipeline.decode import encode_jpeg, load_pixels  # noqa: E402
from bench.common import TESTDATA, pin_one_core, table  # noqa: E402

CHARTS = TESTDATA / "colourchart"
PEERS_PYTHON = REPO / ".venv-peers" / "bin" / "python"
TYPES = ("classic24", "mini24", "passport24")
TWELVE_MP = 11_000_000
REPEATS_12MP = 3
TOLERANCE = 0.03


@dataclass
class Result:
    """One detector on one photo."""

    found: bool = False
    correct: bool = False
    swatches_ok: bool = False
    seconds: float = 0.0


@dataclass
class Photo:
    file: str
    kind: str
    quad: np.ndarray | None
    truth_lab: np.ndarray | None
    pixels: int
    results: dict[str, Result] = field(default_factory=dict)
    loo: float | None = None
    patches: np.ndarray | None = None  # 0..1 sRGB of the patches fitted (correct charts)
    used: np.ndarray | None = None
    linearization: str = ""
    reliable: bool = False


def srgb8_to_lab(rgb8: np.ndarray) -> np.ndarray:
    return linear_srgb_to_lab(srgb_decode(np.asarray(rgb8, dtype=np.float64) / 255.0))


def judge(photo: Photo, quad: np.ndarray | None, swatches: np.ndarray | None) -> Result:
    result = Result(found=quad is not None or swatches is not None)
    if photo.quad is not None and quad is not None:
        truth = photo.quad
        error = np.linalg.norm(quad - truth, axis=1).mean() / np.linalg.norm(truth[0] - truth[2])
        nearest = np.linalg.norm(quad[:, None] - truth[None], axis=2).argmin(axis=1)
        result.correct = bool(error <= TOLERANCE and nearest.tolist() == [0, 1, 2, 3])
    if photo.truth_lab is not None and swatches is not None:
        de = delta_e_2000(srgb8_to_lab(swatches), photo.truth_lab).mean()
        result.swatches_ok = bool(de < 3.0)
    return result


def load_photos() -> list[Photo]:
    truth = json.loads((CHARTS / "groundtruth.json").read_text())["images"]
    kinds = {}
    for line in (CHARTS / "index.csv").read_text().splitlines()[1:]:
        file, *_rest = line.split(",", 1)
        kinds[file] = line.split(",")[4]
    photos = []
    for file, gt in sorted(truth.items()):
        w, h = gt["image_wh"]
        photos.append(
            Photo(
                file=file,
                kind=kinds[file],
                quad=np.array(gt["quad"]) if gt.get("quad") else None,
                truth_lab=srgb8_to_lab(np.array(gt["patch_srgb8"]))
                if gt.get("patch_srgb8")
                else None,
                pixels=w * h,
            )
        )
    return photos


def run_ours(photo: Photo) -> None:
    data = (CHARTS / photo.file).read_bytes()
    bgr = load_pixels(data)
    start = time.perf_counter()
    chart = find_chart(bgr)
    seconds = time.perf_counter() - start
    result = judge(
        photo,
        None if chart is None else chart.corners,
        None if chart is None else chart.patches_srgb,
    )
    result.seconds = seconds
    photo.results["ours"] = result
    if chart is not None and result.correct:
        _, report = normalize(bgr, chart)
        photo.loo = report.delta_e_after.loo_mean
        photo.patches = np.asarray(chart.patches_srgb, dtype=np.float64) / 255.0
        used = ~np.asarray(chart.clipped, dtype=bool)
        photo.used = used if used.sum() >= MIN_PATCHES else np.ones(24, dtype=bool)
        photo.linearization = report.linearization
        photo.reliable = report.reliable


def run_mcc(photo: Photo) -> None:
    bgr = load_pixels((CHARTS / photo.file).read_bytes())
    detector = cv2.mcc.CCheckerDetector_create()
    detector.setColorChartType(cv2.mcc.MCC24)  # unset, it is uninitialised memory in 5.0
    start = time.perf_counter()
    ok = detector.process(bgr, 1)
    seconds = time.perf_counter() - start
    quad = swatches = None
    if ok:
        checker = detector.getBestColorChecker()
        quad = np.array(checker.getBox(), dtype=np.float64)
        swatches = np.asarray(checker.getChartsRGB())[:, 1].reshape(24, 3)  # per-patch mean RGB
    result = judge(photo, quad, swatches)
    result.seconds = seconds
    photo.results["opencv mcc"] = result


def run_peer(photos: list[Photo]) -> bool:
    if not PEERS_PYTHON.exists():
        print(f"(colour-checker-detection skipped: {PEERS_PYTHON} missing, see the docstring)")
        return False
    by_file = {p.file: p for p in photos}
    out = subprocess.run(
        [str(PEERS_PYTHON), str(REPO / "bench" / "peers_color.py")]
        + [str(CHARTS / p.file) for p in photos],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        row = json.loads(line)
        photo = by_file[row["file"]]
        swatches = np.array(row["swatches"]) if row["found"] else None
        result = judge(photo, None, swatches)
        result.found = row["found"]
        result.correct = result.swatches_ok
        result.seconds = row["seconds"]
        photo.results["colour-checker-detection"] = result
    return True


def time_path(data: bytes) -> dict[str, float]:
    """Seconds of each stage of the colour path for one photo (bytes in, JPEG bytes out)."""
    t0 = time.perf_counter()
    bgr = load_pixels(data)
    t1 = time.perf_counter()
    chart = find_chart(bgr)
    t2 = time.perf_counter()
    out = bgr
    if chart is not None:
        corrected, _ = normalize(bgr, chart)
        out = bgr if corrected is None else corrected
    t3 = time.perf_counter()
    encode_jpeg(out)
    t4 = time.perf_counter()
    return {
        "decode": t1 - t0,
        "detect": t2 - t1,
        "fit+apply": t3 - t2,
        "encode": t4 - t3,
        "total": t4 - t0,
    }


def colour_science_loo(lin: np.ndarray, used: np.ndarray, method: str, degree: int) -> float:
    """Leave-one-out mean CIEDE2000 of colour-science's ``colour_correction`` on one chart."""
    import colour

    index = np.flatnonzero(used)
    errors = []
    for k in index:
        train = index[index != k]
        predicted = colour.characterisation.colour_correction(
            lin[k], lin[train], REFERENCE_LINEAR_SRGB[train], method=method, degree=degree
        )
        lab = linear_srgb_to_lab(np.clip(predicted, 0.0, 1.0))
        errors.append(float(delta_e_2000(lab, REFERENCE_LAB_D50[k])))
    return float(np.mean(errors))


def root_polynomial(lin: np.ndarray, degree: int, offset: bool) -> np.ndarray:
    """Finlayson 2015 root-polynomial terms of ``degree`` (colour-science's expansion)."""
    import colour

    terms = colour.characterisation.polynomial_expansion_Finlayson2015(
        np.clip(lin, 0.0, None), degree=degree, root_polynomial_expansion=True
    )
    return np.hstack([terms, np.ones((len(lin), 1))]) if offset else terms


def model_rows(photos: list[Photo]) -> list[list[object]]:
    """Leave-one-out CIEDE2000 per model over the correctly found charts (see the docstring)."""
    fitted = [p for p in photos if p.patches is not None and p.used is not None]

    def loo(p: Photo, linearization: str, method: str, degree: int, offset: bool) -> float:
        assert p.patches is not None and p.used is not None
        lin = srgb_decode(p.patches) if linearization == "srgb" else p.patches
        if method == "ours":
            return loo_delta_e(root_polynomial(lin, degree, offset)[p.used], p.used)
        return colour_science_loo(lin, p.used, method.removeprefix("colour-science "), degree)

    def row(name: str, degree: object, values: list[float]) -> list[object]:
        return [
            name,
            degree,
            f"{statistics.median(values):.2f}",
            f"{np.percentile(values, 90):.2f}",
            f"{max(values):.2f}",
        ]

    rows = [row("ours as shipped: lowest of 8 per photo", "1-2", [p.loo or 0.0 for p in fitted])]
    for method, offset, degrees in (
        ("ours", False, (1, 2, 3)),
        ("ours", True, (1, 2, 3)),
        ("colour-science Finlayson 2015", False, (1, 2, 3)),
        ("colour-science Vandermonde", False, (1, 2)),
    ):
        for degree in degrees:
            values = [
                min(loo(p, lin, method, degree, offset) for lin in ("srgb", "linear"))
                for p in fitted
            ]
            name = "ours, Lab-weighted root-poly" if method == "ours" else method
            rows.append(row(name + (" + offset" if offset else ""), degree, values))
    return rows


def detector_rows(photos: list[Photo], name: str) -> list[list[object]]:
    rows = []
    for kind in (*TYPES, "all 24-patch"):
        group = [
            p for p in photos if (p.kind == kind or (kind == "all 24-patch" and p.kind in TYPES))
        ]
        res = [p.results[name] for p in group]
        correct = sum(r.correct for r in res)
        rows.append(
            [
                name if kind == TYPES[0] else "",
                kind,
                f"{correct}/{len(res)}",
                sum(r.found and not r.correct and not r.swatches_ok for r in res),
                sum(not r.found for r in res),
                sum(r.swatches_ok for r in res),
                f"{statistics.median(r.seconds for r in res) * 1000:.0f}",
            ]
        )
    return rows


def main() -> None:
    warnings.simplefilter("ignore")
    pin_one_core()
    photos = load_photos()
    for photo in photos:
        run_ours(photo)
        run_mcc(photo)
    detectors = ["ours", "opencv mcc"]
    if run_peer(photos):
        detectors.append("colour-checker-detection")

    print(f"Colour chart detection, {CHARTS} ({len(photos)} photos), one core")
    rows = [row for name in detectors for row in detector_rows(photos, name)]
    print(
        table(
            ["detector", "chart", "correct", "wrong", "none", "swatches ok", "detect ms (median)"],
            rows,
        )
    )
    nochart = next(p for p in photos if p.kind == "none")
    sg = next(p for p in photos if p.kind == "sg140")
    print(
        "no-chart photo, found: "
        + ", ".join(f"{d} {'YES' if nochart.results[d].found else 'no'}" for d in detectors)
    )
    print(
        "Digital SG (detection only), found: "
        + ", ".join(f"{d} {'yes' if sg.results[d].found else 'no'}" for d in detectors)
    )

    print("\nCorrection (ours, charts found correctly): leave-one-out mean CIEDE2000")
    corr_rows = []
    for label, group in [
        *[(kind, [p for p in photos if p.kind == kind]) for kind in TYPES],
        ("all 24-patch", [p for p in photos if p.kind in TYPES]),
        ("linear machine vision (luimoli)", [p for p in photos if p.file.startswith("luimoli")]),
    ]:
        loo = [p.loo for p in group if p.loo is not None]
        corr_rows.append(
            [
                label,
                len(loo),
                f"{statistics.median(loo):.2f}" if loo else "-",
                f"{max(loo):.2f}" if loo else "-",
                sum(p.reliable for p in group),
                sum(p.linearization == "linear" for p in group),
            ]
        )
    print(
        table(["photos", "n", "median LOO dE00", "max LOO dE00", "reliable", "linear"], corr_rows)
    )

    fitted = sum(p.patches is not None for p in photos)
    print(f"\nModels: leave-one-out mean CIEDE2000 over the {fitted} correctly found charts")
    print(table(["model", "degree", "median", "p90", "max"], model_rows(photos)))

    big = [p for p in photos if p.pixels >= TWELVE_MP]
    runs = [time_path((CHARTS / p.file).read_bytes()) for p in big for _ in range(REPEATS_12MP)]
    stages = ["decode", "detect", "fit+apply", "encode", "total"]
    print(f"\nColour path per 12 MP photo ({len(big)} photos x {REPEATS_12MP} runs, median s)")
    print(table(stages, [[f"{statistics.median(r[s] for r in runs):.3f}" for s in stages]]))


if __name__ == "__main__":
    main()
