/**
 * Live guidance on the camera screen: about once a second a small preview frame (longest side
 * ≤ 640 px, JPEG) goes to POST /api/v1/guidance, and its answer shows as a row of icons (one per
 * check: chart, distance, tilt, sharpness, exposure, glare) and one short line of advice.
 *
 * It never holds up the shutter: frames are copied from the <video> and sent in the background,
 * at most one request at a time. A 429 waits the answer's Retry-After; other failures back off
 * (the interval doubles up to 10 s, and resets on success). Nothing is sent while the page is
 * hidden or the device offline. Frames are never kept.
 * @module guidance
 */

import { ApiError, call } from "./api.js";
import { toJpeg } from "./camera.js";
import { h } from "./ui.js";

/** How often a frame is sent while answers come back. */
const EVERY_MS = 1000;
/** The longest wait between frames after failures. */
const MAX_EVERY_MS = 10000;
/** A frame not answered in this time counts as a failure (backs off), so a hung request cannot
 * stop guidance for good. */
const TIMEOUT_MS = 5000;
/** The longest side of a preview frame (the server refuses larger ones). */
const FRAME_SIDE = 640;
/** JPEG quality of a preview frame: small and quick, detail enough for blur and the chart. */
const FRAME_QUALITY = 0.7;

/** The checks in the order the server gives them, with their names and icons (24×24 paths). */
const CHECKS = [
  { id: "chart", name: "Colour chart", icon: "M3 6h18v12H3z M9 6v12 M15 6v12 M3 12h18" },
  { id: "distance", name: "Distance", icon: "M3 12h18 M7 8l-4 4 4 4 M17 8l4 4-4 4" },
  { id: "tilt", name: "Tilt", icon: "M4 19h16 M4 19L15 5 M10 19a6 6 0 0 0-2.3-4.7" },
  { id: "sharpness", name: "Sharpness",
    icon: "M12 4a8 8 0 1 0 0 16a8 8 0 1 0 0-16z M12 9a3 3 0 1 0 0 6a3 3 0 1 0 0-6z" },
  { id: "exposure", name: "Exposure", icon: "M12 8a4 4 0 1 0 0 8a4 4 0 1 0 0-8z M12 2v3 " +
    "M12 19v3 M2 12h3 M19 12h3 M4.9 4.9l2.1 2.1 M17 17l2.1 2.1 M4.9 19.1L7 17 M17 7l2.1-2.1" },
  { id: "glare", name: "Glare", icon: "M12 3l2 7 7 2-7 2-2 7-2-7-7-2 7-2z" },
];

const OFFLINE = "Guidance unavailable offline";

/**
 * A copy of the current frame of `video`, its longest side at most {@link FRAME_SIDE}, as JPEG.
 * @param {HTMLVideoElement} video
 * @returns {Promise<Blob>}
 */
function previewOf(video) {
  const scale = Math.min(1, FRAME_SIDE / Math.max(video.videoWidth, video.videoHeight));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.floor(video.videoWidth * scale));
  canvas.height = Math.max(1, Math.floor(video.videoHeight * scale));
  const context = canvas.getContext("2d");
  context.imageSmoothingQuality = "high";  // an area average, as the server reduces: no aliasing
  context.drawImage(video, 0, 0, canvas.width, canvas.height);
  return toJpeg(canvas, FRAME_QUALITY);
}

/** An icon: an inline SVG of stroked paths (no image request, allowed by the CSP). */
function icon(path) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const shape = document.createElementNS("http://www.w3.org/2000/svg", "path");
  shape.setAttribute("d", path);
  svg.append(shape);
  return svg;
}

/**
 * The state of a check as shown, and the words a screen reader says for it.
 * @param {{id: string, name: string}} check
 * @param {{ok: boolean|null, text?: string}|undefined} answer the server's word on it
 * @returns {{state: "ok"|"warn"|"unknown", label: string}}
 */
function shown(check, answer) {
  const ok = answer ? answer.ok : null;
  const state = ok === true ? "ok" : ok === false ? "warn" : "unknown";
  const fallback = { ok: "good", warn: "check", unknown: "not measurable" }[state];
  return { state, label: `${check.name}: ${(answer && answer.text) || fallback}` };
}

/**
 * The guidance of one camera screen. `start()` when the camera shows, `stop()` when it closes;
 * `latest` is the last answer (kept after stop, e.g. its `chart.px_per_mm` for the review).
 */
export class Guidance {
  #video;
  #root;
  #checks;
  #advice;
  #active = false;
  #inFlight = false;
  #timer = null;
  #interval = EVERY_MS;
  #notBefore = 0;
  /** Bumped by stop(): an answer to an older run is dropped. */
  #run = 0;
  /** @type {object|null} the last answer of the server (see the guidance API), or null */
  latest = null;

  /**
   * @param {HTMLVideoElement} video the camera view
   * @param {HTMLElement} root holds `[data-guidance-checks]` (the icons) and
   *   `[data-guidance-advice]` (the line, aria-live polite)
   */
  constructor(video, root) {
    this.#video = video;
    this.#root = root;
    this.#checks = root.querySelector("[data-guidance-checks]");
    this.#advice = root.querySelector("[data-guidance-advice]");
    const wake = () => this.#wake();
    document.addEventListener("visibilitychange", wake);
    window.addEventListener("online", wake);
    window.addEventListener("offline", wake);
  }

  /** Start sending frames (the camera screen shows). */
  start() {
    if (this.#active) return;
    this.#active = true;
    this.#interval = EVERY_MS;
    this.#root.hidden = false;
    this.#schedule(0);
  }

  /** Stop sending frames and clear the row (the camera screen closed). */
  stop() {
    this.#active = false;
    this.#run += 1;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#clear();
    this.#root.hidden = true;
  }

  #schedule(ms) {
    clearTimeout(this.#timer);
    this.#notBefore = Date.now() + ms;
    this.#timer = setTimeout(() => this.#tick(), ms);
  }

  /** The page shows again, or the network changed: go on, keeping any wait still due. */
  #wake() {
    if (this.#active && !this.#inFlight) {
      this.#schedule(Math.max(0, this.#notBefore - Date.now()));
    }
  }

  async #tick() {
    this.#timer = null;
    if (!this.#active || this.#inFlight || document.hidden) return;  // visibilitychange wakes
    if (!navigator.onLine) {
      this.#clear(OFFLINE);
      return;  // "online" wakes
    }
    const video = this.#video;
    if (!video.videoWidth) {
      this.#schedule(EVERY_MS);
      return;
    }
    const run = this.#run;
    let wait;
    this.#inFlight = true;
    try {
      const frame = await previewOf(video);
      const { body } = await call("POST",
        `/api/v1/guidance?photo_width=${video.videoWidth}`, frame, { timeoutMs: TIMEOUT_MS });
      if (run !== this.#run) return;
      this.#interval = EVERY_MS;
      this.latest = body;
      this.#show(body);
      wait = EVERY_MS;
    } catch (error) {
      if (run !== this.#run) return;
      if (error instanceof ApiError && error.status === 429) {
        wait = 1000 * Math.max(1, error.retryAfter || this.#interval / 1000);
      } else {
        this.#interval = Math.min(MAX_EVERY_MS, this.#interval * 2);
        wait = this.#interval;
        this.#clear(navigator.onLine ? "" : OFFLINE);
      }
    } finally {
      this.#inFlight = false;
      // a stop() and start() while this request ran: the new run begins now
      if (this.#active) this.#schedule(run === this.#run ? wait : 0);
    }
  }

  /** Show an answer; the advice line changes only when its words do (it is aria-live). */
  #show(answer) {
    const byId = new Map((answer.checks || []).map((c) => [c.id, c]));
    this.#checks.replaceChildren(...CHECKS.map((check) => {
      const { state, label } = shown(check, byId.get(check.id));
      return h("span", { class: "guidance-check", role: "img", "aria-label": label,
        title: label, "data-check": check.id, "data-state": state }, icon(check.icon));
    }));
    this.#say(answer.advice || "");
  }

  /** Show no answer, and `message` (if any) as the line. */
  #clear(message = "") {
    this.#checks.replaceChildren();
    this.#say(message);
  }

  #say(message) {
    if (this.#advice.textContent !== message) this.#advice.textContent = message;
  }
}
