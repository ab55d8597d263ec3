// Measurements on the server: what is stored in the study drawn back on the image it was
// measured on (or on its original/normalized pair, moved onto that grid), the body that
// saves the shapes drawn, and the L×W ellipse estimate clinicians compare with the traced area.

import { gridRatio } from "./viewer-dicom.js";

const round = (v) => Math.round(v * 100) / 100;

/**
 * Stored regions (GET /studies/{uid}/measurements) to draw on `image` of `view`: those
 * measured on that image, and those measured on its pair, scaled onto its pixel grid.
 */
export function storedOn(items, view, image) {
  const pair = image === view.original ? view.normalized : view.original;
  const shapes = [];
  for (const item of items) {
    let ratio = null;
    if (item.photo_sop_instance_uid === image.sop) ratio = 1;
    else if (pair && item.photo_sop_instance_uid === pair.sop) ratio = gridRatio(pair, image);
    if (ratio === null) continue;
    shapes.push({
      kind: item.kind === "polygon" ? "area" : item.kind,
      points: item.points.map(([x, y]) => ({ x: x * ratio, y: y * ratio })),
      saved: item,
    });
  }
  return shapes;
}

/** The body of POST /studies/{uid}/measurements for a stage's unsaved lengths, widths, areas. */
export function saveRequest(stage, wound) {
  const shapes = stage.unsaved();
  const points = (m) => m.points.map((p) => [round(p.x), round(p.y)]);
  return {
    instance: stage.image.sop,
    wound,
    lines: shapes.filter((m) => m.kind !== "area").map((m) => ({ kind: m.kind, points: points(m) })),
    polygons: shapes.filter((m) => m.kind === "area").map((m) => ({ points: points(m) })),
  };
}

/**
 * The ellipse estimate π/4·L·W from the last length and width listed in one unit (mm when
 * both are saved or drawn on a calibrated image, else pixels), beside the last traced area in
 * that unit; null without a length and a width.
 */
export function ellipseEstimate(results, calibrated) {
  const unitOf = (r) => (r.saved || calibrated ? "mm" : "px");
  for (const unit of ["mm", "px"]) {
    const inUnit = results.filter((r) => r.value !== null && unitOf(r) === unit);
    const last = (kind) => inUnit.filter((r) => r.kind === kind).at(-1);
    const [length, width, area] = [last("length"), last("width"), last("area")];
    if (length && width) {
      return { calibrated: unit === "mm", ellipse: (Math.PI / 4) * length.value * width.value, area: area ? area.value : null };
    }
  }
  return null;
}
