"""The TID 1500 measurement report built from a real photo's VL Photographic header: content
read back with highdicom, what dciodvfy says, determinism, refusals."""

from __future__ import annotations

import io
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes

from app.pipeline.dicom.sr import (
    ALGORITHM_NAME,
    LOCAL_SCHEME,
    MEASUREMENT_WARNING,
    SR_SOP_CLASS_UID,
    WARNING_CODES,
    WOUND,
    MeasuredLine,
    MeasuredPolygon,
    ReportInfo,
    build_measurement_report,
)
from app.pipeline.dicom.uids import IMPLEMENTATION_CLASS_UID
from app.pipeline.geometry import (
    EXTREME_TILT,
    FAR_FROM_CHART,
    WARNINGS,
    Point,
    calibrate_photo,
)
from tests.conftest import PEERS, dicom_validate
from tests.pipeline.test_dicom import build

SQUARE: list[Point] = [(300, 400), (900, 420), (880, 1000), (320, 980)]
INFO = ReportInfo(series_uid="2.25.11", series_number=4, sop_uid="2.25.12", instance_number=1,
                  wound_label="wound 1", tracking_uid="2.25.13", observer="nurse",
                  device_uid=IMPLEMENTATION_CLASS_UID,
                  content_datetime=datetime(2026, 12, 1, 10, 5,
                                            tzinfo=timezone(timedelta(hours=1))),
                  method_parameters=("chart_type=classic24",))


@pytest.fixture(scope="module")
def measured() -> tuple[pydicom.Dataset, list[MeasuredLine], list[MeasuredPolygon]]:
    data, jpeg = build("jtvd_classic_02.jpg")
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    cal = calibrate_photo(jpeg)
    line = MeasuredLine(((200, 300), (1300, 1800)), cal.length_mm((200, 300), (1300, 1800)))
    square = MeasuredPolygon(SQUARE, cal.area_mm2(SQUARE), cal.perimeter_mm(SQUARE))
    return source, [line], [square]


def test_one_group_per_region_with_values_uncertainty_site_and_observers(
        measured: tuple[pydicom.Dataset, list[MeasuredLine], list[MeasuredPolygon]]) -> None:
    source, lines, polygons = measured
    data = build_measurement_report(source, lines, polygons, INFO)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.SOPClassUID == SR_SOP_CLASS_UID and ds.Modality == "SR"
    assert ds.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert (ds.StudyInstanceUID, ds.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert (ds.SeriesInstanceUID, ds.SeriesNumber, ds.SOPInstanceUID) == ("2.25.11", 4, "2.25.12")
    assert (ds.ContentDate, ds.ContentTime[:6], ds.TimezoneOffsetFromUTC) == (
        "20261201", "100500", "+0100")
    assert ds.CompletionFlag == "COMPLETE"

    report = hd.sr.srread(io.BytesIO(data))
    line_group, area_group = report.content.get_planar_roi_measurement_groups()
    [length] = line_group.get_measurements(name=codes.SCT.Length)
    assert length.value == pytest.approx(lines[0].length.value, abs=1e-4)
    [area] = area_group.get_measurements(name=codes.SCT.Area)
    assert area.value == pytest.approx(polygons[0].area.value, abs=1e-4)
    assert area.unit == codes.UCUM.SquareMillimeter
    [perimeter] = area_group.get_measurements(name=codes.SCT.Perimeter)
    assert perimeter.value == pytest.approx(polygons[0].perimeter.value, abs=1e-4)
    # The closed outline repeats its first point (2D SCOORD has no POLYGON).
    roi = area_group.roi
    assert roi is not None and roi.value.tolist() == [[*p] for p in [*SQUARE, SQUARE[0]]]
    for group in (line_group, area_group):
        assert (group.tracking_identifier, group.tracking_uid) == ("wound 1", "2.25.13")
        assert group.finding_type == WOUND
        [site] = group.finding_sites
        assert site.value.value == source.AnatomicRegionSequence[0].CodeValue == "14975008"
        assert site.laterality is not None and site.laterality.meaning == "Left"
    # TID 310 uncertainty and TID 4019 algorithm under each measurement, the observers.
    items = content_items(ds)
    assert [float(v) for v in items["+, range of upper measurement uncertainty"]] == [
        pytest.approx(m.uncertainty, abs=1e-4)
        for m in (lines[0].length, polygons[0].area, polygons[0].perimeter)]
    assert items["Algorithm Name"] == [ALGORITHM_NAME] * 3
    assert items["Algorithm Parameters"] == ["chart_type=classic24"] * 3
    assert items["Person Observer Name"] == ["nurse^"]
    assert items["Device Observer UID"] == [IMPLEMENTATION_CLASS_UID]


def content_items(ds: pydicom.Dataset) -> dict[str, list[str]]:
    """Every content item's value (text, PN, UID or number) by concept name, in tree order."""
    found: dict[str, list[str]] = {}
    for item in ds.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        for keyword in ("TextValue", "PersonName", "UID"):
            if keyword in item:
                found.setdefault(name, []).append(str(item.get(keyword)))
        if "MeasuredValueSequence" in item:
            found.setdefault(name, []).append(str(item.MeasuredValueSequence[0].NumericValue))
        for key, values in content_items(item).items():
            found.setdefault(key, []).extend(values)
    return found


def test_dciodvfy_finds_no_error_or_warning(
        measured: tuple[pydicom.Dataset, list[MeasuredLine], list[MeasuredPolygon]],
        tmp_path: Path) -> None:
    source, lines, polygons = measured
    path = tmp_path / "sr.dcm"
    path.write_bytes(build_measurement_report(source, lines, polygons, INFO))
    proc = subprocess.run(["bash", str(PEERS / "dicom_validate.sh"), "--iod",
                           "Comprehensive3DSR", str(path)], capture_output=True, text=True,
                          check=False)
    assert "TOTAL errors=0 warnings=0" in proc.stdout, proc.stdout + proc.stderr


def test_same_inputs_same_bytes_and_refusals(
        measured: tuple[pydicom.Dataset, list[MeasuredLine], list[MeasuredPolygon]]) -> None:
    source, lines, polygons = measured
    assert (build_measurement_report(source, lines, polygons, INFO)
            == build_measurement_report(source, lines, polygons, INFO))
    with pytest.raises(ValueError, match="nothing measured"):
        build_measurement_report(source, [], [], INFO)
    for label in ("", "  ", "x" * 65, "tab\there"):
        with pytest.raises(ValueError, match="wound label"):
            build_measurement_report(source, lines, [], replace(INFO, wound_label=label))


def test_each_group_carries_its_values_warnings_as_coded_qualitative_evaluations(
        measured: tuple[pydicom.Dataset, list[MeasuredLine], list[MeasuredPolygon]],
        tmp_path: Path) -> None:
    """A region's warnings (those of any of its values, once each, in order) are CODE items
    of its group that highdicom reads back; the local scheme is declared; dciodvfy finds no
    error (it warns only that it does not know the private "99" designator)."""
    source, lines, polygons = measured
    tilted = replace(lines[0], length=replace(lines[0].length, warnings=(EXTREME_TILT,)))
    far = replace(polygons[0], area=replace(polygons[0].area, warnings=(FAR_FROM_CHART,)),
                  perimeter=replace(polygons[0].perimeter,
                                    warnings=(EXTREME_TILT, FAR_FROM_CHART)))
    data = build_measurement_report(source, [tilted, lines[0]], [far], INFO)
    groups = hd.sr.srread(io.BytesIO(data)).content.get_planar_roi_measurement_groups()
    found = [[(e.name, e.value) for e in g.get_qualitative_evaluations()] for g in groups]
    assert found == [[(MEASUREMENT_WARNING, WARNING_CODES[EXTREME_TILT])], [],
                     [(MEASUREMENT_WARNING, WARNING_CODES[FAR_FROM_CHART]),
                      (MEASUREMENT_WARNING, WARNING_CODES[EXTREME_TILT])]]
    assert {c.value for c in WARNING_CODES.values()} == set(WARNINGS)  # codes map back as is
    ds = pydicom.dcmread(io.BytesIO(data))
    assert [(s.CodingSchemeDesignator, s.CodingSchemeName)
            for s in ds.CodingSchemeIdentificationSequence] == [
        (LOCAL_SCHEME, "ebiw-capture measurement codes")]
    path = tmp_path / "sr.dcm"
    path.write_bytes(data)
    errors, _, report = dicom_validate(path, iod="Comprehensive3DSR", decode=False)
    assert errors == 0, report
