/**
 * The prior photo as a guide (issue 16): when the camera opens for an identified patient and a
 * body site, the latest earlier photo of that site (POST /api/v1/prior, online only) is laid
 * over the live picture as an onion skin — shown or hidden, its opacity, or only its outline
 * (Sobel edges) — so the new photo can be framed like the last one; the review screen shows the
 * newest photo beside it, at the same scale (mm per screen pixel) when both have a chart.
 *
 * The image lives in memory only: an ImageBitmap (closed by `releasePrior`, when the capture
 * ends) and the outline canvas; never IndexedDB, never Cache Storage (the request is a POST,
 * which the service worker never caches; the answer is `no-store`). The overlay takes no
 * pointer events: the video and the shutter stay usable beneath it.
 * @module prior
 */

import { postForImage } from "./api.js";
import { byId, h, say } from "./ui.js";

/** The outline: edges stronger than this share of the prior's pixels are drawn. */
const EDGE_QUANTILE = 0.9;
/** The outline is computed on the prior reduced to this longest side (quick, and plenty). */
const EDGE_SIDE = 640;
/** The colour of the outline's lines (visible on skin, dressings and dark backgrounds). */
const EDGE_RGB = [255, 232, 0];
/** The gap between the two photos of the review comparison (CSS px, as in app.css). */
const GAP = 8;

/**
 * What is held about the prior of the current capture.
 * @type {{key: string|null, ticket: number, image: ImageBitmap|null, outline: HTMLCanvasElement|null,
 *   taken: string|null, pxPerMm: number|null, shown: boolean, outlined: boolean, opacity: number}}
 */
const held = { key: null, ticket: 0, image: null, outline: null, taken: null, pxPerMm: null,
  shown: true, outlined: false, opacity: 0.5 };

let mounted = null;

/** The overlay, its controls and the review comparison, made once and put in the page. */
function mount() {
  if (mounted) return mounted;
  const overlay = h("canvas", { id: "prior-overlay", class: "prior-overlay", "aria-hidden": "true",
    hidden: true });
  byId("camera-video").after(overlay);
  const toggle = h("button", { id: "prior-toggle", type: "button", class: "secondary",
    "aria-pressed": "true" }, "Earlier photo");
  const outline = h("button", { id: "prior-outline", type: "button", class: "secondary",
    "aria-pressed": "false" }, "Outline only");
  const opacity = h("input", { id: "prior-opacity", type: "range", min: 10, max: 90, step: 5,
    value: Math.round(held.opacity * 100) });
  const note = h("p", { id: "prior-note", class: "prior-note" });
  const controls = h("div", { id: "prior-controls", class: "prior-controls", role: "group",
    "aria-label": "Earlier photo of this site", hidden: true },
  note, toggle, outline,
  h("div", { class: "prior-opacity" },
    h("label", { for: "prior-opacity" }, "Opacity"), opacity));
  overlay.closest(".viewfinder").after(controls);
  toggle.addEventListener("click", () => {
    held.shown = !held.shown;
    drawOverlay();
  });
  outline.addEventListener("click", () => {
    held.outlined = !held.outlined;
    drawOverlay();
  });
  opacity.addEventListener("input", () => {
    held.opacity = Number(opacity.value) / 100;
    drawOverlay();
  });
  new ResizeObserver(() => drawOverlay()).observe(overlay);

  const compare = h("section", { id: "prior-compare", class: "prior-compare",
    "aria-labelledby": "prior-compare-title", hidden: true },
  h("h2", { id: "prior-compare-title" }, "Compared with the earlier photo"),
  h("div", { class: "compare-pair" },
    h("figure", {}, h("canvas", { id: "compare-prior", role: "img",
      "aria-label": "Earlier photo of this site" }), h("figcaption", { id: "compare-prior-caption" })),
    h("figure", {}, h("canvas", { id: "compare-new", role: "img", "aria-label": "Newest photo" }),
      h("figcaption", {}, "New"))),
  h("p", { id: "compare-scale", class: "muted" }));
  byId("review-list").before(compare);
  mounted = { overlay, controls, toggle, outline, opacity, note, compare };
  return mounted;
}

/**
 * `box` filled with an image of `width`×`height` as `object-fit: contain` does.
 * @returns {{x: number, y: number, width: number, height: number}}
 */
function contained(box, width, height) {
  const scale = Math.min(box.width / width, box.height / height);
  const w = width * scale;
  const hgt = height * scale;
  return { x: (box.width - w) / 2, y: (box.height - hgt) / 2, width: w, height: hgt };
}

/** Draw the overlay as the controls say (the prior or its outline, fitted like the video). */
function drawOverlay() {
  if (!mounted) return;
  const { overlay, controls, toggle, outline, opacity } = mounted;
  const image = held.image;
  controls.hidden = !image;
  overlay.hidden = !image || !held.shown;
  toggle.setAttribute("aria-pressed", String(held.shown));
  outline.setAttribute("aria-pressed", String(held.outlined));
  outline.disabled = !held.shown;
  opacity.disabled = !held.shown;
  if (overlay.hidden) return;
  const ratio = Math.min(window.devicePixelRatio || 1, 2);
  const width = Math.round(overlay.clientWidth * ratio);
  const height = Math.round(overlay.clientHeight * ratio);
  if (!width || !height) return;
  overlay.width = width;
  overlay.height = height;
  const context = overlay.getContext("2d");
  context.clearRect(0, 0, width, height);
  const source = held.outlined ? held.outline : image;
  const place = contained({ width, height }, image.width, image.height);
  context.drawImage(source, place.x, place.y, place.width, place.height);
  overlay.style.opacity = String(held.opacity);
}

/**
 * The edges of `image` as lines on a transparent canvas: the Sobel gradient magnitude of its
 * luma (reduced to EDGE_SIDE), kept where it is among the strongest (1 − EDGE_QUANTILE).
 * @param {ImageBitmap} image
 * @returns {HTMLCanvasElement}
 */
function outlineOf(image) {
  const scale = Math.min(1, EDGE_SIDE / Math.max(image.width, image.height));
  const width = Math.max(3, Math.round(image.width * scale));
  const height = Math.max(3, Math.round(image.height * scale));
  const canvas = h("canvas", { width, height });
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(image, 0, 0, width, height);
  const pixels = context.getImageData(0, 0, width, height);
  const rgba = pixels.data;
  const luma = new Float32Array(width * height);
  for (let i = 0; i < luma.length; i += 1) {
    luma[i] = 0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2];
  }
  const magnitude = new Float32Array(width * height);
  for (let y = 1; y < height - 1; y += 1) {
    for (let x = 1; x < width - 1; x += 1) {
      const i = y * width + x;
      const gx = luma[i - width + 1] + 2 * luma[i + 1] + luma[i + width + 1]
        - luma[i - width - 1] - 2 * luma[i - 1] - luma[i + width - 1];
      const gy = luma[i + width - 1] + 2 * luma[i + width] + luma[i + width + 1]
        - luma[i - width - 1] - 2 * luma[i - width] - luma[i - width + 1];
      magnitude[i] = Math.hypot(gx, gy);
    }
  }
  const sorted = magnitude.slice().sort();
  const threshold = Math.max(sorted[Math.floor(EDGE_QUANTILE * (sorted.length - 1))], 1e-3);
  for (let i = 0; i < magnitude.length; i += 1) {
    const edge = magnitude[i] >= threshold;
    rgba[4 * i] = EDGE_RGB[0];
    rgba[4 * i + 1] = EDGE_RGB[1];
    rgba[4 * i + 2] = EDGE_RGB[2];
    rgba[4 * i + 3] = edge ? 255 : 0;
  }
  context.putImageData(pixels, 0, 0);
  return canvas;
}

/** The request naming the draft's patient, site and side, or null when one is missing. */
function priorRequest(draft) {
  const patient = draft && draft.patient;
  const details = draft && draft.details;
  if (!patient || !details || !details.body_site) return null;
  const body = { patient: { id: patient.mrn }, body_site: details.body_site,
    sensitive: Boolean(details.sensitive) };
  if (patient.issuer) body.patient.issuer = patient.issuer;
  if (details.laterality) body.laterality = details.laterality;
  if (draft.sessionId) body.exclude_session = draft.sessionId;
  return body;
}

/** Forget the prior: its bitmap closed, the outline dropped, the overlay and comparison cleared. */
export function releasePrior() {
  held.ticket += 1;  // an answer still on its way is dropped when it comes
  if (held.image) held.image.close();
  Object.assign(held, { key: null, image: null, outline: null, taken: null, pxPerMm: null,
    shown: true, outlined: false });
  if (mounted) {
    for (const canvas of [mounted.overlay, byId("compare-prior"), byId("compare-new")]) {
      canvas.width = 0;
      canvas.height = 0;
    }
    say(mounted.note);
    mounted.compare.hidden = true;
    drawOverlay();
  }
}

/**
 * The camera screen opened for `draft`: show the prior of its patient and site over the video,
 * fetching it once per capture (online only; nothing is said when there is none or it cannot
 * be had — the camera works as ever).
 * @param {import("./app.js").Draft} draft
 * @param {boolean} online whether the server is reachable, as far as the app knows
 * @returns {Promise<void>}
 */
export async function openPrior(draft, online) {
  mount();
  const body = priorRequest(draft);
  const key = body && JSON.stringify([draft.id, body]);
  if (key !== held.key) releasePrior();
  if (!body || !online || !navigator.onLine || held.key === key) {
    drawOverlay();
    return;
  }
  held.key = key;
  const ticket = held.ticket;
  let answer;
  let image = null;
  try {
    answer = await postForImage("/api/v1/prior", body);
    if (answer.blob) image = await createImageBitmap(answer.blob);
  } catch {
    return;  // offline, refused or unreadable: no overlay, and no alarm
  }
  if (ticket !== held.ticket) {  // the capture ended or changed meanwhile
    if (image) image.close();
    return;
  }
  if (!image) return;
  const scale = Number(answer.headers.get("X-Prior-Px-Per-Mm"));
  Object.assign(held, { image, outline: outlineOf(image), taken: answer.headers.get("X-Prior-Taken"),
    pxPerMm: scale > 0 ? scale : null });
  say(mounted.note, `Earlier photo of this site, ${takenText(held.taken)}: line the new one up with it.`);
  drawOverlay();
}

/** When the prior was taken, as the user reads dates. */
function takenText(iso) {
  const when = iso ? new Date(iso) : null;
  return when && !Number.isNaN(when.getTime())
    ? when.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" })
    : "date unknown";
}

/**
 * The newest photo of `draft` with its pixels per mm (scaled to the thumbnail) when known: from
 * the server's answer once it is stored (`pixel_spacing_mm`, mm per pixel of the full photo),
 * before that estimated from the live guidance's last answer when the photo was taken
 * (`chart.px_per_mm` at the photo's width).
 * @returns {{bitmap: ImageBitmap, pxPerMm: number|null, estimated: boolean}|null}
 */
function newest(draft) {
  const uuid = [...draft.photos].reverse().find((u) => draft.thumbs.get(u));
  if (!uuid) return null;
  const bitmap = draft.thumbs.get(uuid);
  const result = draft.results.get(uuid);
  const photo = result && result.state === "stored" ? result.photo : null;
  if (photo && photo.pixel_spacing_mm > 0 && photo.width && photo.height) {
    const reduced = Math.max(bitmap.width, bitmap.height) / Math.max(photo.width, photo.height);
    return { bitmap, pxPerMm: reduced / photo.pixel_spacing_mm, estimated: false };
  }
  const verdict = draft.checks && draft.checks.get(uuid);
  const live = verdict && verdict.chart && verdict.chart.px_per_mm;
  if (!photo && live > 0 && verdict.width > 0) {
    return { bitmap, pxPerMm: (live * bitmap.width) / verdict.width, estimated: true };
  }
  return { bitmap, pxPerMm: null, estimated: false };
}

/**
 * Show the prior beside the newest photo of `draft` on the review screen: at the same scale
 * (mm per screen pixel equal: each takes a share of the row proportional to its width in mm)
 * when both have px/mm, else at the same height, "not to scale". Hidden when there is no
 * prior or no photo.
 * @param {import("./app.js").Draft} draft
 */
export function renderComparison(draft) {
  const { compare } = mount();
  const latest = newest(draft);
  compare.hidden = !held.image || !latest;
  if (compare.hidden) return;
  const prior = { bitmap: held.image, pxPerMm: held.pxPerMm };
  const scaled = Boolean(prior.pxPerMm && latest.pxPerMm);
  // widths in mm (same scale), or widths at one common height (aspect ratios)
  const widths = [prior, latest].map(({ bitmap, pxPerMm }) =>
    (scaled ? bitmap.width / pxPerMm : bitmap.width / bitmap.height));
  const total = widths[0] + widths[1];
  for (const [id, item, width] of [["compare-prior", prior, widths[0]],
    ["compare-new", latest, widths[1]]]) {
    const canvas = byId(id);
    canvas.width = item.bitmap.width;
    canvas.height = item.bitmap.height;
    canvas.getContext("2d").drawImage(item.bitmap, 0, 0);
    canvas.parentElement.style.width = `calc((100% - ${GAP}px) * ${(width / total).toFixed(5)})`;
  }
  byId("compare-prior-caption").textContent = `Earlier, ${takenText(held.taken)}`;
  byId("compare-scale").textContent = scaled
    ? `Same scale: a centimetre is as long in both${latest.estimated
      ? " (estimated from the live guidance until the photo is stored)" : ""}.`
    : "Not to scale: both shown at the same height (a colour chart in both photos gives the scale).";
  compare.dataset.scale = !scaled ? "none" : latest.estimated ? "estimated" : "same";
}
