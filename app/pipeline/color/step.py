"""The colour step on photo bytes: find the chart, correct, and encode the normalized image once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# quality imports this package's modules: imported as a module so that either may load first.
from app.pipeline import quality as photo_quality
from app.pipeline.color.correct import DEFAULT_MAX_LOO_DELTA_E, ColorReport, normalize
from app.pipeline.color.detect import Chart, find_chart
from app.pipeline.decode import DEFAULT_MAX_PIXELS, encode_jpeg, load_pixels_within


@dataclass(frozen=True)
class ColorOutcome:
    """What the colour step found in one photo.

    ``chart`` is None when no chart was found (not an error); ``report`` is set whenever a
    chart was found; ``jpeg`` (sRGB, baseline, ``width`` x ``height``) only when the
    correction is reliable. The step ran on the photo reduced ``scale`` times (1: full size),
    so ``chart`` and ``report`` are in the normalized image's pixels; `as_json` and
    `photo_pixel_spacing_mm` give them in the photo's. ``quality`` is the photo's quality
    record (`app.pipeline.quality.assess` on the same pixels; px per mm of the photo).
    """

    chart: Chart | None
    report: ColorReport | None
    jpeg: bytes | None
    width: int
    height: int
    scale: int = 1
    quality: photo_quality.Quality | None = None

    @property
    def pixel_spacing_mm(self) -> float | None:
        """Pixel spacing of the normalized image at the chart plane, in mm."""
        return self.report.pixel_spacing_mm if self.report else None

    @property
    def photo_pixel_spacing_mm(self) -> float | None:
        """Pixel spacing of the photo itself at the chart plane, in mm."""
        spacing = self.pixel_spacing_mm
        return None if spacing is None else spacing / self.scale

    def as_json(self) -> dict[str, Any]:
        """The result as the API and the CLI report it, in the photo's pixels (corners in the
        oriented photo, as in the chart ground truth)."""
        if self.chart is None or self.report is None:
            return {"chart": None, "delta_e_before": None, "delta_e_after": None,
                    "pixel_spacing_mm": None, "reliable": False, "model": None}
        r, f = self.report, self.scale
        # Pixel i of an image reduced f times covers photo pixels f*i .. f*i + f - 1.
        corners = self.chart.corners * f + (f - 1) / 2
        spacing = self.photo_pixel_spacing_mm
        return {
            "chart": {"type": self.chart.type,
                      "corners": [[round(float(x), 1), round(float(y), 1)] for x, y in corners]},
            "delta_e_before": {"mean": round(r.delta_e_before.mean, 2),
                               "max": round(r.delta_e_before.max, 2)},
            "delta_e_after": {"mean": round(r.delta_e_after.mean, 2),
                              "max": round(r.delta_e_after.max, 2),
                              "loo_mean": round(r.delta_e_after.loo_mean or 0.0, 2)},
            "pixel_spacing_mm": None if spacing is None else round(spacing, 5),
            "reliable": r.reliable,
            "model": r.model,
        }

    def derivation_description(self) -> str:
        """Derivation Description (ST) of the normalized instance: method and measured ΔE."""
        assert self.chart is not None and self.report is not None
        r = self.report
        return (f"Colour normalized with the {self.chart.type} chart in the frame: "
                f"{r.model} fit in linear RGB ({r.linearization} input), "
                f"{r.patches_used} patches. CIEDE2000 before mean {r.delta_e_before.mean:.2f} "
                f"max {r.delta_e_before.max:.2f}; after mean {r.delta_e_after.mean:.2f} "
                f"max {r.delta_e_after.max:.2f}, leave-one-out mean "
                f"{r.delta_e_after.loo_mean or 0.0:.2f}.")


def normalize_photo(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                    max_loo_delta_e: float = DEFAULT_MAX_LOO_DELTA_E,
                    output_max_pixels: int = 0) -> ColorOutcome:
    """Run the colour step on encoded photo bytes, decoded once and upright.

    The photo is decoded at full size, or with ``output_max_pixels`` > 0 at the largest of
    1/2, 1/4, 1/8 scale that fits (`load_pixels_within`); chart, fit and normalized image all come
    from that one decode, and so does the quality record. Guarantees: a wrong or absent chart
    gives ``chart=None``; an unreliable correction gives a report but no image; raises
    ``UnreadablePhotoError`` for input the decode step refuses.
    """
    bgr, scale = load_pixels_within(data, output_max_pixels, max_pixels=max_pixels)
    height, width = bgr.shape[:2]
    chart = find_chart(bgr)
    quality = photo_quality.assess(bgr, chart, photo_width=width * scale)
    if chart is None:
        return ColorOutcome(None, None, None, width, height, scale, quality)
    # The pixels are not needed after this: the correction is written over them.
    corrected, report = normalize(bgr, chart, max_loo_delta_e=max_loo_delta_e, in_place=True)
    jpeg = encode_jpeg(corrected) if corrected is not None else None
    return ColorOutcome(chart, report, jpeg, width, height, scale, quality)
