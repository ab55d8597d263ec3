"""Reference data of the 24-patch ColorChecker and the colorimetric constants used with it.

The patch values are colour-science's
``CCS_COLOURCHECKERS["ColorChecker24 - After November 2014"]`` (CIE xyY, illuminant D50,
CIE 1931 2° observer), copied here so that the shipped pipeline does not depend on
colour-science; the tests check them against the library. Everything else is derived from
them at import time with the standard formulas.
"""

from __future__ import annotations

import numpy as np

PATCH_NAMES: tuple[str, ...] = (
    "dark skin", "light skin", "blue sky", "foliage", "blue flower", "bluish green",
    "orange", "purplish blue", "moderate red", "purple", "yellow green", "orange yellow",
    "blue", "green", "red", "yellow", "magenta", "cyan",
    "white 9.5", "neutral 8", "neutral 6.5", "neutral 5", "neutral 3.5", "black 2",
)  # fmt: skip

# colour-science 0.4.x, CCS_COLOURCHECKERS["ColorChecker24 - After November 2014"].data (xyY, D50)
REFERENCE_XYY_D50: np.ndarray = np.array(
    [
        (0.43748359776589135, 0.37852284252367574, 0.098324361049038508),
        (0.42224944148252169, 0.37249368511754133, 0.33620230399462869),
        (0.27614744043207645, 0.29838157212082628, 0.17855193476567299),
        (0.37331612820721999, 0.45116913568963873, 0.13467926789228754),
        (0.30289052143105832, 0.28628690932531797, 0.22871759975296238),
        (0.28640482815577994, 0.38971778452370232, 0.41435546877690771),
        (0.52814772183158321, 0.40533496771952993, 0.31264161585204892),
        (0.23238584983686839, 0.21120371548292269, 0.10910902328342183),
        (0.50444754713675299, 0.32706474514242939, 0.18899995604639894),
        (0.3334711475089796, 0.25055230112263344, 0.062766629551232106),
        (0.39889345078338362, 0.50414914883883277, 0.43317594089100103),
        (0.49357600127214574, 0.44428320198333177, 0.4293377577692557),
        (0.2052207685222249, 0.16866547571361887, 0.055962140625000024),
        (0.32303796463349599, 0.51041818329904942, 0.22334375824654548),
        (0.56287232272119514, 0.33556280741805006, 0.12780083497363057),
        (0.46775934923353307, 0.47602443369004865, 0.59929768030669561),
        (0.42131088608470502, 0.26692462327311373, 0.18951145768007596),
        (0.20912871882445683, 0.30265801492415445, 0.18060991295576384),
        (0.3489144945116201, 0.36421258000166207, 0.88069032027694327),
        (0.3455838580957924, 0.35988061288500306, 0.58997097019212041),
        (0.34414982920499509, 0.35918507011985279, 0.36486520663067878),
        (0.3457692225227178, 0.35909382718958216, 0.19062287543564713),
        (0.34264843258988703, 0.35758351535367289, 0.088172348283934374),
        (0.34376746726184459, 0.35605762966210502, 0.031513194308909767),
    ]
)

# Chromaticities of the white points (CIE 1931 2°), as colour-science gives them.
WHITE_D50_XY: tuple[float, float] = (0.3457029149190000, 0.3585385966800000)
WHITE_D65_XY: tuple[float, float] = (0.3127, 0.3290)

# IEC 61966-2-1 sRGB primaries, linear RGB -> XYZ (D65).
SRGB_TO_XYZ_D65: np.ndarray = np.array(
    [
        [0.4123907992659595, 0.3575843393838780, 0.1804807884018343],
        [0.2126390058715104, 0.7151686787677559, 0.0721923153607337],
        [0.0193308187155918, 0.1191947797946259, 0.9505321522496608],
    ]
)

# Bradford cone response matrix (Lam 1985), used for D65 <-> D50 adaptation.
_BRADFORD: np.ndarray = np.array(
    [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
)


def xy_to_xyz_white(xy: tuple[float, float]) -> np.ndarray:
    """Return the XYZ tristimulus of a white point with Y = 1 from its xy chromaticity."""
    x, y = xy
    return np.array([x / y, 1.0, (1.0 - x - y) / y])


WHITE_D50_XYZ: np.ndarray = xy_to_xyz_white(WHITE_D50_XY)
WHITE_D65_XYZ: np.ndarray = xy_to_xyz_white(WHITE_D65_XY)


def _bradford(src_white: np.ndarray, dst_white: np.ndarray) -> np.ndarray:
    cone_src = _BRADFORD @ src_white
    cone_dst = _BRADFORD @ dst_white
    adapt: np.ndarray = np.linalg.inv(_BRADFORD) @ np.diag(cone_dst / cone_src) @ _BRADFORD
    return adapt


# XYZ (D65) -> XYZ (D50) and the linear sRGB <-> XYZ (D50) matrices built on it.
D65_TO_D50: np.ndarray = _bradford(WHITE_D65_XYZ, WHITE_D50_XYZ)
SRGB_TO_XYZ_D50: np.ndarray = D65_TO_D50 @ SRGB_TO_XYZ_D65
XYZ_D50_TO_SRGB: np.ndarray = np.linalg.inv(SRGB_TO_XYZ_D50)


def _xyy_to_xyz(xyy: np.ndarray) -> np.ndarray:
    x, y, big_y = xyy[:, 0], xyy[:, 1], xyy[:, 2]
    return np.stack([x * big_y / y, big_y, (1.0 - x - y) * big_y / y], axis=1)


REFERENCE_XYZ_D50: np.ndarray = _xyy_to_xyz(REFERENCE_XYY_D50)
# Linear sRGB (D65 white, Bradford-adapted) of the patches; cyan is slightly out of gamut (R < 0).
REFERENCE_LINEAR_SRGB: np.ndarray = REFERENCE_XYZ_D50 @ XYZ_D50_TO_SRGB.T

# Patch indices (0-based) of the neutral ramp, white first.
NEUTRALS: tuple[int, ...] = (18, 19, 20, 21, 22, 23)
