"""Colour step: find the ColorChecker, correct colour in linear RGB, report CIEDE2000 and scale."""

from app.pipeline.color.colorimetry import delta_e_2000
from app.pipeline.color.correct import ColorReport, DeltaE, normalize
from app.pipeline.color.detect import Chart, find_chart
from app.pipeline.color.step import ColorOutcome, normalize_photo

__all__ = ["Chart", "ColorOutcome", "ColorReport", "DeltaE", "delta_e_2000", "find_chart",
           "normalize", "normalize_photo"]
