/**
 * A photo full screen, to check it before sending: pinch to zoom and drag to pan (pointer
 * events), double-tap (or double-click) to zoom in and back, the wheel on a desktop, and + / −
 * buttons for everyone else; Close or Escape closes it. The photo is drawn into a canvas (no
 * <img>, no link: nothing to save it from) and dropped when the view closes.
 * @module photo-view
 */

const MAX_SCALE = 8;
const DOUBLE_TAP_SCALE = 2.5;
const STEP = 1.5;
/** A second tap within this time and distance is a double tap. */
const DOUBLE_TAP_MS = 300;
const DOUBLE_TAP_PX = 30;

/**
 * The full-screen view in `dialog`: it holds `[data-stage]` (with a `canvas` inside),
 * `[data-zoom-in]`, `[data-zoom-out]`, `[data-close]` and `[data-title]`.
 */
export class PhotoView {
  #dialog;
  #stage;
  #canvas;
  #title;
  #scale = 1;
  #x = 0;
  #y = 0;
  /** Pointers down on the stage: id → last position. */
  #pointers = new Map();
  #lastTap = null;
  #moved = false;

  /** @param {HTMLDialogElement} dialog */
  constructor(dialog) {
    this.#dialog = dialog;
    this.#stage = dialog.querySelector("[data-stage]");
    this.#canvas = this.#stage.querySelector("canvas");
    this.#title = dialog.querySelector("[data-title]");
    dialog.querySelector("[data-zoom-in]").addEventListener("click", () => this.#zoomBy(STEP));
    dialog.querySelector("[data-zoom-out]").addEventListener("click",
      () => this.#zoomBy(1 / STEP));
    dialog.querySelector("[data-close]").addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => {
      this.#canvas.width = 0;  // the photo's pixels go with the view
      this.#pointers.clear();
    });
    const stage = this.#stage;
    stage.addEventListener("pointerdown", (event) => this.#down(event));
    stage.addEventListener("pointermove", (event) => this.#move(event));
    for (const type of ["pointerup", "pointercancel"]) {
      stage.addEventListener(type, (event) => this.#up(event));
    }
    stage.addEventListener("wheel", (event) => {
      event.preventDefault();
      this.#zoomBy(event.deltaY < 0 ? 1.1 : 1 / 1.1, this.#fromCentre(event));
    }, { passive: false });
  }

  /**
   * Show `bitmap` full screen, fitted to the screen.
   * @param {ImageBitmap} bitmap
   * @param {string} title what the photo is, e.g. "Photo 2"
   */
  open(bitmap, title) {
    this.#canvas.width = bitmap.width;
    this.#canvas.height = bitmap.height;
    this.#canvas.getContext("2d").drawImage(bitmap, 0, 0);
    this.#canvas.setAttribute("aria-label", title);
    this.#title.textContent = title;
    this.#dialog.showModal();
    this.#fit();
  }

  /** @returns {number} the zoom now (1: the whole photo fits the screen) */
  get scale() {
    return this.#scale;
  }

  /** Size the canvas to fit the stage, unzoomed. */
  #fit() {
    const { width, height } = this.#stage.getBoundingClientRect();
    const fit = Math.min(width / this.#canvas.width, height / this.#canvas.height);
    this.#canvas.style.width = `${this.#canvas.width * fit}px`;
    this.#canvas.style.height = `${this.#canvas.height * fit}px`;
    this.#scale = 1;
    this.#x = 0;
    this.#y = 0;
    this.#draw();
  }

  /** A pointer's position from the stage's centre. */
  #fromCentre(event) {
    const box = this.#stage.getBoundingClientRect();
    return { x: event.clientX - box.left - box.width / 2,
      y: event.clientY - box.top - box.height / 2 };
  }

  /**
   * Zoom by `factor` keeping the point `at` (from the stage's centre) where it is.
   * @param {number} factor
   * @param {{x: number, y: number}} [at]
   */
  #zoomBy(factor, at = { x: 0, y: 0 }) {
    const scale = Math.min(MAX_SCALE, Math.max(1, this.#scale * factor));
    const ratio = scale / this.#scale;
    this.#x = at.x - (at.x - this.#x) * ratio;
    this.#y = at.y - (at.y - this.#y) * ratio;
    this.#scale = scale;
    this.#draw();
  }

  /** Keep the photo over the stage (no panning it out of sight), then show it so. */
  #draw() {
    const stage = this.#stage.getBoundingClientRect();
    const spareX = Math.max(0, (this.#canvas.offsetWidth * this.#scale - stage.width) / 2);
    const spareY = Math.max(0, (this.#canvas.offsetHeight * this.#scale - stage.height) / 2);
    this.#x = Math.min(spareX, Math.max(-spareX, this.#x));
    this.#y = Math.min(spareY, Math.max(-spareY, this.#y));
    this.#canvas.style.transform =
      `translate(${this.#x}px, ${this.#y}px) scale(${this.#scale})`;
    this.#dialog.dataset.scale = this.#scale.toFixed(2);
  }

  #down(event) {
    this.#stage.setPointerCapture(event.pointerId);
    this.#pointers.set(event.pointerId, this.#fromCentre(event));
    this.#moved = this.#pointers.size > 1;
  }

  #move(event) {
    const before = this.#pointers.get(event.pointerId);
    if (!before) return;
    const now = this.#fromCentre(event);
    if (Math.hypot(now.x - before.x, now.y - before.y) > 2) this.#moved = true;
    if (this.#pointers.size === 1) {
      this.#x += now.x - before.x;
      this.#y += now.y - before.y;
      this.#pointers.set(event.pointerId, now);
      this.#draw();
      return;
    }
    const [a, b] = [...this.#pointers.entries()].filter(([id]) => id !== event.pointerId)
      .map(([, p]) => p).concat([before]);
    const midBefore = { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
    const midNow = { x: (a.x + now.x) / 2, y: (a.y + now.y) / 2 };
    const spread = Math.hypot(b.x - a.x, b.y - a.y);
    this.#pointers.set(event.pointerId, now);
    this.#x += midNow.x - midBefore.x;
    this.#y += midNow.y - midBefore.y;
    if (spread > 0) this.#zoomBy(Math.hypot(now.x - a.x, now.y - a.y) / spread, midNow);
    else this.#draw();
  }

  #up(event) {
    const at = this.#pointers.get(event.pointerId);
    if (!this.#pointers.delete(event.pointerId) || this.#moved || event.type !== "pointerup") {
      if (this.#pointers.size === 0) this.#moved = false;
      return;
    }
    const last = this.#lastTap;
    const now = performance.now();
    if (last && now - last.at < DOUBLE_TAP_MS
        && Math.hypot(at.x - last.x, at.y - last.y) < DOUBLE_TAP_PX) {
      this.#lastTap = null;
      if (this.#scale > 1) this.#zoomBy(1 / this.#scale);
      else this.#zoomBy(DOUBLE_TAP_SCALE, at);
    } else {
      this.#lastTap = { ...at, at: now };
    }
  }
}
