"""Colour step: chart detection on real photos, correction, CIEDE2000 and scale.

colour-science is the independent reference for the colorimetry; the photos and their ground
truth (quads from OpenCV mcc or from the board's fiducials, patch means) are in
../shared/testdata/colourchart.
"""

from __future__ import annotations

import json
import warnings
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.pipeline.color import Chart, delta_e_2000, find_chart, normalize
from app.pipeline.color.colorimetry import REFERENCE_LAB_D50, linear_srgb_to_lab, srgb_decode
from app.pipeline.color.correct import MODELS, PITCH_MM, _features, apply_correction
from app.pipeline.color.detect import CHART_QUAD
from app.pipeline.color.reference import REFERENCE_LINEAR_SRGB, REFERENCE_XYY_D50
from app.pipeline.decode import load_pixels

with warnings.catch_warnings():  # colour-science warns that matplotlib is missing
    warnings.simplefilter("ignore")
    import colour

CHARTS = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "colourchart"
GROUND_TRUTH = json.loads((CHARTS / "groundtruth.json").read_text())["images"]
COLOURCHECKER = colour.CCS_COLOURCHECKERS["ColorChecker24 - After November 2014"]

# One or two photos per source: Classic, Mini, Passport, machine vision (linear), 12 MP phone,
# a hard phone scene no other detector finds, a small far chart, an open Passport.
PHOTOS = [
    "jtvd_classic_07.jpg",
    "jtvd_mini_05.jpg",
    "karnehen_cam2_cc.jpg",
    "luimoli_tl84.jpg",
    "oycq_data_xiaomi.jpg",
    "oycq_meeting_room_iphone.jpg",
    "jarrelscy_203444.jpg",
    "qiu_passport.jpg",
    "sio_classic.jpg",
]


@cache
def photo(name: str) -> np.ndarray:
    return load_pixels((CHARTS / name).read_bytes())


@cache
def chart_of(name: str) -> Chart | None:
    return find_chart(photo(name))


def srgb8_to_lab(rgb8: np.ndarray) -> np.ndarray:
    return linear_srgb_to_lab(srgb_decode(np.asarray(rgb8, dtype=np.float64) / 255.0))


# --- colorimetry against colour-science -------------------------------------------------------


def test_reference_patches_are_colour_sciences() -> None:
    expected = np.array(list(COLOURCHECKER.data.values()))
    np.testing.assert_allclose(REFERENCE_XYY_D50, expected, rtol=0, atol=1e-12)
    lab = colour.XYZ_to_Lab(colour.xyY_to_XYZ(expected), COLOURCHECKER.illuminant)
    np.testing.assert_allclose(REFERENCE_LAB_D50, lab, atol=1e-6)


def test_linear_srgb_to_lab_matches_colour_science() -> None:
    rgb = np.random.default_rng(1).uniform(0, 1, (2000, 3))
    expected = colour.XYZ_to_Lab(
        colour.RGB_to_XYZ(
            rgb,
            "sRGB",
            illuminant=COLOURCHECKER.illuminant,
            chromatic_adaptation_transform="Bradford",
            apply_cctf_decoding=False,
        ),
        COLOURCHECKER.illuminant,
    )
    # colour-science rounds nothing and neither do we; the residue (< 0.03 L*a*b* units) comes
    # from its D65 white being derived from the sRGB primaries' normalisation.
    np.testing.assert_allclose(linear_srgb_to_lab(rgb), expected, atol=0.03)
    np.testing.assert_allclose(
        srgb_decode(np.linspace(0, 1, 1001)),
        colour.cctf_decoding(np.linspace(0, 1, 1001), "sRGB"),
        atol=1e-12,
    )


def test_delta_e_2000_matches_colour_science_on_random_pairs() -> None:
    rng = np.random.default_rng(7)
    lab1 = rng.uniform([0, -128, -128], [100, 128, 128], (20000, 3))
    lab2 = np.concatenate(
        [
            rng.uniform([0, -128, -128], [100, 128, 128], (10000, 3)),
            lab1[10000:] + rng.normal(0, 2, (10000, 3)),
        ]
    )
    expected = colour.delta_E(lab1, lab2, method="CIE 2000")
    np.testing.assert_allclose(delta_e_2000(lab1, lab2), expected, atol=1e-9)


# Sharma, Wu & Dalal (2005), "The CIEDE2000 colour-difference formula: implementation notes,
# supplementary test data, and mathematical observations", Table 1.
SHARMA_2005 = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    ((50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -1.1848, -84.8006), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -0.9009, -85.5211), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, -1.0000, 2.0000), (50.0000, 0.0000, 0.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0010), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0012), 7.2195),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0010, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    ((50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.1736, 0.5854), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2972, 0.0000), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 1.8634, 0.5757), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2592, 0.3350), 1.0000),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
    ((61.2901, 3.7196, -5.3901), (61.4292, 2.2480, -4.9620), 1.8731),
    ((35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((36.4612, 47.8580, 18.3852), (36.2715, 50.5065, 21.2231), 1.4146),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
    ((6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


def test_delta_e_2000_reproduces_sharma_2005() -> None:
    lab1 = np.array([p[0] for p in SHARMA_2005])
    lab2 = np.array([p[1] for p in SHARMA_2005])
    expected = np.array([p[2] for p in SHARMA_2005])
    np.testing.assert_allclose(delta_e_2000(lab1, lab2), expected, atol=1e-4)
    np.testing.assert_allclose(delta_e_2000(lab2, lab1), expected, atol=1e-4)  # symmetric
    np.testing.assert_allclose(colour.delta_E(lab1, lab2, method="CIE 2000"), expected, atol=1e-4)


# --- detection on real photos -----------------------------------------------------------------


def corner_error(corners: np.ndarray, truth: np.ndarray) -> float:
    """Mean corner distance as a fraction of the chart diagonal."""
    return float(
        np.linalg.norm(corners - truth, axis=1).mean() / np.linalg.norm(truth[0] - truth[2])
    )


@pytest.mark.parametrize("name", PHOTOS)
def test_find_chart_places_and_orients_the_chart(name: str) -> None:
    chart = chart_of(name)
    assert chart is not None
    truth = np.array(GROUND_TRUTH[name]["quad"])
    assert chart.corners.shape == (4, 2)
    # every corner is nearest to its own ground-truth corner: corner 0 is at dark skin
    nearest = np.linalg.norm(chart.corners[:, None] - truth[None], axis=2).argmin(axis=1)
    assert nearest.tolist() == [0, 1, 2, 3]
    assert corner_error(chart.corners, truth) <= 0.03
    # the swatches are the ground truth's (ΔE00 < 3 is the data set's "correct detection")
    truth_lab = srgb8_to_lab(np.array(GROUND_TRUTH[name]["patch_srgb8"]))
    assert delta_e_2000(srgb8_to_lab(chart.patches_srgb), truth_lab).mean() < 3.0
    assert chart.match_delta_e <= 12.0


@pytest.mark.slow
def test_every_photo_of_the_data_set() -> None:
    """The benchmark's claim in miniature: >= 45 of 47 charts placed, none wrong."""
    placed, wrong = 0, []
    for name, truth in GROUND_TRUTH.items():
        if not truth.get("quad"):
            continue
        chart = chart_of(name)
        if chart is None:
            continue
        truth_lab = srgb8_to_lab(np.array(truth["patch_srgb8"]))
        swatches_ok = delta_e_2000(srgb8_to_lab(chart.patches_srgb), truth_lab).mean() < 3.0
        if corner_error(chart.corners, np.array(truth["quad"])) <= 0.03:
            placed += 1
        elif not swatches_ok:
            wrong.append(name)
    assert placed >= 45
    assert wrong == []


def test_photo_without_chart_gives_none() -> None:
    assert chart_of("karnehen_cam2_nochart.jpg") is None


def test_digital_sg_is_found_as_its_inner_classic_block_of_unknown_size() -> None:
    chart = chart_of("qiu_digitalsg.png")
    assert chart is not None  # the SG carries the 24 classic colours as a 4 x 6 block
    assert chart.type == "colorchecker24"
    _, report = normalize(photo("qiu_digitalsg.png"), chart)
    assert report.pixel_spacing_mm is None


def synthetic_chart(colours_rgb8: np.ndarray, angle: float) -> np.ndarray:
    """A flat chart (patch 0.88 of the pitch, black frame) on grey paper, rotated."""
    pitch, size = 60, 900
    img = np.full((size, size, 3), 150, np.uint8)
    x0, y0 = (size - 6 * pitch) // 2, (size - 4 * pitch) // 2
    cv2.rectangle(
        img, (x0 - 30, y0 - 30), (x0 + 6 * pitch + 30, y0 + 4 * pitch + 30), (25, 25, 25), -1
    )
    side = int(0.88 * pitch)
    for i, rgb in enumerate(np.asarray(colours_rgb8)):
        r, c = divmod(i, 6)
        x, y = x0 + c * pitch + (pitch - side) // 2, y0 + r * pitch + (pitch - side) // 2
        cv2.rectangle(
            img, (x, y), (x + side - 1, y + side - 1), tuple(int(v) for v in rgb[::-1]), -1
        )
    rotation = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    return cv2.warpAffine(img, rotation, (size, size), borderValue=(150, 150, 150))


REFERENCE_SRGB8 = np.round(
    255 * colour.cctf_encoding(np.clip(REFERENCE_LINEAR_SRGB, 0, 1), "sRGB")
).astype(np.uint8)


def test_synthetic_chart_is_found_in_any_rotation() -> None:
    for angle in (0, 37, 90, 180, 250):
        chart = find_chart(synthetic_chart(REFERENCE_SRGB8, angle))
        assert chart is not None, angle
        assert chart.match_delta_e < 1.5
        # patch 1 (dark skin) is where corner 0 says it is
        centre = cv2.perspectiveTransform(np.array([[[0.0, 0.0]]]), chart.homography)[0, 0]
        probe = synthetic_chart(REFERENCE_SRGB8, angle)[int(centre[1]), int(centre[0])][::-1]
        assert np.abs(probe.astype(int) - REFERENCE_SRGB8[0]).max() <= 3


def test_chart_with_shuffled_patches_gives_none() -> None:
    order = np.random.default_rng(3).permutation(24)
    assert find_chart(synthetic_chart(REFERENCE_SRGB8[order], 20)) is None


def test_mirrored_chart_gives_none() -> None:
    # no physical chart looks like this; taking it for a rotated one would swap patches
    assert find_chart(cv2.flip(synthetic_chart(REFERENCE_SRGB8, 15), 1)) is None


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((480, 640, 3), np.uint8),
        np.full((31, 17, 3), 200, np.uint8),
        np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8),
    ],
    ids=["black", "tiny", "noise"],
)
def test_images_without_structure_give_none(image: np.ndarray) -> None:
    assert find_chart(image) is None


def test_find_chart_rejects_non_bgr_input() -> None:
    with pytest.raises(ValueError):
        find_chart(np.zeros((100, 100), np.uint8))


def test_real_chart_with_scrambled_patches_gives_none() -> None:
    name = "sio_classic.jpg"
    img = photo(name).copy()
    truth = np.array(GROUND_TRUTH[name]["quad"], dtype=np.float32)
    to_image = cv2.getPerspectiveTransform(CHART_QUAD.astype(np.float32), truth)
    px = 64  # rectified chart: cell (r, c) is [r*px, (r+1)*px) x [c*px, (c+1)*px)
    to_rect = np.array([[px, 0, px / 2], [0, px, px / 2], [0, 0, 1]]) @ np.linalg.inv(to_image)
    rect = cv2.warpPerspective(img, to_rect, (6 * px, 4 * px))
    cells = rect.reshape(4, px, 6, px, 3).transpose(0, 2, 1, 3, 4).reshape(24, px, px, 3)
    order = np.random.default_rng(5).permutation(24)
    scrambled = cells[order].reshape(4, 6, px, px, 3).transpose(0, 2, 1, 3, 4)
    scrambled = scrambled.reshape(4 * px, 6 * px, 3)
    back = cv2.warpPerspective(scrambled, np.linalg.inv(to_rect), img.shape[1::-1])
    mask = cv2.warpPerspective(
        np.full(scrambled.shape[:2], 255, np.uint8), np.linalg.inv(to_rect), img.shape[1::-1]
    )
    img[mask > 0] = back[mask > 0]
    assert find_chart(img) is None


# --- correction -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_apply_correction_equals_the_fitted_model(model: str) -> None:
    rng = np.random.default_rng(11)
    # 130 rows of 300 pixels: strips of 54 rows, the last one shorter.
    img = rng.integers(0, 256, (130, 300, 3), dtype=np.uint8)
    n = _features(model, np.zeros((1, 3))).shape[1]
    coeffs = np.eye(n, 3) * 0.9 + rng.normal(0, 0.05, (n, 3))
    for linearization in ("srgb", "linear"):
        rgb = img[..., ::-1].reshape(-1, 3) / 255.0
        lin = srgb_decode(rgb) if linearization == "srgb" else rgb
        expected = colour.cctf_encoding(np.clip(_features(model, lin) @ coeffs, 0, 1), "sRGB")
        expected = np.round(expected * 255).reshape(img.shape)[..., ::-1]
        got = apply_correction(img, model, coeffs, linearization)
        assert got.dtype == np.uint8 and got.shape == img.shape
        assert np.abs(got.astype(int) - expected).max() <= 1


def test_normalize_in_place_writes_the_same_pixels_over_the_input() -> None:
    name = "jtvd_mini_05.jpg"
    chart = chart_of(name)
    assert chart is not None
    expected, _ = normalize(photo(name), chart)
    pixels = photo(name).copy()
    corrected, report = normalize(pixels, chart, in_place=True)
    assert report.reliable and expected is not None
    assert corrected is pixels and np.array_equal(pixels, expected)
    with pytest.raises(ValueError):  # an output the strips cannot be written into
        apply_correction(pixels, report.model, np.eye(7, 3), "srgb", out=pixels[:, ::2])


def test_normalize_corrects_a_phone_photo_end_to_end() -> None:
    name = "jtvd_mini_05.jpg"
    chart = chart_of(name)
    assert chart is not None
    corrected, report = normalize(photo(name), chart)
    assert report.reliable and corrected is not None
    assert corrected.shape == photo(name).shape and corrected.dtype == np.uint8
    assert report.linearization == "srgb"
    assert report.delta_e_after.mean < report.delta_e_before.mean
    assert report.delta_e_after.loo_mean is not None and report.delta_e_after.loo_mean <= 4.5
    # the chart in the corrected photo measures what the report says
    again = find_chart(corrected)
    assert again is not None
    measured = delta_e_2000(srgb8_to_lab(again.patches_srgb), REFERENCE_LAB_D50)
    assert abs(measured.mean() - report.delta_e_after.mean) < 1.0
    assert report.as_dict()["delta_e_after"]["loo_mean"] == report.delta_e_after.loo_mean


def test_normalize_treats_machine_vision_data_as_linear() -> None:
    chart = chart_of("luimoli_tl84.jpg")
    assert chart is not None
    _, report = normalize(photo("luimoli_tl84.jpg"), chart)
    assert report.linearization == "linear"
    assert report.delta_e_before.mean > 20  # strong green cast, no gamma
    assert report.delta_e_after.loo_mean is not None and report.delta_e_after.loo_mean <= 4.0


def test_unreliable_correction_returns_no_image() -> None:
    chart = chart_of("sio_classic.jpg")
    assert chart is not None
    corrected, report = normalize(photo("sio_classic.jpg"), chart, max_loo_delta_e=0.5)
    assert corrected is None and not report.reliable


# --- scale ------------------------------------------------------------------------------------


def test_pixel_spacing_follows_chart_type_and_pitch() -> None:
    classic = chart_of("oycq_data_xiaomi.jpg")
    mini = chart_of("jtvd_mini_05.jpg")
    passport = chart_of("karnehen_cam2_cc.jpg")
    assert classic is not None and mini is not None and passport is not None
    assert (classic.type, mini.type, passport.type) == ("classic24", "mini24", "mini24")
    _, report = normalize(photo("oycq_data_xiaomi.jpg"), classic)
    assert report.pixel_spacing_mm == pytest.approx(PITCH_MM["classic24"] / classic.pitch_px)
    # the pitch is measured between patch centres in the image
    centres = cv2.perspectiveTransform(np.array([[[0.0, 0.0], [5.0, 0.0]]]), classic.homography)[0]
    assert np.linalg.norm(centres[1] - centres[0]) / 5 == pytest.approx(classic.pitch_px, rel=0.05)
