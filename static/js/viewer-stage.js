// A zoomable, pannable photograph with a measuring overlay.
//
// The frame is laid out at the image's full pixel size (Columns × Rows CSS pixels) and scaled
// by a CSS transform, so the SVG overlay works in image pixel coordinates whatever the zoom and
// whatever resolution of the image is loaded: first one fitted to the stage, the full
// resolution once the user zooms past it. Lengths and areas are computed in image pixels and
// converted with Pixel Spacing (row, column) when the image has it.

import { gridRatio } from "./viewer-dicom.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const MAX_ZOOM = 8; // screen pixels per image pixel
const CLOSE_PX = 10; // a click this close to an area's first corner closes it
const DRAG_PX = 4; // movement below this is a click

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
  if (kind === "length") return calibrated ? `${value.toFixed(1)} mm` : `${Math.round(value)} px`;
  if (!calibrated) return `${Math.round(value)} px²`;
  return value >= 100 ? `${Math.round(value)} mm² (${(value / 100).toFixed(1)} cm²)` : `${value.toFixed(1)} mm²`;
}

function svg(name, attributes = {}) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
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
    this.measurements = ratio === null ? [] : this.measurements.map((m) => ({
      kind: m.kind, points: m.points.map((p) => ({ x: p.x * ratio, y: p.y * ratio })),
    }));
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

  clear() {
    this.measurements = [];
    this.draft = null;
    this.changed();
  }

  toImage(event) {
    const rect = this.root.getBoundingClientRect();
    return {
      x: (event.clientX - rect.left - this.tx) / this.scale,
      y: (event.clientY - rect.top - this.ty) / this.scale,
    };
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
    if (this.tool === "pan") {
      this.gesture = { kind: "pan", ...start, tx: this.tx, ty: this.ty };
    } else if (this.tool === "length") {
      const point = this.toImage(event);
      if (this.draft && this.draft.waiting) {
        this.draft.points[1] = point;
        this.finish();
      } else {
        this.draft = { kind: "length", points: [point, point], waiting: false };
        this.gesture = { kind: "length", ...start };
      }
    } else {
      this.gesture = { kind: "area", ...start };
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
    } else if (this.draft && (this.tool === "length" || this.tool === "area")) {
      const points = this.draft.points;
      points[points.length - 1] = this.toImage(event);
      this.draw();
    }
  }

  pointerUp(event) {
    this.pointers.delete(event.pointerId);
    const gesture = this.gesture;
    this.gesture = this.pointers.size ? this.gesture : null;
    if (!gesture || gesture.kind === "pinch" || gesture.kind === "pan") return;
    const point = this.toImage(event);
    if (gesture.kind === "length" && this.draft) {
      if (gesture.moved) {
        this.draft.points[1] = point;
        this.finish();
      } else {
        this.draft.waiting = true; // click, then click the other end
      }
    } else if (gesture.kind === "area" && !gesture.moved) {
      this.addCorner(point);
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
    const valid = draft.kind === "length" ? lengthOf(points[0], points[1], null) > 0 : points.length >= 3;
    if (valid) this.measurements.push({ kind: draft.kind, points });
    this.changed();
  }

  /** Measurements with their values, in the stage's calibration. */
  results() {
    let lengths = 0;
    let areas = 0;
    return this.measurements.map((m) => {
      const value = m.kind === "length" ? lengthOf(m.points[0], m.points[1], this.spacing) : areaOf(m.points, this.spacing);
      const index = m.kind === "length" ? (lengths += 1) : (areas += 1);
      const name = m.kind === "length" ? `Length ${index}` : `Area ${index}`;
      const calibrated = Boolean(this.spacing);
      const short = m.kind === "area" && calibrated && value >= 100 ? `${(value / 100).toFixed(1)} cm²` : formatMeasurement(m.kind, value, calibrated);
      return { ...m, name, value, text: formatMeasurement(m.kind, value, calibrated), label: `${m.kind === "length" ? "L" : "A"}${index} ${short}` };
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
    const shapes = this.results().map((r) => ({ ...r, draft: false }));
    if (this.draft) shapes.push({ kind: this.draft.kind, points: this.draft.points, draft: true, label: "" });
    for (const shape of shapes) {
      const group = svg("g", { class: `m-${shape.kind}${shape.draft ? " m-draft" : ""}` });
      const stroke = { "stroke-width": 2 * unit };
      if (shape.draft) stroke["stroke-dasharray"] = `${6 * unit} ${4 * unit}`;
      if (shape.kind === "length") {
        const [a, b] = shape.points;
        group.append(svg("line", { x1: a.x, y1: a.y, x2: b.x, y2: b.y, ...stroke }));
      } else {
        const coords = shape.points.map((p) => `${p.x},${p.y}`).join(" ");
        group.append(svg(shape.draft ? "polyline" : "polygon", { points: coords, ...stroke }));
      }
      for (const p of shape.points) group.append(svg("circle", { cx: p.x, cy: p.y, r: 4 * unit }));
      if (shape.label) {
        const n = shape.points.length;
        const anchor = shape.points.reduce((s, p) => ({ x: s.x + p.x / n, y: s.y + p.y / n }), { x: 0, y: 0 });
        const label = svg("text", {
          x: anchor.x,
          y: anchor.y - (shape.kind === "length" ? 10 * unit : 0),
          "font-size": 15 * unit,
          "stroke-width": 3 * unit,
          "text-anchor": "middle",
          "dominant-baseline": shape.kind === "length" ? "auto" : "middle",
        });
        label.textContent = shape.label;
        group.append(label);
      }
      overlay.append(group);
    }
  }
}
