"""Wound measurements as a DICOM Structured Report: TID 1500 Measurement Report (Part 10 bytes).

One Comprehensive 3D SR (the SOP Class OHIF writes and reads; it allows the 2D SCOORD used
here) per measuring run, in its own series of the photo's study, built with highdicom:

- one TID 1410 *Planar ROI Measurements* group per measured region: a line is an open
  POLYLINE with its Length (or Width, SCT 103355008, for a line across the wound), a polygon
  a closed POLYLINE (last point = first: 2D SCOORD has no POLYGON, PS3.3 C.18.6.1.2) with its
  Area and Perimeter;
- every group carries the wound's Tracking Identifier (its label, e.g. "wound 1") and Tracking
  Unique Identifier, so the same wound is followed across visits;
- the region's SCOORD is in the source image's pixel frame: (column, row), origin at the top-left
  corner of the top-left pixel (PS3.3 C.18.6.1.2), which is the frame of `app.pipeline.geometry`
  points, so coordinates pass through unchanged;
- finding type Wound (SCT 416462003) and finding site = the photo's Anatomic Region and Image
  Laterality as the source image codes them;
- the uncertainty as TID 310 Upper / Lower Measurement Uncertainty (one standard uncertainty);
- the method as TID 4019 Algorithm Identification (no standard code names a chart-plane
  homography): name `ALGORITHM_NAME`, the calibration's figures as its parameters;
- each warning a value of the region carries (`app.pipeline.geometry.WARNINGS`: far from the
  chart, extreme tilt) as a TID 1410 qualitative evaluation of its group, a CODE item
  `MEASUREMENT_WARNING` = `WARNING_CODES[code]`. No DICOM or SNOMED CT concept says "measured
  off the calibration plane", so both are local codes of the private coding scheme
  `LOCAL_SCHEME` (a "99" designator, PS3.16 section 8), declared in the Coding Scheme
  Identification Sequence of an SR that uses it; the code values are the warning codes
  themselves, so a reader maps them back unchanged;
- observer context: the person who measured and this software as the device.

Patient and study modules are copied from the source image by highdicom (evidence), so the SR
sits in the same study. Pure: no clock (``content_datetime`` is given), no randomness.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, DT, TM

from app.pipeline.dicom.builder import SOFTWARE_VERSION, file_meta
from app.pipeline.dicom.codes import LATERALITY_SNOMED, SNOMED
from app.pipeline.dicom.values import da, dt, tm
from app.pipeline.geometry import EXTREME_TILT, FAR_FROM_CHART, Measurement, Point

SR_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
MANUFACTURER = "ebiw-capture"
ALGORITHM_NAME = "ebiw chart-plane homography"
ALGORITHM_VERSION = SOFTWARE_VERSION.rsplit(" ", 1)[-1]
WOUND = Code("416462003", SNOMED, "Wound")
PHOTOGRAPHIC_IMAGE = Code("72170-4", "LN", "Photographic image")
DEFAULT_WOUND_LABEL = "wound 1"
MAX_LABEL_LENGTH = 64  # Tracking Identifier is a TEXT item; kept short for display


LOCAL_SCHEME = "99EBIW"
LOCAL_SCHEME_NAME = "ebiw-capture measurement codes"
MEASUREMENT_WARNING = Code("warning", LOCAL_SCHEME, "Measurement warning")
WARNING_CODES = {
    FAR_FROM_CHART: Code(FAR_FROM_CHART, LOCAL_SCHEME, "Region far from the colour chart"),
    EXTREME_TILT: Code(EXTREME_TILT, LOCAL_SCHEME, "Colour chart seen at an extreme tilt"),
}
"""The qualitative evaluation value of each warning code, by code (the code value itself)."""


LINE_QUANTITIES = {"length": codes.SCT.Length, "width": codes.SCT.Width}
"""What a measured line can be, and the concept name its value gets in the SR."""


@dataclass(frozen=True)
class MeasuredLine:
    """A segment (two pixel points of the source image) and its length in mm; ``quantity``
    (a key of `LINE_QUANTITIES`) says whether it is the wound's length or its width."""

    points: tuple[Point, Point]
    length: Measurement
    quantity: str = "length"


@dataclass(frozen=True)
class MeasuredPolygon:
    """A simple polygon (pixel points, not repeating the first) and its area (mm²) and
    perimeter (mm)."""

    points: Sequence[Point]
    area: Measurement
    perimeter: Measurement


@dataclass(frozen=True)
class ReportInfo:
    """Where the report goes and who made it.

    Attributes:
        series_uid, series_number: the SR's series (distinct from the photo series).
        sop_uid, instance_number: the SR instance.
        wound_label: the Tracking Identifier; ``tracking_uid`` its Tracking Unique Identifier.
        observer: the person who measured: a DICOM PN, or a login name (a one-component
            name, written with a trailing caret).
        device_uid: the UID naming this software as the observing device.
        content_datetime: when the measurements were made (with its UTC offset).
        method_parameters: the calibration's figures (``name=value`` texts), recorded as the
            algorithm's parameters.
    """

    series_uid: str
    series_number: int
    sop_uid: str
    instance_number: int
    wound_label: str
    tracking_uid: str
    observer: str
    device_uid: str
    content_datetime: datetime
    method_parameters: tuple[str, ...]


def build_measurement_report(source: Dataset, lines: Sequence[MeasuredLine],
                             polygons: Sequence[MeasuredPolygon], info: ReportInfo) -> bytes:
    """The Comprehensive 3D SR Part 10 bytes holding ``lines`` and ``polygons`` measured on
    ``source`` (a VL Photographic Image header; its pixel data is not needed).

    Guarantees: one measurement group per line, then per polygon, in the order given, each
    with the warnings of its values as qualitative evaluations; the same inputs give the same
    bytes. Raises ValueError for no region, a bad label or a line quantity not in
    `LINE_QUANTITIES`.
    """
    if not lines and not polygons:
        raise ValueError("nothing measured: give at least one line or polygon")
    unknown = {line.quantity for line in lines} - LINE_QUANTITIES.keys()
    if unknown:
        raise ValueError(f"a line measures one of {sorted(LINE_QUANTITIES)}, not {unknown}")
    label = info.wound_label.strip()
    if not label or len(label) > MAX_LABEL_LENGTH or not label.isprintable():
        raise ValueError(f"a wound label is 1 to {MAX_LABEL_LENGTH} printable characters")
    tracking = hd.sr.TrackingIdentifier(uid=info.tracking_uid, identifier=label)
    image = hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID)
    sites = _finding_sites(source)
    algorithm = hd.sr.AlgorithmIdentification(ALGORITHM_NAME, ALGORITHM_VERSION,
                                              info.method_parameters)

    def measurement(name: Code, unit: Code, value: Measurement) -> hd.sr.Measurement:
        return hd.sr.Measurement(
            name=name, value=round(value.value, 4), unit=unit, algorithm_id=algorithm,
            properties=hd.sr.MeasurementProperties(
                upper_measurement_uncertainty=round(value.uncertainty, 4),
                lower_measurement_uncertainty=round(value.uncertainty, 4)))

    def group(points: Sequence[Point], measurements: list[hd.sr.Measurement],
              values: Sequence[Measurement]
              ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
        region = hd.sr.ImageRegion(hd.sr.GraphicTypeValues.POLYLINE,
                                   np.asarray(points, dtype=np.float64), image)
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_region=region, finding_type=WOUND,
            finding_sites=sites, measurements=measurements,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(MEASUREMENT_WARNING, WARNING_CODES[code])
                for code in _region_warnings(values)])

    groups = [group(line.points, [measurement(LINE_QUANTITIES[line.quantity],
                                              codes.UCUM.Millimeter, line.length)],
                    [line.length])
              for line in lines]
    groups += [group([*poly.points, poly.points[0]],
                     [measurement(codes.SCT.Area, codes.UCUM.SquareMillimeter, poly.area),
                      measurement(codes.SCT.Perimeter, codes.UCUM.Millimeter, poly.perimeter)],
                     [poly.area, poly.perimeter])
               for poly in polygons]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(info),
        procedure_reported=PHOTOGRAPHIC_IMAGE,
        imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source], content=report[0], series_instance_uid=info.series_uid,
        series_number=info.series_number, sop_instance_uid=info.sop_uid,
        instance_number=info.instance_number, manufacturer=MANUFACTURER, is_complete=True,
        institution_name=source.get("InstitutionName") or None,
        institutional_department_name=source.get("InstitutionalDepartmentName") or None,
        coding_schemes=[CodingSchemeIdentificationItem(
            LOCAL_SCHEME, name=LOCAL_SCHEME_NAME, responsible_organization=MANUFACTURER)]
        if any(g.get_qualitative_evaluations() for g in groups) else None)
    sr.SeriesDescription = "Wound measurements"
    sr.SoftwareVersions = SOFTWARE_VERSION
    return encode_derived(sr, info.content_datetime, SR_SOP_CLASS_UID, info.sop_uid)


def encode_derived(ds: Dataset, stamp: datetime, sop_class_uid: str, sop_uid: str, *,
                   dates: Sequence[str] = ("Content", "Series", "InstanceCreation")) -> bytes:
    """The Part 10 bytes of ``ds``, an object highdicom built from a photo, stamped with
    ``stamp`` instead of highdicom's clock: each ``<prefix>Date`` and ``<prefix>Time`` of
    ``dates``, the contributing equipment's time, the UTC offset when ``stamp`` has one;
    UTF-8 text and our File Meta Information."""
    date, time = DA(da(stamp.date())), TM(tm(stamp))
    for prefix in dates:
        setattr(ds, f"{prefix}Date", date)
        setattr(ds, f"{prefix}Time", time)
    for library in ds.get("ContributingEquipmentSequence", []):  # highdicom stamps its clock
        library.ContributionDateTime = DT(dt(stamp))
    ds.SpecificCharacterSet = "ISO_IR 192"
    if stamp.utcoffset() is not None:
        ds.TimezoneOffsetFromUTC = stamp.strftime("%z")
    ds.file_meta = file_meta(sop_class_uid, sop_uid, ds.file_meta.TransferSyntaxUID)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _region_warnings(values: Sequence[Measurement]) -> list[str]:
    """The warning codes of a region: those of any of its values, each once, in the order
    they first appear."""
    return list(dict.fromkeys(code for value in values for code in value.warnings))


def _finding_sites(source: Dataset) -> list[hd.sr.FindingSite]:
    """The photo's body site (first Anatomic Region item) with its laterality, if coded."""
    regions = source.get("AnatomicRegionSequence")
    if not regions:
        return []
    site = regions[0]
    side = LATERALITY_SNOMED.get(str(source.get("ImageLaterality", "")))
    return [hd.sr.FindingSite(
        anatomic_location=Code(site.CodeValue, site.CodingSchemeDesignator, site.CodeMeaning),
        laterality=Code(side[0], SNOMED, side[1]) if side else None)]


def _observation_context(info: ReportInfo) -> hd.sr.ObservationContext:
    person = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=info.observer if "^" in info.observer else f"{info.observer}^"))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=info.device_uid, name=MANUFACTURER, manufacturer_name=MANUFACTURER,
            model_name=ALGORITHM_NAME))
    return hd.sr.ObservationContext(observer_person_context=person,
                                    observer_device_context=device)
