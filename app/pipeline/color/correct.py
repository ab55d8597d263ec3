"""Colour correction from a found chart: fit in linear RGB, report CIEDE2000, apply, scale.

`normalize` linearizes the patch colours (sRGB decoding, or none for data that are already
linear, as from machine-vision cameras), fits models in linear sRGB -- a 3 x 3 matrix and a
degree-2 root-polynomial (Finlayson, Mackiewicz & Hurlbert 2015), each with and without an
offset for flare -- and keeps the linearization and model with the lowest leave-one-out
CIEDE2000. Residuals are weighted by the Jacobian of CIELAB at each reference colour, so the
least-squares fit minimizes a first-order colour difference rather than raw RGB error. The
model is applied to the whole image in strips with OpenCV (LUTs, `cv2.transform`), never per
pixel in Python.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from app.pipeline.color.colorimetry import (
    REFERENCE_LAB_D50,
    delta_e_2000,
    linear_srgb_to_lab,
    srgb_decode,
    srgb_encode,
)
from app.pipeline.color.detect import Chart
from app.pipeline.color.reference import REFERENCE_LINEAR_SRGB

# A correction whose leave-one-out mean CIEDE2000 on the chart is above this is unreliable:
# no corrected image is returned. Good photos score 1-4, hard light 4-6.
DEFAULT_MAX_LOO_DELTA_E = 6.0
# Patch pitch (centre to centre) in mm, measured on the mm rulers printed on the charts in the
# test photos: Classic 45.6-46.5 (6 photos); Mini card and Passport page, which carry the same
# target, 14.8-15.0 (6 photos).
PITCH_MM: dict[str, float] = {"classic24": 46.0, "mini24": 14.9}
MIN_PATCHES = 12  # fewer usable (unclipped) patches than this: unreliable

# Channel c of the output takes channel c + 1 of the input (B, G, R -> G, R, B).
_NEXT_CHANNEL = np.roll(np.eye(3, dtype=np.float32), 1, axis=1)
# sRGB8 of the linear value (i / 255)^2, for i = 0..255 (see `_encode_srgb8`).
_ENCODE_LUT = np.round(255 * srgb_encode((np.arange(256) / 255.0) ** 2)).astype(np.uint8)


@dataclass(frozen=True)
class DeltaE:
    """CIEDE2000 statistics over the chart's usable patches."""

    mean: float
    max: float
    loo_mean: float | None = None


@dataclass(frozen=True)
class ColorReport:
    """What the colour step did and how well.

    Attributes:
        model: ``"matrix3x3"``, ``"matrix3x3+offset"``, ``"root_poly2"`` or
            ``"root_poly2+offset"`` (the one with the lowest leave-one-out ΔE).
        linearization: ``"srgb"`` (decoded with the sRGB curve) or ``"linear"`` (data taken
            as linear), whichever gives the lower leave-one-out ΔE.
        chart_type: the chart's type, see `Chart.type`.
        patches_used: patches that entered the fit: the unclipped ones, or all 24 when fewer
            than `MIN_PATCHES` are unclipped (the result is then unreliable).
        delta_e_before: patches as they are in the photo (read as sRGB) vs the reference.
        delta_e_after: patches after the fitted correction (clipped to the output range), with
            the leave-one-out mean: each patch predicted by a fit without it.
        reliable: leave-one-out mean <= the threshold given to `normalize` and enough patches.
        pixel_spacing_mm: size of one image pixel at the chart plane, mean over the chart;
            None when the chart type (and so its physical size) is not known.
    """

    model: str
    linearization: str
    chart_type: str
    patches_used: int
    delta_e_before: DeltaE
    delta_e_after: DeltaE
    reliable: bool
    pixel_spacing_mm: float | None

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-ready dict of the report."""
        return asdict(self)


MODELS = ("matrix3x3", "matrix3x3+offset", "root_poly2", "root_poly2+offset")


def normalize(
    bgr: np.ndarray,
    chart: Chart,
    *,
    max_loo_delta_e: float = DEFAULT_MAX_LOO_DELTA_E,
    in_place: bool = False,
) -> tuple[np.ndarray | None, ColorReport]:
    """Colour-correct a BGR uint8 image with its chart.

    Returns the corrected sRGB image (BGR uint8, same shape) and the report; the image is
    None when the report says the correction is unreliable. The input is not modified, unless
    ``in_place`` (and the correction is reliable): then the corrected image is written over
    it and returned, which saves a full-size buffer (36 MB at 12 MP).
    """
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ValueError("expected an H x W x 3 uint8 BGR image")
    obs = np.asarray(chart.patches_srgb, dtype=np.float64) / 255.0
    used = ~np.asarray(chart.clipped, dtype=bool)
    before = delta_e_2000(linear_srgb_to_lab(srgb_decode(obs)), REFERENCE_LAB_D50)[used]
    if used.sum() < MIN_PATCHES:
        used = np.ones(24, dtype=bool)  # report the fit anyway; it is flagged unreliable below
    loo, linearization, model = min(
        (_loo_mean(name, _linearize(obs, lin)[used], used), lin, name)
        for lin in ("srgb", "linear")
        for name in MODELS
    )
    lin_obs = _linearize(obs, linearization)
    coeffs = _fit(model, lin_obs[used], used)
    predicted = np.clip(_features(model, lin_obs) @ coeffs, 0.0, 1.0)
    after = delta_e_2000(linear_srgb_to_lab(predicted), REFERENCE_LAB_D50)[used]

    reliable = bool((~chart.clipped).sum() >= MIN_PATCHES and loo <= max_loo_delta_e)
    pitch_mm = PITCH_MM.get(chart.type)
    report = ColorReport(
        model=model,
        linearization=linearization,
        chart_type=chart.type,
        patches_used=int(used.sum()),
        delta_e_before=DeltaE(float(before.mean()), float(before.max())),
        delta_e_after=DeltaE(float(after.mean()), float(after.max()), float(loo)),
        reliable=reliable,
        pixel_spacing_mm=None if pitch_mm is None else pitch_mm / chart.pitch_px,
    )
    if not reliable:
        return None, report
    out = bgr if in_place else None
    return apply_correction(bgr, model, coeffs, linearization, out=out), report


def _linearize(obs: np.ndarray, linearization: str) -> np.ndarray:
    return srgb_decode(obs) if linearization == "srgb" else obs


def _features(model: str, lin: np.ndarray) -> np.ndarray:
    """Model inputs per colour: RGB [, sqrt(RG), sqrt(GB), sqrt(BR)] [, 1]."""
    lin = np.clip(lin, 0.0, None)
    r, g, b = lin[..., 0], lin[..., 1], lin[..., 2]
    terms = [r, g, b]
    if model.startswith("root_poly2"):
        terms += [np.sqrt(r * g), np.sqrt(g * b), np.sqrt(b * r)]
    if model.endswith("+offset"):
        terms.append(np.ones_like(r))
    return np.stack(terms, axis=-1)


def _lab_jacobians(rgb: np.ndarray) -> np.ndarray:
    """d(L*a*b*)/d(linear RGB) at each colour, shape (n, 3, 3), by central differences."""
    h = 1e-4
    rgb = np.clip(rgb, 2 * h, None)
    jac = np.empty((len(rgb), 3, 3))
    for c in range(3):
        step = np.zeros(3)
        step[c] = h
        jac[:, :, c] = (linear_srgb_to_lab(rgb + step) - linear_srgb_to_lab(rgb - step)) / (2 * h)
    return jac


_REF_JACOBIANS = _lab_jacobians(REFERENCE_LINEAR_SRGB)


def _weighted_system(feats: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch rows of the Lab-Jacobian-weighted least-squares system for the model inputs
    ``feats`` (n, p) of the ``used`` patches: (n, 3, 3p), (n, 3)."""
    n, p = feats.shape
    design = np.zeros((n, 3, 3 * p))
    for c in range(3):
        design[:, c, c::3] = feats
    jac = _REF_JACOBIANS[used]
    lhs = np.einsum("nij,njk->nik", jac, design)
    rhs = np.einsum("nij,nj->ni", jac, REFERENCE_LINEAR_SRGB[used])
    return lhs, rhs


def _fit(model: str, lin: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Coefficients (features x 3) minimizing sum |J_i (prediction_i - reference_i)|^2."""
    feats = _features(model, lin)
    lhs, rhs = _weighted_system(feats, used)
    theta, *_ = np.linalg.lstsq(lhs.reshape(-1, lhs.shape[2]), rhs.reshape(-1), rcond=None)
    coeffs: np.ndarray = theta.reshape(feats.shape[1], 3)
    return coeffs


def _loo_mean(model: str, lin: np.ndarray, used: np.ndarray) -> float:
    """Mean CIEDE2000 of each used patch predicted by a fit on the other used patches."""
    return loo_delta_e(_features(model, lin), used)


def loo_delta_e(feats: np.ndarray, used: np.ndarray) -> float:
    """Leave-one-out mean CIEDE2000 of the Lab-weighted fit on any model inputs: ``feats``
    (n, p) are the inputs of the ``used`` patches (a boolean mask of the 24); each is
    predicted by the fit on the others, clipped to the output range.

    All leave-one-out fits are solved at once from the normal equations minus each patch's
    own contribution (a tiny ridge keeps them well posed).
    """
    lhs, rhs = _weighted_system(feats, used)
    per_normal = np.einsum("nik,nil->nkl", lhs, lhs)
    per_rhs = np.einsum("nik,ni->nk", lhs, rhs)
    normal = per_normal.sum(axis=0) - per_normal
    normal += 1e-9 * np.eye(normal.shape[1])
    theta = np.linalg.solve(normal, (per_rhs.sum(axis=0) - per_rhs)[..., None])[..., 0]
    coeffs = theta.reshape(len(feats), feats.shape[1], 3)
    pred = np.clip(np.einsum("nk,nkc->nc", feats, coeffs), 0.0, 1.0)
    return float(delta_e_2000(linear_srgb_to_lab(pred), REFERENCE_LAB_D50[used]).mean())


def apply_correction(
    bgr: np.ndarray, model: str, coeffs: np.ndarray, linearization: str, *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Apply a fitted model to a BGR uint8 image; returns the sRGB-encoded BGR uint8 result,
    in ``out`` when given (C-contiguous, ``bgr``'s shape and type; it may be ``bgr`` itself:
    each strip is read before it is written), else in a new image.

    Works in strips of about 16k pixels through buffers allocated once, so intermediates stay
    in cache and no strip allocates: a LUT to linear RGB (to its square root for the
    root-polynomial, whose cross terms sqrt(x y) are then products of roots and whose linear
    terms are their squares), one or two `cv2.transform` passes and the sRGB encoding
    (`_encode_srgb8`), written straight into the output. About 50 ms for 12 MP on one core for
    the matrix, 80 ms for the root-polynomial.
    """
    levels = np.arange(256) / 255.0
    linear = srgb_decode(levels) if linearization == "srgb" else levels
    flip = np.eye(3)[::-1]
    # cv2.transform computes dst = m @ [src, 1] per pixel, channels in BGR order.
    offset = coeffs[-1] if model.endswith("+offset") else np.zeros(3)
    m_lin = np.hstack([flip @ coeffs[:3].T @ flip, (flip @ offset)[:, None]]).astype(np.float32)
    poly = model.startswith("root_poly2")
    lut = (np.sqrt(linear) if poly else linear).astype(np.float32)
    # BGR cross products in channel order (B*G, G*R, R*B) -> coefficient rows 4, 3, 5.
    m_cross = (flip @ coeffs[[4, 3, 5]].T).astype(np.float32) if poly else None
    height, width = bgr.shape[:2]
    rows = max(1, 16384 // width)
    if out is None:
        out = np.empty_like(bgr)
    elif out.shape != bgr.shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous uint8 array of the image's shape")
    first = np.empty((rows, width, 3), np.float32)  # linear RGB, or its square root
    cross = np.empty_like(first)
    result = np.empty_like(first)
    index = np.empty((rows, width * 3), np.uint8)
    for y in range(0, height, rows):
        n = min(rows, height - y)
        lin, res = first[:n], result[:n]
        # One channel of 3 x width values: cv2.LUT takes a third less time than on 3 channels.
        cv2.LUT(bgr[y : y + n].reshape(n, -1), lut, dst=lin.reshape(n, -1))
        if m_cross is not None:
            prod = cross[:n]
            cv2.multiply(lin, cv2.transform(lin, _NEXT_CHANNEL, dst=prod), dst=prod)
            cv2.multiply(lin, lin, dst=lin)
            cv2.add(cv2.transform(lin, m_lin, dst=res), cv2.transform(prod, m_cross, dst=prod),
                    dst=res)
        else:
            cv2.transform(lin, m_lin, dst=res)
        _encode_srgb8(res.reshape(n, -1), index[:n], out[y : y + n].reshape(n, -1))
    return out


def _encode_srgb8(linear: np.ndarray, index: np.ndarray, out: np.ndarray) -> None:
    """sRGB-encode float linear values (one channel, 2-D) into uint8 ``out`` (same shape),
    clipped to [0, 255], within 1 of rounding; ``linear`` is overwritten and ``index`` (uint8,
    same shape) is scratch.

    The value is quantized in the square-root domain (255 steps, fine where the sRGB curve is
    steep) and mapped by a 256-entry LUT: two cheap passes instead of a per-pixel power.
    """
    cv2.max(linear, 0.0, dst=linear)  # one channel: the scalar hits all values
    cv2.sqrt(linear, dst=linear)
    cv2.convertScaleAbs(linear, dst=index, alpha=255)
    cv2.LUT(index, _ENCODE_LUT, dst=out)
