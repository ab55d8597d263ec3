/**
 * The review screen: the photos and clips of a draft before and while they are sent, with
 * per-item progress (and the server's refusal, if any), the colour chart result the server reports, and each photo's quality ("Retake?"
 * before sending when the app's checks fail; the server's record once stored).
 * @module review
 */

import { renderComparison } from "./prior.js";
import { byId, count, h, paintBitmap, say } from "./ui.js";

/** The colour chart result of an upload: ΔE when the server found a chart, else a note. */
function colourHint(photo) {
  const color = photo && photo.color;
  if (!color || !color.chart) return h("p", { class: "colour" }, "No colour chart found.");
  const delta = color.delta_e_after || {};
  const fixed = (v) => (typeof v === "number" ? v.toFixed(1) : "?");
  return h("p", { class: `colour found${color.reliable ? "" : " unreliable"}` },
    `Colour chart found: ΔE00 after correction mean ${fixed(delta.mean)}, max ${
      fixed(delta.max)}${color.reliable ? "." : " — correction not reliable."}`);
}

/** The failing checks of a quality verdict, as one line ("Blurry: hold still; …"). */
function failures(quality) {
  return (quality.checks || []).filter((c) => c.ok === false).map((c) => c.text).join("; ");
}

/**
 * The server's quality record of a stored photo (it replaces the app's own verdict), or null.
 * @param {object|undefined} result the upload's state
 */
function serverQuality(result) {
  const quality = result && result.state === "stored" && result.photo && result.photo.quality;
  if (!quality) return null;
  return h("p", { class: `quality ${quality.ok ? "ok" : "warn"}` },
    quality.ok ? "Quality checks passed." : `Quality: ${failures(quality)}.`);
}

/**
 * "Retake?" with the reason, before sending, for a photo failing the app's checks (quality.js
 * photoChecks) until the user keeps it; else null.
 * @param {object|undefined} verdict the app's verdict, `kept` once the user kept the photo
 * @param {string} uuid
 * @param {number} n the photo's number
 */
function retakePrompt(verdict, uuid, n) {
  if (!verdict || verdict.ok || verdict.kept) return null;
  return h("div", { class: "retake", role: "group", "aria-label": `Photo ${n} may need a retake` },
    h("p", { class: "quality warn" }, `Retake? ${failures(verdict)}.`),
    h("button", { type: "button", class: "secondary", "data-retake": uuid }, "Retake"),
    h("button", { type: "button", class: "quiet", "data-keep": uuid }, "Keep"));
}

/** The state line of one photo: every byte sent is not stored yet, until the server answers. */
function resultText(result) {
  if (!result) return "Not sent yet";
  if (result.state === "stored") return "Stored";
  if (result.state === "processing") return "Received — being converted on the server";
  if (result.state === "failed") return `Refused: ${result.error}`;
  if (result.total && result.loaded >= result.total) return "Sent — processing on the server…";
  if (result.total) return `Sending… ${Math.round((100 * result.loaded) / result.total)} %`;
  return "Waiting to be sent";
}

const SIDES = { R: "right", L: "left", B: "both sides" };
const CONSENT = { given: "consent given", declined: "consent declined",
  "not-required": "consent not required" };

/**
 * The draft's capture details in one line ("Forearm, right · close-up · consent given"), or ""
 * before they are chosen.
 * @param {import("./app.js").Draft} draft
 */
function detailsLine(draft) {
  const { details, site } = draft;
  if (!details || !site) return "";
  return [`${site.meaning}${details.laterality ? `, ${SIDES[details.laterality]}` : ""}`,
    details.description, CONSENT[details.consent], details.sensitive ? "sensitive" : null]
    .filter(Boolean).join(" · ");
}

/**
 * How the review names one item of a draft: "Photo 2", "Clip 1" (its place in the draft).
 * @param {import("./app.js").Draft} draft
 * @param {string} uuid
 * @returns {string}
 */
export function itemName(draft, uuid) {
  return `${draft.clips.has(uuid) ? "Clip" : "Photo"} ${draft.photos.indexOf(uuid) + 1}`;
}

/**
 * The review screen for a draft: its body site and details (with a button to change them
 * before it is sent), every photo with its thumbnail (a button to view it full screen), upload
 * progress, state, colour chart result and quality, and the buttons that fit (send, take more,
 * finish).
 * @param {import("./app.js").Draft} draft
 */
export function renderReview(draft) {
  const sent = Boolean(draft.sessionId);
  byId("review-list").replaceChildren(...draft.photos.map((uuid, i) => {
    const result = draft.results.get(uuid);
    const clip = draft.clips.has(uuid);
    const name = itemName(draft, uuid);
    const canvas = h("canvas", { class: "thumb", "aria-hidden": "true" });
    paintBitmap(canvas, draft.thumbs.get(uuid));
    const view = h("button", { type: "button", class: "thumb-button", "data-view": uuid,
      "aria-label": `${name}: view full screen` }, canvas);
    const progress = h("progress", { max: 1, "aria-label": `Upload of ${name.toLowerCase()}` });
    progress.value = result && result.state === "stored" ? 1
      : result && result.total ? result.loaded / result.total : 0;
    return h("li", { class: "photo", "data-uuid": uuid },
      view,
      h("div", { class: "info" },
        h("p", { class: "label" }, name),
        progress,
        h("p", { class: `state${result && result.state === "failed" ? " alert" : ""}` },
          resultText(result)),
        result && result.state === "stored" && !clip ? colourHint(result.photo) : null,
        serverQuality(result)),
      sent ? null : h("button", { type: "button", class: "quiet danger", "data-remove": uuid,
        "aria-label": `Remove ${name.toLowerCase()}` }, "Remove"),
      sent ? null : retakePrompt(draft.checks.get(uuid), uuid, i + 1));
  }));
  const stored = [...draft.results.values()].filter((r) => r.state === "stored").length;
  const finished = sent && draft.complete;
  say(byId("review-summary"), finished ? `All ${count(stored)} stored.`
    : sent ? `${stored} of ${count(draft.photos.length)} stored.`
      : `${count(draft.photos.length)} ready to send.`);
  const send = byId("send");
  send.hidden = sent;
  send.textContent = draft.patient && draft.details
    ? `Send ${count(draft.photos.length)}` : "Identify the patient to send";
  send.disabled = draft.photos.length === 0;
  const line = detailsLine(draft);
  say(byId("review-site"), line);
  byId("review-details").hidden = !line;
  byId("change-details").hidden = sent;
  byId("more-photos").hidden = sent;
  byId("finish").hidden = !sent;
  byId("finish").textContent = finished ? "Finish" : "Continue in the background";
  for (const button of document.querySelectorAll("#screen-review [data-action=discard]")) {
    button.hidden = sent;
  }
  renderComparison(draft);
}


/**
 * Show the upload progress of one photo without redrawing the list.
 * @param {import("./app.js").Draft} draft
 * @param {string} uuid
 * @param {number} loaded bytes sent
 * @param {number} total bytes to send
 */
export function showProgress(draft, uuid, loaded, total) {
  draft.results.set(uuid, { state: "sending", loaded, total });
  const item = document.querySelector(`#review-list li[data-uuid="${uuid}"]`);
  if (item) {
    item.querySelector("progress").value = loaded / total;
    item.querySelector(".state").textContent = resultText(draft.results.get(uuid));
  }
}
