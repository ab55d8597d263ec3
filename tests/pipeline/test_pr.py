"""The Color Softcopy Presentation State drawing the measured regions, built from a real
photo's VL Photographic header: graphics, what dciodvfy says, determinism; the ICC profile
given as an Input Device profile (PS3.3 C.11.15.1.1)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from PIL import ImageCms

from app.pipeline.dicom.builder import srgb_profile
from app.pipeline.dicom.pr import PR_SOP_CLASS_UID, build_presentation_state, input_profile
from app.pipeline.dicom.sr import MeasuredLine, MeasuredPolygon
from tests.conftest import dicom_validate
from tests.pipeline.test_sr import INFO, SQUARE, measured  # noqa: F401  (the fixture)

HIGHDICOM_SRGB = Path(hd.__file__).parent / "_icc_profiles" / "sRGB_v4_ICC_preference.icc"
Measured = tuple[pydicom.Dataset, list[MeasuredLine], list[MeasuredPolygon]]


def profile_id(profile: bytes) -> bytes:
    """The Profile ID as ICC.1:2010 7.2.18 defines it: MD5 of the profile with the flags,
    rendering intent and ID fields zeroed."""
    blank = bytearray(profile)
    blank[44:48], blank[64:68], blank[84:100] = bytes(4), bytes(4), bytes(16)
    return hashlib.md5(bytes(blank), usedforsecurity=False).digest()


def device_class(profile: bytes) -> str:
    return str(ImageCms.ImageCmsProfile(io.BytesIO(profile)).profile.device_class).strip()


def test_a_display_or_colour_space_profile_becomes_an_input_profile_of_the_same_transform(
) -> None:
    display = srgb_profile()  # littleCMS's sRGB: class mntr, no Profile ID
    assert device_class(display) == "mntr"
    relabelled = input_profile(display)
    assert device_class(relabelled) == "scnr"
    assert relabelled[:12] + relabelled[16:] == display[:12] + display[16:]

    # The ICC's own sRGB v4 (class spac) carries a Profile ID: recomputed after relabelling.
    reference = HIGHDICOM_SRGB.read_bytes()
    assert reference[84:100] == profile_id(reference) != bytes(16)
    relabelled = input_profile(reference)
    assert device_class(relabelled) == "scnr"
    assert relabelled[84:100] == profile_id(relabelled) != reference[84:100]
    assert relabelled[:12] + relabelled[16:84] == reference[:12] + reference[16:84]
    assert input_profile(relabelled) == relabelled  # an Input profile stays as it is


@pytest.mark.parametrize("profile", [
    None, b"not a profile",
    ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()])
def test_a_profile_that_cannot_describe_rgb_pixels_gives_srgb(profile: bytes | None) -> None:
    assert input_profile(profile) == input_profile(srgb_profile())


def test_one_annotation_per_region_in_the_photos_pixels_and_dciodvfy_is_clean(
        measured: Measured, tmp_path: Path) -> None:  # noqa: F811
    source, lines, polygons = measured
    width = MeasuredLine(((1000, 800), (500, 1200)), lines[0].length, "width")
    data = build_presentation_state(source, [*lines, width], polygons, INFO)
    assert build_presentation_state(source, [*lines, width], polygons, INFO) == data
    ds = pydicom.dcmread(io.BytesIO(data))
    assert (ds.SOPClassUID, ds.Modality) == (PR_SOP_CLASS_UID, "PR")
    assert (ds.SeriesInstanceUID, ds.SeriesNumber, ds.SOPInstanceUID) == ("2.25.11", 4, "2.25.12")
    assert (ds.PresentationCreationDate, ds.PresentationCreationTime[:6],
            ds.TimezoneOffsetFromUTC) == ("20261201", "100500", "+0100")
    assert ds.Laterality == "L" == source.ImageLaterality
    assert [a.GraphicObjectSequence[0].GraphicData for a in ds.GraphicAnnotationSequence] == [
        [200, 300, 1300, 1800], [1000, 800, 500, 1200],
        [c for p in [*SQUARE, SQUARE[0]] for c in p]]
    texts = [a.TextObjectSequence[0] for a in ds.GraphicAnnotationSequence]
    assert [t.UnformattedTextValue.split(" ")[0] for t in texts] == ["L", "W", "A"]
    assert texts[0].AnchorPoint == [750, 1050]  # the line's midpoint
    path = tmp_path / "pr.dcm"
    path.write_bytes(data)
    errors, warnings, output = dicom_validate(path, iod="ColorSoftcopyPresentationState",
                                              decode=False)
    assert (errors, warnings) == (0, 0), output

    # A photo of an unpaired site, with a Display profile of its own: Laterality empty (absent
    # would be dciodvfy's error, with no Body Part Examined to tell it the site is unpaired),
    # which dciodvfy only warns of.
    unsided = pydicom.Dataset(source)
    unsided.ImageLaterality = "U"
    unsided.ICCProfile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path.write_bytes(build_presentation_state(unsided, lines, [], INFO))
    unsided_pr = pydicom.dcmread(path)
    assert unsided_pr.Laterality == "" and unsided_pr.ICCProfile[12:16] == b"scnr"
    errors, warnings, output = dicom_validate(path, iod="ColorSoftcopyPresentationState",
                                              decode=False)
    assert (errors, warnings) == (0, 1), output
    assert "Laterality(0020,0060)> - is only permitted to be empty when actually unknown" \
        in output


def test_nothing_measured_or_an_unknown_quantity_is_refused(measured: Measured) -> None:  # noqa: F811
    source, lines, _ = measured
    with pytest.raises(ValueError, match="nothing measured"):
        build_presentation_state(source, [], [], INFO)
    with pytest.raises(ValueError, match="one of"):
        build_presentation_state(source, [MeasuredLine(lines[0].points, lines[0].length,
                                                       "depth")], [], INFO)
