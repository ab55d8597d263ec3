/**
 * Camera controls where the browser and the camera have them: torch, zoom, tap to focus and
 * expose (MediaStreamTrack capabilities and applyConstraints), each hidden where unsupported;
 * and the shutter's short burst that keeps the sharpest frame.
 * @module camera-controls
 */

import { grabFrame } from "./camera.js";
import { sharpness } from "./quality.js";

/** Frames in a burst, and the pause between them. */
export const BURST_FRAMES = 3;
const BURST_GAP_MS = 100;

/**
 * What a camera track offers, from its capabilities (MediaStreamTrack.getCapabilities()) and
 * the browser's supported constraints.
 * @param {object} capabilities
 * @param {object} [supported] navigator.mediaDevices.getSupportedConstraints()
 * @returns {{torch: boolean, zoom: {min: number, max: number, step: number}|null,
 *   focus: {focusMode?: string, exposureMode?: string}|null}} `focus`: the constraints a tap
 *   applies with its point (null: no tap to focus)
 */
export function controlsOf(capabilities, supported = {}) {
  const caps = capabilities || {};
  const torch = caps.torch === true || (Array.isArray(caps.torch) && caps.torch.includes(true));
  const z = caps.zoom;
  const zoom = z && Number.isFinite(z.min) && Number.isFinite(z.max) && z.max > z.min
    ? { min: z.min, max: z.max, step: z.step > 0 ? z.step : (z.max - z.min) / 100 } : null;
  /** The mode a tap sets: focus (or expose) once at the point, else keep doing so there. */
  const tapMode = (modes) => ["single-shot", "continuous"]
    .find((mode) => Array.isArray(modes) && modes.includes(mode));
  const focus = {};
  const focusMode = tapMode(caps.focusMode);
  const exposureMode = tapMode(caps.exposureMode);
  if (focusMode) focus.focusMode = focusMode;
  if (exposureMode) focus.exposureMode = exposureMode;
  const pointable = Boolean(supported.pointsOfInterest) && Object.keys(focus).length > 0;
  return { torch, zoom, focus: pointable ? focus : null };
}

/**
 * Where a tap on `video` falls in the picture, as fractions of its width and height (the
 * picture is letterboxed by object-fit: contain); null outside the picture.
 * @param {HTMLVideoElement} video
 * @param {number} clientX
 * @param {number} clientY
 * @returns {{x: number, y: number}|null}
 */
export function pointIn(video, clientX, clientY) {
  const box = video.getBoundingClientRect();
  const scale = Math.min(box.width / video.videoWidth, box.height / video.videoHeight);
  const width = video.videoWidth * scale;
  const height = video.videoHeight * scale;
  const x = (clientX - box.left - (box.width - width) / 2) / width;
  const y = (clientY - box.top - (box.height - height) / 2) / height;
  return x >= 0 && x <= 1 && y >= 0 && y <= 1 ? { x, y } : null;
}

/**
 * The controls of one camera screen. `attach()` once the stream runs (shows the controls the
 * track has), `detach()` when it stops (hides them all).
 */
export class CameraControls {
  #video;
  #torch;
  #zoom;
  #zoomBox;
  #marker;
  #track = null;
  #focus = null;

  /**
   * @param {HTMLVideoElement} video the camera view (tapped to focus)
   * @param {{torch: HTMLButtonElement, zoom: HTMLInputElement, zoomBox: HTMLElement,
   *   marker: HTMLElement}} elements the torch toggle, the zoom slider and what holds it
   *   with its label, and the mark shown where a tap focused
   */
  constructor(video, { torch, zoom, zoomBox, marker }) {
    this.#video = video;
    this.#torch = torch;
    this.#zoom = zoom;
    this.#zoomBox = zoomBox;
    this.#marker = marker;
    torch.addEventListener("click", () => this.#toggleTorch());
    zoom.addEventListener("input", () => this.#apply({ zoom: Number(zoom.value) }));
    video.addEventListener("click", (event) => this.#focusAt(event));
    this.detach();
  }

  /** Show the controls the running camera track supports, set to its current settings. */
  attach() {
    const stream = this.#video.srcObject;
    const track = stream && stream.getVideoTracks()[0];
    if (!track || typeof track.getCapabilities !== "function") return;
    this.#track = track;
    const supported = navigator.mediaDevices.getSupportedConstraints
      ? navigator.mediaDevices.getSupportedConstraints() : {};
    const { torch, zoom, focus } = controlsOf(track.getCapabilities(), supported);
    const settings = track.getSettings ? track.getSettings() : {};
    this.#torch.hidden = !torch;
    this.#torch.setAttribute("aria-pressed", String(Boolean(settings.torch)));
    this.#zoomBox.hidden = !zoom;
    if (zoom) {
      Object.assign(this.#zoom, { min: zoom.min, max: zoom.max, step: zoom.step });
      this.#zoom.value = String(settings.zoom ?? zoom.min);
    }
    this.#focus = focus;
    this.#video.classList.toggle("tap-focus", Boolean(focus));
  }

  /** Hide every control (the camera stopped). */
  detach() {
    this.#track = null;
    this.#focus = null;
    this.#torch.hidden = true;
    this.#zoomBox.hidden = true;
    this.#marker.hidden = true;
    this.#video.classList.remove("tap-focus");
  }

  /** Apply advanced constraints; a camera that refuses them leaves the picture as it was. */
  async #apply(constraints) {
    if (!this.#track) return false;
    try {
      await this.#track.applyConstraints({ advanced: [constraints] });
      return true;
    } catch {
      return false;
    }
  }

  async #toggleTorch() {
    const on = this.#torch.getAttribute("aria-pressed") !== "true";
    if (await this.#apply({ torch: on })) this.#torch.setAttribute("aria-pressed", String(on));
  }

  async #focusAt(event) {
    if (!this.#focus) return;
    const point = pointIn(this.#video, event.clientX, event.clientY);
    if (!point) return;
    const marker = this.#marker;
    marker.hidden = false;  // first: a hidden element has no offsetParent
    const parent = (marker.offsetParent || this.#video).getBoundingClientRect();
    marker.style.left = `${event.clientX - parent.left}px`;
    marker.style.top = `${event.clientY - parent.top}px`;
    await this.#apply({ pointsOfInterest: [point], ...this.#focus });
    setTimeout(() => { marker.hidden = true; }, 1200);
  }
}

/**
 * A short burst: {@link BURST_FRAMES} frames of `video` about 100 ms apart; the sharpest kept
 * (quality.js `sharpness`, the metric the server uses), the others freed at once.
 * @param {HTMLVideoElement} video
 * @returns {Promise<{canvas: HTMLCanvasElement, frames: number}>} the kept frame at full
 *   resolution, and how many frames were compared
 */
export async function sharpestOf(video) {
  let best = null;
  let bestScore = -Infinity;
  for (let i = 0; i < BURST_FRAMES; i += 1) {
    if (i) await new Promise((resolve) => setTimeout(resolve, BURST_GAP_MS));
    const frame = grabFrame(video);
    const score = sharpness(frame);
    if (score > bestScore) {
      if (best) best.width = 0;  // frees its pixels now, not at the next collection
      best = frame;
      bestScore = score;
    } else {
      frame.width = 0;
    }
  }
  return { canvas: best, frames: BURST_FRAMES };
}
