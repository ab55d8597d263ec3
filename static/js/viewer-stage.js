// A zoomable, pannable photograph with a measuring overlay.
//
// The frame is laid out at the image's full pixel size (Columns × Rows CSS pixels) and scaled
// by a CSS transform, so the SVG overlay works in image pixel coordinates whatever the zoom and
// whatever resolution of the image is loaded: first one fitted to the stage, the full
// resolution once the user zooms past it. Lengths and areas are computed in image pixels and
// converted with Pixel Spacing (row, column) when the image has it: a preview only, since the
// values saved are the server's, measured on the chart's plane (tilt-corrected).
//
// Tools: length, width (snapped perpendicular to the length nearest where it starts), area
// (a traced polygon: tap the corners, tap the first to close), arrow, note, and outline (a
// tap asks the server for the wound's outline, `options.onOutline`). Every drawn shape is
// edited by dragging its handles (a touch within HANDLE_PX of a point) and deleted from the
// list; shapes stored on the server (`setStored`) are drawn but not edited.

import { gridRatio } from "./viewer-dicom.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const MAX_ZOOM = 8; // screen pixels per image pixel
const CLOSE_PX = 22; // a tap this close to an area's first corner closes it
const DRAG_PX = 4; // movement below this is a click
const HANDLE_PX = 22; // a touch this close to a shape's point drags it (44 px target)
const TWO_POINTS = new Set(["length", "width", "arrow"]);
export const MEASURED = new Set(["length", "width", "area"]); // what the server measures

/** End of a width from `start` towards `towards`, snapped perpendicular to segment [a, b]. */
export function perpendicular(start, towards, [a, b]) {
  const d = Math.hypot(b.x - a.x, b.y - a.y) || 1;
  const n = { x: -(b.y - a.y) / d, y: (b.x - a.x) / d };
  const along = (towards.x - start.x) * n.x + (towards.y - start.y) * n.y;
  return { x: start.x + n.x * along, y: start.y + n.y * along };
}

function distanceToSegment(p, [a, b]) {
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const t = Math.max(0, Math.min(1, ((p.x - a.x) * dx + (p.y - a.y) * dy) / (dx * dx + dy * dy || 1)));
  return Math.hypot(p.x - a.x - t * dx, p.y - a.y - t * dy);
}

/** Perimeter of a closed polygon of image points, in mm with spacing, else pixels. */
export function perimeterOf(points, spacing) {
  return points.reduce((sum, p, i) => sum + lengthOf(p, points[(i + 1) % points.length], spacing), 0);
}

/** Length between two image points, in mm with spacing, else in pixels. */
export function lengthOf(a, b, spacing) {
  const dx = (b.x - a.x) * (spacing ? spacing.column : 1);
  const dy = (b.y - a.y) * (spacing ? spacing.row : 1);
  return Math.hypot(dx, dy);
}

/** Area of a simple polygon of image points (shoelace), in mm² with spacing, else px². */
export function areaOf(points, spacing) {
  let twice = 0;
  for (let i = 0; i < points.length; i += 1) {
    const p = points[i];
    const q = points[(i + 1) % points.length];
    twice += p.x * q.y - q.x * p.y;
  }
  return (Math.abs(twice) / 2) * (spacing ? spacing.row * spacing.column : 1);
}

export function formatMeasurement(kind, value, calibrated) {
  if (kind === "length" || kind === "width") return calibrated ? `${value.toFixed(1)} mm` : `${Math.round(value)} px`;
  if (!calibrated) return `${Math.round(value)} px²`;
  return value >= 100 ? `${Math.round(value)} mm² (${(value / 100).toFixed(1)} cm²)` : `${value.toFixed(1)} mm²`;
}

/** The shapes with their points multiplied by `ratio` (onto another rendering's pixel grid). */
function scaled(shapes, ratio) {
  return shapes.map((m) => ({ ...m, points: m.points.map((p) => ({ x: p.x * ratio, y: p.y * ratio })) }));
}

function svg(name, attributes = {}) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

/** The mean of points: a line's middle, a note's point, an area's centre. */
function middleOf(points) {
  return points.reduce((s, p) => ({ x: s.x + p.x / points.length, y: s.y + p.y / points.length }), { x: 0, y: 0 });
}

const LABEL_CLEARANCE = 8; // screen pixels between a line's label and the point it is beside
const LABEL_ALONG = [0.5, 0.25, 0.75]; // where along a line its label goes, in that order

/**
 * Where `shape`'s label may go (its text's x and y, the text centred on x), nearest the usual
 * place first, `size` being the text's box around (0, 0): for a line, beside its middle (above
 * a length, below a width), then the other side, then beside points a quarter from its ends,
 * then one label's height (plus `gap`) further out; for an area, centred on its middle, then a
 * label's height above and below it, then two; for a note, above then below its point, then
 * further out. All lie within two labels' height of the shape.
 */
function labelPlaces(shape, size, unit, gap) {
  const [a, b] = shape.points;
  const points = TWO_POINTS.has(shape.kind)
    ? LABEL_ALONG.map((t) => ({ x: a.x + (b.x - a.x) * t, y: a.y + (b.y - a.y) * t }))
    : [middleOf(shape.points)];
  const step = size.height + gap;
  let rows;
  if (shape.kind === "area") {
    const centred = -(size.y + size.height / 2);
    rows = [[centred], [centred - step, centred + step], [centred - 2 * step, centred + 2 * step]];
  } else {
    const above = -LABEL_CLEARANCE * unit - (size.y + size.height);
    const below = LABEL_CLEARANCE * unit - size.y;
    rows = [[above, below], [above - step, below + step]];
    if (shape.kind === "width") rows = rows.map((row) => [...row].reverse());
  }
  return rows.flatMap((row) => points.flatMap((p) => row.map((dy) => ({ x: p.x, y: p.y + dy }))));
}

/** The area in which boxes `a` and `b` ({x, y, width, height}) overlap, each widened by `gap`. */
function overlapOf(a, b, gap) {
  const across = Math.min(a.x + a.width, b.x + b.width) - Math.max(a.x, b.x) + gap;
  const down = Math.min(a.y + a.height, b.y + b.height) - Math.max(a.y, b.y) + gap;
  return across > 0 && down > 0 ? across * down : 0;
}

export class Stage {
  /**
   * @param {HTMLElement} root an empty element that the stage fills
   * @param {import("./viewer-api.js").DicomWeb} api
   * @param {{label?: string, timing?: string, onChange?: Function, onPainted?: Function}} options
   */
  constructor(root, api, options = {}) {
    this.root = root;
    this.api = api;
    this.options = options;
    this.tool = "pan";
    this.scale = 1;
    this.tx = 0;
    this.ty = 0;
    this.image = null;
    this.spacing = null;
    this.resolution = 0;
    this.measurements = [];
    this.stored = [];
    this.draft = null;
    this.pointers = new Map();
    this.gesture = null;
    this.loading = null;

    root.classList.add("stage");
    this.label = document.createElement("div");
    this.label.className = "stage-label";
    this.label.textContent = options.label || "";
    this.frame = document.createElement("div");
    this.frame.className = "frame";
    this.img = document.createElement("img");
    this.img.className = "image";
    this.img.alt = "";
    this.img.draggable = false;
    if (options.timing) this.img.setAttribute("elementtiming", options.timing);
    this.overlay = svg("svg", { class: "overlay", "aria-hidden": "true" });
    this.frame.append(this.img, this.overlay);
    this.status = document.createElement("div");
    this.status.className = "stage-status";
    this.status.textContent = "Loading…";
    root.append(this.frame, this.label, this.status);

    root.addEventListener("pointerdown", (e) => this.pointerDown(e));
    root.addEventListener("pointermove", (e) => this.pointerMove(e));
    root.addEventListener("pointerup", (e) => this.pointerUp(e));
    root.addEventListener("pointercancel", (e) => this.pointers.delete(e.pointerId));
    root.addEventListener("dblclick", (e) => this.doubleClick(e));
    root.addEventListener("wheel", (e) => this.wheel(e), { passive: false });
    new ResizeObserver(() => this.image && this.fit()).observe(root);
  }

  setLabel(text) {
    this.label.textContent = text;
  }

  /**
   * Show an image (its rendering fitted to the stage first). If asked, keep the measurements,
   * moved onto the new image's pixel grid when it shows the same scene (`gridRatio`).
   */
  async show(image, spacing, { keepMeasurements = false } = {}) {
    const ratio = keepMeasurements ? gridRatio(this.image, image) : null;
    this.image = image;
    this.spacing = spacing;
    this.measurements = ratio === null ? [] : scaled(this.measurements, ratio);
    this.stored = [];
    this.draft = null;
    this.frame.style.width = `${image.columns}px`;
    this.frame.style.height = `${image.rows}px`;
    this.overlay.setAttribute("viewBox", `0 0 ${image.columns} ${image.rows}`);
    this.overlay.setAttribute("width", image.columns);
    this.overlay.setAttribute("height", image.rows);
    this.resolution = 0;
    this.fit();
    const box = this.viewport();
    await this.load(`${image.path}/rendered?viewport=${box.width},${box.height}`, box.fitted, image);
    this.changed();
  }

  /** The rendering size for the stage (device pixels, rounded up to 64 so resizes reuse it). */
  viewport() {
    const ratio = window.devicePixelRatio || 1;
    const up = (v) => Math.max(64, Math.ceil((v * ratio) / 64) * 64);
    const width = up(this.root.clientWidth);
    const height = up(this.root.clientHeight);
    const scale = Math.min(width / this.image.columns, height / this.image.rows, 1);
    return { width, height, fitted: Math.round(this.image.columns * scale) };
  }

  async load(path, resolution, image) {
    this.status.hidden = false;
    this.status.textContent = "Loading…";
    const ticket = Symbol("load");
    this.loading = ticket;
    try {
      const url = await this.api.image(path);
      if (this.loading !== ticket || this.image !== image) return;
      const next = new Image();
      next.src = url;
      await next.decode();
      if (this.loading !== ticket || this.image !== image) return;
      this.img.src = url;
      this.resolution = resolution;
      this.status.hidden = true;
      if (this.options.onPainted) requestAnimationFrame(() => this.options.onPainted(this));
      this.maybeSharpen();
    } catch (error) {
      if (this.loading === ticket) this.status.textContent = `Image not available (${error.message})`;
      throw error;
    }
  }

  /** Load the full resolution once the zoom shows more pixels than the loaded rendering. */
  maybeSharpen() {
    if (!this.image || !this.resolution || this.resolution >= this.image.columns) return;
    const needed = this.scale * this.image.columns * (window.devicePixelRatio || 1);
    if (needed > this.resolution * 1.25) {
      this.resolution = this.image.columns; // asked for; not asked again
      this.load(`${this.image.path}/rendered`, this.image.columns, this.image).catch(() => {});
    }
  }

  fitScale() {
    const width = this.root.clientWidth || 1;
    const height = this.root.clientHeight || 1;
    return Math.min(width / this.image.columns, height / this.image.rows);
  }

  fit() {
    if (!this.image) return;
    this.scale = this.fitScale();
    this.tx = (this.root.clientWidth - this.image.columns * this.scale) / 2;
    this.ty = (this.root.clientHeight - this.image.rows * this.scale) / 2;
    this.apply();
  }

  zoomAt(factor, clientX, clientY) {
    if (!this.image) return;
    const rect = this.root.getBoundingClientRect();
    const cx = clientX === undefined ? rect.width / 2 : clientX - rect.left;
    const cy = clientY === undefined ? rect.height / 2 : clientY - rect.top;
    const scale = Math.min(MAX_ZOOM, Math.max(this.fitScale() / 2, this.scale * factor));
    this.tx = cx - ((cx - this.tx) * scale) / this.scale;
    this.ty = cy - ((cy - this.ty) * scale) / this.scale;
    this.scale = scale;
    this.apply();
  }

  apply() {
    this.frame.style.transform = `translate(${this.tx}px, ${this.ty}px) scale(${this.scale})`;
    this.draw();
    this.maybeSharpen();
  }

  setTool(tool) {
    this.tool = tool;
    this.draft = null;
    this.root.dataset.tool = tool;
    this.draw();
  }

  /** Remove every shape drawn and not saved; returns them, for `restore`. */
  clear() {
    const removed = this.measurements;
    this.measurements = [];
    this.draft = null;
    this.changed();
    return removed;
  }

  /**
   * Put back shapes that `clear` removed (or that were drawn on `from`, an earlier rendering of
   * the image now shown, moved onto its pixel grid), before those drawn since.
   */
  restore(shapes, from = this.image) {
    const ratio = gridRatio(from, this.image);
    if (ratio === null) return;
    this.measurements = [...scaled(shapes, ratio), ...this.measurements];
    this.changed();
  }

  /** Measurements stored on the server for this image: [{kind, points, saved}], read-only. */
  setStored(items) {
    this.stored = items;
    this.changed();
  }

  /** Add a shape (e.g. a proposed outline) drawn by the caller; its points are then editable. */
  add(kind, points) {
    this.measurements.push({ kind, points: points.map((p) => this.clamp(p)) });
    this.changed();
  }

  remove(measurement) {
    this.measurements = this.measurements.filter((m) => m !== measurement);
    this.changed();
  }

  /** The drawn lengths, widths and areas, which the server has not measured yet (for Save). */
  unsaved() {
    return this.measurements.filter((m) => MEASURED.has(m.kind));
  }

  clamp(p) {
    const w = this.image ? this.image.columns : Infinity;
    const h = this.image ? this.image.rows : Infinity;
    return { x: Math.min(w, Math.max(0, p.x)), y: Math.min(h, Math.max(0, p.y)) };
  }

  toImage(event) {
    const rect = this.root.getBoundingClientRect();
    return this.clamp({
      x: (event.clientX - rect.left - this.tx) / this.scale,
      y: (event.clientY - rect.top - this.ty) / this.scale,
    });
  }

  /**
   * The editable point under an image point (within HANDLE_PX on screen), or null: of any
   * shape with the pan tool, else of the shapes the current tool draws (an outline is an area).
   */
  handleAt(point) {
    let best = null;
    let bestDistance = HANDLE_PX / this.scale;
    const kind = this.tool === "outline" ? "area" : this.tool;
    for (const m of this.measurements.filter((s) => this.tool === "pan" || s.kind === kind)) {
      m.points.forEach((p, index) => {
        const distance = Math.hypot(p.x - point.x, p.y - point.y);
        if (distance <= bestDistance) {
          best = { m, index };
          bestDistance = distance;
        }
      });
    }
    return best;
  }

  /** The length (drawn or stored) nearest a point: what a width there is perpendicular to. */
  lengthNear(point) {
    const lengths = [...this.measurements, ...this.stored].filter((m) => m.kind === "length");
    let best = null;
    for (const m of lengths) {
      if (!best || distanceToSegment(point, m.points) < distanceToSegment(point, best.points)) best = m;
    }
    return best;
  }

  // --- pointer input -------------------------------------------------------------------------

  pointerDown(event) {
    if (!this.image || event.button > 0) return;
    this.root.setPointerCapture(event.pointerId);
    this.pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
    if (this.pointers.size === 2) {
      const [a, b] = [...this.pointers.values()];
      this.gesture = { kind: "pinch", distance: Math.hypot(a.x - b.x, a.y - b.y) };
      this.draft = null;
      return;
    }
    const start = { x: event.clientX, y: event.clientY, moved: false };
    const point = this.toImage(event);
    const handle = this.draft ? null : this.handleAt(point);
    if (handle) {
      this.gesture = { kind: "handle", ...start, ...handle };
    } else if (this.tool === "pan") {
      this.gesture = { kind: "pan", ...start, tx: this.tx, ty: this.ty };
    } else if (TWO_POINTS.has(this.tool)) {
      if (this.draft && this.draft.waiting) {
        this.draft.points[1] = this.snapped(this.draft, point);
        this.finish();
      } else {
        const ref = this.tool === "width" ? this.lengthNear(point) : null;
        if (this.tool === "width" && !ref) {
          if (this.options.onHint) this.options.onHint("Draw a length first: a width is measured across it.");
          return;
        }
        this.draft = { kind: this.tool, points: [point, point], waiting: false, ref };
        this.gesture = { kind: "line", ...start };
      }
    } else {
      this.gesture = { kind: this.tool, ...start };
    }
    event.preventDefault();
  }

  pointerMove(event) {
    if (this.pointers.has(event.pointerId)) {
      this.pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
    }
    const gesture = this.gesture;
    if (gesture && gesture.kind === "pinch" && this.pointers.size === 2) {
      const [a, b] = [...this.pointers.values()];
      const distance = Math.hypot(a.x - b.x, a.y - b.y);
      this.zoomAt(distance / gesture.distance, (a.x + b.x) / 2, (a.y + b.y) / 2);
      gesture.distance = distance;
      return;
    }
    if (gesture && Math.hypot(event.clientX - gesture.x, event.clientY - gesture.y) > DRAG_PX) {
      gesture.moved = true;
    }
    if (gesture && gesture.kind === "pan") {
      this.tx = gesture.tx + event.clientX - gesture.x;
      this.ty = gesture.ty + event.clientY - gesture.y;
      this.apply();
    } else if (gesture && gesture.kind === "handle") {
      const { m, index } = gesture;
      const point = this.toImage(event);
      m.points[index] = m.kind === "width" && m.ref ? this.clamp(perpendicular(m.points[1 - index], point, m.ref.points)) : point;
      this.changed();
    } else if (this.draft && (TWO_POINTS.has(this.tool) || this.tool === "area")) {
      const points = this.draft.points;
      points[points.length - 1] = this.snapped(this.draft, this.toImage(event));
      this.draw();
    }
  }

  /** A draft's moving point: a width's is kept perpendicular to its length. */
  snapped(draft, point) {
    return draft.kind === "width" && draft.ref ? this.clamp(perpendicular(draft.points[0], point, draft.ref.points)) : point;
  }

  pointerUp(event) {
    this.pointers.delete(event.pointerId);
    const gesture = this.gesture;
    this.gesture = this.pointers.size ? this.gesture : null;
    if (!gesture || gesture.kind === "pinch" || gesture.kind === "pan") return;
    const point = this.toImage(event);
    if (gesture.kind === "line" && this.draft) {
      if (gesture.moved) {
        this.draft.points[1] = this.snapped(this.draft, point);
        this.finish();
      } else {
        this.draft.waiting = true; // click, then click the other end
      }
    } else if (gesture.moved) {
      return;
    } else if (gesture.kind === "area") {
      this.addCorner(point);
    } else if (gesture.kind === "note") {
      const text = this.options.noteText ? this.options.noteText() : "Note";
      this.measurements.push({ kind: "note", points: [point], text });
      this.changed();
    } else if (gesture.kind === "outline" && this.options.onOutline) {
      this.options.onOutline(this, point);
    }
  }

  addCorner(point) {
    if (!this.draft) {
      this.draft = { kind: "area", points: [point, point] };
      this.draw();
      return;
    }
    const points = this.draft.points;
    const firstPoint = points[0];
    const near = Math.hypot(firstPoint.x - point.x, firstPoint.y - point.y) * this.scale < CLOSE_PX;
    if (near && points.length > 3) {
      points.pop();
      this.finish();
      return;
    }
    points[points.length - 1] = point;
    points.push({ ...point });
    this.draw();
  }

  doubleClick(event) {
    if (this.tool === "area" && this.draft && this.draft.points.length > 3) {
      // the double-click's two clicks added two corners at the same place: drop them
      this.draft.points.splice(-2, 2);
      this.finish();
    } else if (this.tool === "pan") {
      this.zoomAt(2, event.clientX, event.clientY);
    }
  }

  wheel(event) {
    if (!this.image) return;
    event.preventDefault();
    this.zoomAt(Math.exp(-event.deltaY * 0.0015), event.clientX, event.clientY);
  }

  cancel() {
    this.draft = null;
    this.draw();
  }

  finish() {
    const draft = this.draft;
    this.draft = null;
    const points = draft.points.map((p) => ({ x: p.x, y: p.y }));
    const valid = TWO_POINTS.has(draft.kind) ? lengthOf(points[0], points[1], null) > 0 : points.length >= 3;
    if (valid) this.measurements.push({ kind: draft.kind, points, ref: draft.ref || undefined });
    this.changed();
  }

  /**
   * Measurements with their values: stored ones first (the server's values, with their
   * uncertainty), then those drawn here (a preview in the stage's calibration).
   */
  results() {
    const counts = {};
    const calibrated = Boolean(this.spacing);
    const names = { length: ["Length", "L"], width: ["Width", "W"], area: ["Area", "A"], arrow: ["Arrow", ""], note: ["Note", ""] };
    return [...this.stored, ...this.measurements].map((m) => {
      counts[m.kind] = (counts[m.kind] || 0) + 1;
      const [long, short] = names[m.kind];
      const result = { ...m, shape: m, name: `${long} ${counts[m.kind]}`, saved: m.saved || null, value: null, perimeter: null, text: "", label: "" };
      if (m.kind === "note") return { ...result, text: m.text, label: m.text };
      if (m.kind === "arrow") return result;
      const tag = `${short}${counts[m.kind]}`;
      if (m.saved) {
        const v = m.saved.values[m.kind];
        const perimeter = m.saved.values.perimeter;
        let text = `${formatMeasurement(m.kind, v.value, true)} ± ${v.uncertainty.toFixed(1)} ${m.kind === "area" ? "mm²" : "mm"}`;
        if (perimeter) text += `, perimeter ${perimeter.value.toFixed(1)} ± ${perimeter.uncertainty.toFixed(1)} mm`;
        const warned = m.saved.warnings.length ? " ⚠" : ""; // the list says which
        return { ...result, value: v.value, perimeter: perimeter ? perimeter.value : null, text, label: `${tag} ${formatMeasurement(m.kind, v.value, true).split(" (")[0]}${warned}` };
      }
      const value = m.kind === "area" ? areaOf(m.points, this.spacing) : lengthOf(m.points[0], m.points[1], this.spacing);
      const perimeter = m.kind === "area" ? perimeterOf(m.points, this.spacing) : null;
      const compact = m.kind === "area" && calibrated && value >= 100 ? `${(value / 100).toFixed(1)} cm²` : formatMeasurement(m.kind, value, calibrated);
      let text = formatMeasurement(m.kind, value, calibrated);
      if (perimeter !== null) text += `, perimeter ${formatMeasurement("length", perimeter, calibrated)}`;
      return { ...result, value, perimeter, text, label: `${tag} ${compact}` };
    });
  }

  changed() {
    this.draw();
    if (this.options.onChange) this.options.onChange(this);
  }

  // --- drawing ---------------------------------------------------------------------------------

  draw() {
    const overlay = this.overlay;
    overlay.replaceChildren();
    if (!this.image) return;
    const unit = 1 / this.scale; // one screen pixel in image pixels
    const room = this.labelRoom(unit);
    const placed = []; // the boxes of the labels drawn so far
    const shapes = this.results().map((r) => ({ ...r, draft: false }));
    if (this.draft) shapes.push({ kind: this.draft.kind, points: this.draft.points, draft: true, label: "" });
    for (const shape of shapes) {
      const group = svg("g", { class: `m-${shape.kind}${shape.draft ? " m-draft" : ""}${shape.saved ? " m-saved" : ""}` });
      const stroke = { "stroke-width": 2 * unit };
      if (shape.draft) stroke["stroke-dasharray"] = `${6 * unit} ${4 * unit}`;
      if (TWO_POINTS.has(shape.kind)) {
        const [a, b] = shape.points;
        group.append(svg("line", { x1: a.x, y1: a.y, x2: b.x, y2: b.y, ...stroke }));
        if (shape.kind === "arrow") {
          const angle = Math.atan2(b.y - a.y, b.x - a.x);
          const head = (turn) => `${b.x - 14 * unit * Math.cos(angle + turn)},${b.y - 14 * unit * Math.sin(angle + turn)}`;
          group.append(svg("polyline", { points: `${head(0.45)} ${b.x},${b.y} ${head(-0.45)}`, ...stroke }));
        }
      } else if (shape.kind !== "note") {
        const coords = shape.points.map((p) => `${p.x},${p.y}`).join(" ");
        group.append(svg(shape.draft ? "polyline" : "polygon", { points: coords, ...stroke }));
      }
      const radius = shape.saved ? 3 : shape.points.length > 12 ? 4 : 6; // an outline has many
      for (const p of shape.points) group.append(svg("circle", { cx: p.x, cy: p.y, r: radius * unit }));
      overlay.append(group);
      if (shape.label) this.drawLabel(group, shape, unit, room, placed);
    }
  }

  /**
   * The part of the image shown, in image pixels: inside the stage, which clips the frame
   * (at the toolbar above it, and around).
   */
  visibleArea() {
    return {
      left: Math.max(0, -this.tx / this.scale),
      top: Math.max(0, -this.ty / this.scale),
      right: Math.min(this.image.columns, (this.root.clientWidth - this.tx) / this.scale),
      bottom: Math.min(this.image.rows, (this.root.clientHeight - this.ty) / this.scale),
    };
  }

  /**
   * Where labels go, in image pixels: `seen`, the visible area, and `area`, the part of it
   * below the stage's label and calibration chips, less the labels' outline.
   */
  labelRoom(unit) {
    const seen = this.visibleArea();
    // the chips share one row along the stage's top (same offset, font and padding)
    const chips = this.label.offsetParent ? this.label.offsetTop + this.label.offsetHeight : 0;
    const margin = 2 * unit; // the text's outline, drawn outside its box
    const area = {
      left: seen.left + margin,
      top: Math.max(seen.top, (chips - this.ty) / this.scale) + margin,
      right: seen.right - margin,
      bottom: seen.bottom - margin,
    };
    return { seen, area };
  }

  /**
   * Append `shape`'s label to `group` (in the overlay), 15 screen pixels high, at one of its
   * places (`labelPlaces`, near the shape): the first that overlaps no label in `placed` (with
   * a gap for their outlines) and need not be moved up or down into `room.area`; else the
   * first overlapping none; else the one overlapping least. When its shape's middle is in
   * `room.seen`, the label is guaranteed to lie wholly inside `room.area` (as far as it fits):
   * a place sticking out is moved inside; otherwise it is at its usual place. Adds the label's
   * box to `placed`, so the same shapes in the same view are always labelled alike.
   */
  drawLabel(group, shape, unit, room, placed) {
    const label = svg("text", {
      x: 0, y: 0, "font-size": 15 * unit, "stroke-width": 3 * unit, "text-anchor": "middle", "dominant-baseline": "middle",
    });
    label.textContent = shape.label;
    group.append(label);
    const size = label.getBBox(); // around (0, 0)
    const gap = 4 * unit; // two labels' outlines, drawn outside their boxes
    const { seen, area } = room;
    const middle = middleOf(shape.points);
    const inView = middle.x >= seen.left && middle.x <= seen.right && middle.y >= seen.top && middle.y <= seen.bottom;
    // moved inside; one too large for the area starts at its left or top
    const into = (start, extent, low, high) => (inView ? Math.max(low - start, Math.min(0, high - start - extent)) : 0);
    let best = null;
    for (const place of labelPlaces(shape, size, unit, gap)) {
      const x = place.x + into(place.x + size.x, size.width, area.left, area.right);
      const y = place.y + into(place.y + size.y, size.height, area.top, area.bottom);
      const box = { x: x + size.x, y: y + size.y, width: size.width, height: size.height };
      const overlap = placed.reduce((sum, other) => sum + overlapOf(box, other, gap), 0);
      const moved = y !== place.y;
      if (!best || overlap < best.overlap || (overlap === best.overlap && best.moved && !moved)) {
        best = { x, y, box, overlap, moved };
      }
      if (!inView || (overlap === 0 && !moved)) break;
    }
    label.setAttribute("x", best.x);
    label.setAttribute("y", best.y);
    placed.push(best.box);
  }
}
