"""The Color Softcopy Presentation State drawing the measured regions, built from a real
photo's VL Photographic header: graphics, what dciodvfy says, determinism; the ICC profile
an Input Device profile (PS3.3 C.11.15.1.1), even from a photo stored with a Display one."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from PIL import ImageCms

from app.pipeline.dicom.pr import PR_SOP_CLASS_UID, build_presentation_state
from app.pipeline.dicom.sr import MeasuredLine, MeasuredPolygon
from tests.conftest import dicom_validate
from tests.pipeline.test_sr import INFO, SQUARE, measured  # noqa: F401  (the fixture)

Measured = tuple[pydicom.Dataset, list[MeasuredLine], list[MeasuredPolygon]]


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
