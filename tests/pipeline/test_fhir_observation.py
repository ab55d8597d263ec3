"""The Observation builder alone, for what the stored measurements do not reach yet: a width
(no tool records one today) and a session without body site or side."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from fhir.resources.R4B.reference import Reference

from app.pipeline.fhir import to_json
from app.pipeline.fhir_observation import MeasuredValue, observation_id, wound_observation
from app.pipeline.geometry import EXTREME_TILT, FAR_FROM_CHART, WARNINGS
from tests.emr.conftest import fhir_validate

TAKEN = datetime(2026, 3, 1, 9, 30, 15, 250000, tzinfo=timezone(timedelta(hours=-5)))


def test_width_without_body_site_is_valid_and_keeps_its_label(tmp_path: Path) -> None:
    value = MeasuredValue(report_uid="2.25.1", region=3, quantity="width", value=12.345,
                          uncertainty=0.2049, unit="mm", taken_at=TAKEN,
                          measured_at=TAKEN + timedelta(days=1), tracking_uid="2.25.7",
                          wound_label="Sacral ulcer")
    obs = to_json(wound_observation(value, Reference(reference="Patient/p1"), None,
                                    Reference(reference="ImagingStudy/s1"), body_site=None,
                                    laterality=None, resource_id=observation_id(value)))
    assert obs["code"]["coding"][0] == {"system": "http://loinc.org", "code": "39125-0",
                                        "display": "Width of Wound"}
    assert obs["valueQuantity"]["value"] == 12.35  # to 0.01 mm
    assert obs["valueQuantity"]["extension"][0]["valueDecimal"] == 0.205
    assert obs["effectiveDateTime"] == "2026-03-01T09:30:15-05:00"
    assert obs["bodySite"]["text"] == "Sacral ulcer" and "coding" not in obs["bodySite"]
    [wound] = obs["contained"]
    assert "location" not in wound and "locationQualifier" not in wound
    assert obs["id"] == observation_id(value) and len(obs["id"]) == 36
    [report] = fhir_validate(tmp_path, [obs])
    assert report["errors"] == [], report


def test_warnings_are_notes_with_their_messages_and_the_validator_accepts_them(
        tmp_path: Path) -> None:
    value = MeasuredValue(report_uid="2.25.1", region=1, quantity="length", value=114.57,
                          uncertainty=1.9, unit="mm", taken_at=TAKEN, measured_at=TAKEN,
                          tracking_uid="2.25.7", wound_label="wound 1",
                          warnings=(FAR_FROM_CHART, EXTREME_TILT))
    obs = to_json(wound_observation(value, Reference(reference="Patient/p1"), None,
                                    Reference(reference="ImagingStudy/s1"), body_site=None,
                                    laterality=None, resource_id=observation_id(value)))
    assert obs["note"] == [{"text": WARNINGS[FAR_FROM_CHART]}, {"text": WARNINGS[EXTREME_TILT]}]
    plain = to_json(wound_observation(replace(value, warnings=()),
                                      Reference(reference="Patient/p1"), None,
                                      Reference(reference="ImagingStudy/s1"), body_site=None,
                                      laterality=None))
    assert "note" not in plain
    [report] = fhir_validate(tmp_path, [obs])
    assert report["errors"] == [], report
