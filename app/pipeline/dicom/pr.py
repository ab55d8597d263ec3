"""The drawn measurements as a Color Softcopy Presentation State (Part 10 bytes).

Viewers that do not read a TID 1500 report still show what was measured: one Color Softcopy
Presentation State (PS3.3 A.33.2) per measuring run, built with highdicom, in its own series
of the photo's study, referencing the photo, with one graphic annotation per region on one
layer:

- a line is an open POLYLINE of its two ends, a polygon a closed POLYLINE (last point = first:
  a presentation state has no POLYGON), both unfilled, carrying the wound's Tracking
  Identifier and UID as the report's group does;
- a text object with the value and its unit (``L 23.4 mm``, ``W 12.0 mm``,
  ``A 312.5 mm² / P 71.2 mm``), anchored at the line's midpoint or the polygon's vertex mean;
- coordinates in PIXEL units: (column, row) of the stored pixels, origin at the top-left
  corner of the top-left pixel (PS3.3 C.10.5.1.2), the frame of the report's SCOORD, so the
  points are the report's, unchanged.

The ICC Profile is the photo's, an Input Device profile as PS3.3 C.11.15.1.1 requires (and
highdicom checks: class ``scnr`` or ``spac``, RGB, an XYZ/Lab connection space), passed
through `app.pipeline.dicom.builder.input_profile` again for photos stored before theirs
were. Pure: no clock (``content_datetime`` is given), no randomness.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset

from app.pipeline.dicom.builder import SOFTWARE_VERSION, input_profile
from app.pipeline.dicom.sr import (
    ALGORITHM_NAME,
    MANUFACTURER,
    MeasuredLine,
    MeasuredPolygon,
    ReportInfo,
    encode_derived,
)
from app.pipeline.geometry import Point

PR_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.11.2"  # Color Softcopy Presentation State Storage
CONTENT_LABEL = "WOUND_MEASURES"
LAYER = hd.pr.GraphicLayer("MEASUREMENTS", order=1, description="Wound measurements")
LINE_TEXT = {"length": "L", "width": "W"}
"""The text's prefix per line quantity (the keys of `app.pipeline.dicom.sr.LINE_QUANTITIES`)."""

def _text(anchor: Point, text: str, info: ReportInfo) -> hd.pr.TextObject:
    return hd.pr.TextObject(text, hd.pr.AnnotationUnitsValues.PIXEL,
                            anchor_point=(float(anchor[0]), float(anchor[1])),
                            anchor_point_visible=False,
                            tracking_id=info.wound_label.strip(), tracking_uid=info.tracking_uid)


def _polyline(points: Sequence[Point], info: ReportInfo) -> hd.pr.GraphicObject:
    return hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POLYLINE,
                               np.asarray(points, dtype=np.float64),
                               hd.pr.AnnotationUnitsValues.PIXEL,
                               tracking_id=info.wound_label.strip(),
                               tracking_uid=info.tracking_uid)


def build_presentation_state(source: Dataset, lines: Sequence[MeasuredLine],
                             polygons: Sequence[MeasuredPolygon], info: ReportInfo) -> bytes:
    """The Color Softcopy Presentation State Part 10 bytes drawing ``lines`` and ``polygons``
    on ``source`` (a VL Photographic Image header with its ICC profile; no pixel data needed),
    for the report ``info`` describes (``info``'s series and SOP UIDs are the presentation
    state's own; ``device_uid`` and ``method_parameters`` are not used).

    Guarantees: one graphic annotation per line, then per polygon, in the order given, each
    with one POLYLINE (points as given, a polygon's first point repeated at its end) and one
    text object of its values; the same inputs give the same bytes. Raises ValueError for no
    region or a line quantity not in `LINE_TEXT`.
    """
    if not lines and not polygons:
        raise ValueError("nothing measured: give at least one line or polygon")
    unknown = {line.quantity for line in lines} - LINE_TEXT.keys()
    if unknown:
        raise ValueError(f"a line measures one of {sorted(LINE_TEXT)}, not {unknown}")
    annotations = []
    for line in lines:
        (x1, y1), (x2, y2) = line.points
        text = f"{LINE_TEXT[line.quantity]} {line.length.value:.1f} mm"
        annotations.append(hd.pr.GraphicAnnotation(
            [source], LAYER, graphic_objects=[_polyline(line.points, info)],
            text_objects=[_text(((x1 + x2) / 2, (y1 + y2) / 2), text, info)]))
    for poly in polygons:
        centre = np.asarray(poly.points, dtype=np.float64).mean(axis=0)
        text = f"A {poly.area.value:.1f} mm\N{SUPERSCRIPT TWO} / P {poly.perimeter.value:.1f} mm"
        annotations.append(hd.pr.GraphicAnnotation(
            [source], LAYER, graphic_objects=[_polyline([*poly.points, poly.points[0]], info)],
            text_objects=[_text((centre[0], centre[1]), text, info)]))
    name = info.observer if "^" in info.observer else f"{info.observer}^"
    pr = hd.pr.ColorSoftcopyPresentationState(
        referenced_images=[source], series_instance_uid=info.series_uid,
        series_number=info.series_number, sop_instance_uid=info.sop_uid,
        instance_number=info.instance_number, manufacturer=MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME, software_versions=SOFTWARE_VERSION,
        device_serial_number="", content_label=CONTENT_LABEL,
        content_description="Wound measurements", graphic_annotations=annotations,
        graphic_layers=[LAYER], content_creator_name=name,
        institution_name=source.get("InstitutionName") or None,
        institutional_department_name=source.get("InstitutionalDepartmentName") or None,
        icc_profile=input_profile(source.get("ICCProfile")),
        specific_character_set="ISO_IR 192")
    pr.SeriesDescription = "Wound measurement graphics"
    # General Series Laterality (Type 2C, PS3.3 C.7.3.1; a PR has no Image Laterality): the
    # photo's side when R or L (its only values), else empty. Absent would be right for an
    # unpaired site (U), but dciodvfy, with no Body Part Examined to tell, then counts an
    # error; empty costs a warning ("only ... when actually unknown") and fits B (both sides).
    side = str(source.get("ImageLaterality") or "")
    pr.Laterality = side if side in ("R", "L") else ""
    return encode_derived(pr, info.content_datetime, PR_SOP_CLASS_UID, info.sop_uid,
                          dates=("PresentationCreation", "Series", "InstanceCreation"))
