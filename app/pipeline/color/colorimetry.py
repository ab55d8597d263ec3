"""Colour conversions and CIEDE2000, vectorized over any leading shape (last axis = 3)."""

from __future__ import annotations

import numpy as np

from app.pipeline.color.reference import REFERENCE_XYZ_D50, SRGB_TO_XYZ_D50, WHITE_D50_XYZ


def srgb_decode(encoded: np.ndarray) -> np.ndarray:
    """Return linear values for sRGB-encoded values in [0, 1] (IEC 61966-2-1 curve)."""
    v = np.asarray(encoded, dtype=np.float64)
    return np.where(v <= 0.04045, v / 12.92, ((np.clip(v, 0.04045, None) + 0.055) / 1.055) ** 2.4)


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Return sRGB-encoded values for linear values (the inverse of `srgb_decode`)."""
    v = np.asarray(linear, dtype=np.float64)
    return np.where(
        v <= 0.0031308, v * 12.92, 1.055 * np.clip(v, 0.0031308, None) ** (1 / 2.4) - 0.055
    )


def xyz_to_lab(xyz: np.ndarray, white: np.ndarray = WHITE_D50_XYZ) -> np.ndarray:
    """Return CIE 1976 L*a*b* for XYZ (Y of the white = 1) relative to `white` (default D50)."""
    t = np.asarray(xyz, dtype=np.float64) / white
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(t > eps, np.cbrt(t), (kappa * t + 16) / 116)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )


def linear_srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Return L*a*b* (D50, Bradford-adapted from sRGB's D65) for linear sRGB values."""
    return xyz_to_lab(np.asarray(rgb, dtype=np.float64) @ SRGB_TO_XYZ_D50.T)


def delta_e_2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """Return CIEDE2000 colour differences (kL = kC = kH = 1) between broadcastable Lab arrays.

    Follows Sharma, Wu & Dalal (2005), including their notes on hue angles and mean hue
    when one chroma is zero; the result has the broadcast shape without the last axis.
    """
    lab1 = np.asarray(lab1, dtype=np.float64)
    lab2 = np.asarray(lab2, dtype=np.float64)
    l1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    l2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]

    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    c7 = c_mean**7
    g = 0.5 * (1 - np.sqrt(c7 / (c7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.where((a1p == 0) & (b1 == 0), 0.0, np.degrees(np.arctan2(b1, a1p)) % 360)
    h2p = np.where((a2p == 0) & (b2 == 0), 0.0, np.degrees(np.arctan2(b2, a2p)) % 360)

    dl = l2 - l1
    dc = c2p - c1p
    chroma_zero = c1p * c2p == 0
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(chroma_zero, 0.0, dh)
    dhh = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2)

    lp_mean = (l1 + l2) / 2
    cp_mean = (c1p + c2p) / 2
    h_sum = h1p + h2p
    hp_mean = np.where(
        np.abs(h1p - h2p) <= 180,
        h_sum / 2,
        np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2),
    )
    hp_mean = np.where(chroma_zero, h_sum, hp_mean)

    t = (
        1
        - 0.17 * np.cos(np.radians(hp_mean - 30))
        + 0.24 * np.cos(np.radians(2 * hp_mean))
        + 0.32 * np.cos(np.radians(3 * hp_mean + 6))
        - 0.20 * np.cos(np.radians(4 * hp_mean - 63))
    )
    d_theta = 30 * np.exp(-(((hp_mean - 275) / 25) ** 2))
    cp7 = cp_mean**7
    r_c = 2 * np.sqrt(cp7 / (cp7 + 25.0**7))
    l50 = (lp_mean - 50) ** 2
    s_l = 1 + 0.015 * l50 / np.sqrt(20 + l50)
    s_c = 1 + 0.045 * cp_mean
    s_h = 1 + 0.015 * cp_mean * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    delta_e: np.ndarray = np.sqrt(
        (dl / s_l) ** 2 + (dc / s_c) ** 2 + (dhh / s_h) ** 2 + r_t * (dc / s_c) * (dhh / s_h)
    )
    return delta_e


REFERENCE_LAB_D50: np.ndarray = xyz_to_lab(REFERENCE_XYZ_D50)
