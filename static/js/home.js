/**
 * What waits on this device and where the user's recent studies went, as the user sees it: the
 * status line under the title bar and the lists of the home screen. The queue comes from the
 * store (no patient data shown); the recent studies from the server (GET
 * /api/v1/sessions/recent: the user's own captures, with the patient's name).
 * @module home
 */

import * as store from "./store.js";
import { byId, count, displayName, displayTime, h, say } from "./ui.js";

/** What each state of a study means to the user who took its photos. */
const STATES = {
  sending: "Sending — still on this device",
  processing: "Processing on the server",
  stored: "Stored, being sent on",
  in_pacs: "In the PACS",
  in_emr: "In the PACS and the patient record",
  failed: "Delivery failed",
};

/**
 * @typedef {object} RecentStudy one item of GET /api/v1/sessions/recent
 * @property {string} id
 * @property {string} study_instance_uid
 * @property {{id: string, issuer: string, name: string|null}} patient
 * @property {{code: string, meaning: string}|null} body_site
 * @property {string|null} laterality
 * @property {string} created_at
 * @property {number} photo_count
 * @property {string} state processing, stored, in_pacs, in_emr or failed
 * @property {string|null} reason
 * @property {{sent: number, total: number}} pacs
 * @property {{code: string, meaning: string, photos: number}[]} [rejected] photos rejected by
 *   a correction (a study moved to another patient: all of them, 113037)
 */

/**
 * The state line of a recent study: "sending" while photos of it wait on this device.
 * @param {RecentStudy} study
 * @param {number} waiting photos of it still on this device
 * @returns {string}
 */
function stateText(study, waiting) {
  if (waiting) return `${STATES.sending} (${count(waiting)})`;
  const state = study.state === "in_emr" && study.pacs.total === 0 ? "In the patient record"
    : STATES[study.state] || study.state;
  if (study.state === "failed") return `${state}: ${study.reason}`;
  return study.reason ? `${state} (retrying: ${study.reason})` : state;
}

/** "SMITH, Anna" from a DICOM Person Name (FAMILY^GIVEN). */
function nameOf(pn) {
  const [family = "", given = ""] = (pn || "").split("^");
  return displayName({ family, given });
}

const SIDES = { R: "right", L: "left", B: "both sides" };

/**
 * One card of the recent studies: patient, site, time, photos, state and the viewer link.
 * @param {RecentStudy} study
 * @param {number} waiting
 */
function recentCard(study, waiting) {
  const site = study.body_site ? [study.body_site.meaning, SIDES[study.laterality]]
    .filter(Boolean).join(", ") : null;
  const state = waiting ? "sending" : study.state;
  return h("li", { class: "card recent", "data-study": study.study_instance_uid,
    "data-state": state },
    h("p", {}, h("strong", {}, nameOf(study.patient.name)), ` · MRN ${study.patient.id}`),
    h("p", { class: "muted" }, [site, `${displayTime(study.created_at)}`,
      count(study.photo_count)].filter(Boolean).join(" · ")),
    h("p", { class: `state${state === "failed" ? " alert" : ""}` }, stateText(study, waiting)),
    ...(study.rejected || []).map((r) => h("p", { class: "alert correction",
      "data-code": r.code }, `${count(r.photos)} corrected: ${r.meaning}`)),
    study.photo_count ? h("a", { class: "button secondary",
      href: `/studies/${study.study_instance_uid}` }, "Open in the viewer") : null);
}

/**
 * One card of a capture not sent yet: its photos, its patient (or that none is identified yet)
 * and the buttons to go on with it or discard it.
 * @param {string} draftId
 * @param {object[]} held its photos on the device
 * @param {object|null} patient its confirmed patient
 * @param {number} started when its first photo was taken, else when it was started
 */
function draftCard(draftId, held, patient, started) {
  const what = held.length ? `${count(held.length)} taken at ${displayTime(started)}`
    : `Started at ${displayTime(started)}, no photo yet`;
  return h("li", { class: "card", "data-draft": draftId },
    h("p", {}, `${what}, `, h("strong", {}, patient ? `of ${displayName(patient)}`
      : "patient not identified")),
    h("div", { class: "row" },
      h("button", { type: "button", class: "primary", "data-resume": draftId },
        patient ? "Continue" : "Identify patient"),
      h("button", { type: "button", class: "quiet danger", "data-discard": draftId }, "Discard")));
}

/**
 * The status line of what waits on this device (all users' when nobody is logged in).
 * @param {string|null} user the logged-in user
 * @param {import("./uploader.js").Uploader} uploader
 */
export async function renderQueue(user, uploader) {
  const queue = byId("queue");
  const photos = (await store.listPhotos()).filter((p) => !user || p.user === user);
  const sessions = (await store.listSessions()).filter((s) => !user || s.user === user);
  const sending = photos.filter((p) => p.state === "queued").length;
  const held = photos.filter((p) => p.state === "held").length;
  const failed = photos.filter((p) => p.state === "failed").length;
  const closing = sessions.filter((s) => s.state === "open" &&
    !photos.some((p) => p.sessionId === s.id)).length;
  const parts = [];
  if (sending) parts.push(`${count(sending)} waiting to be sent`);
  else if (closing) parts.push(`finishing ${count(closing, "study", "studies")}`);
  if (held) parts.push(`${count(held)} not sent yet`);
  if (failed) parts.push(`${count(failed)} refused by the server`);
  const waiting = sending || closing;
  if (waiting && !navigator.onLine) parts.push("offline");
  else if (waiting && uploader.retryAt) {
    parts.push(`retrying in ${Math.max(1, Math.round((uploader.retryAt - Date.now()) / 1000))} s`);
  }
  if (waiting && !user) parts.push("log in to send them");
  queue.textContent = parts.join(" · ");
  queue.hidden = parts.length === 0;
  queue.classList.toggle("warn", Boolean(waiting && (uploader.retryAt || !navigator.onLine)));
}

/**
 * The home screen's lists: what waits on this device (photos held for a patient, studies
 * being sent or refused, other users' photos counted only), and this user's studies of the
 * last 24 hours with where their photos are.
 * @param {string} user the logged-in user
 * @param {string|null} currentDraft the draft being worked on (not listed)
 * @param {RecentStudy[]|null} recent the server's answer, null when it could not be asked
 * @param {{studyUid: string, photos: number, at: number}[]} sent studies sent since the app
 *   opened (shown when `recent` is null)
 */
export async function renderHome(user, currentDraft, recent, sent) {
  const [photos, sessions] = await Promise.all([store.listPhotos(), store.listSessions()]);
  const mine = photos.filter((p) => p.user === user);
  const list = byId("device-list");
  list.replaceChildren();
  const drafts = new Map();
  for (const photo of mine.filter((p) => p.state === "held")) {
    drafts.set(photo.draftId, [...(drafts.get(photo.draftId) || []), photo]);
  }
  const kept = new Map();
  for (const draft of (await store.listDrafts()).filter((d) => d.user === user)) {
    kept.set(draft.id, draft);
    if (!drafts.has(draft.id)) drafts.set(draft.id, []);
  }
  for (const [draftId, held] of drafts) {
    if (draftId === currentDraft) continue;
    const draft = kept.get(draftId);
    const contents = draft ? await store.keptDraft(draftId).catch(() => null) : null;
    list.append(draftCard(draftId, held, contents && contents.patient,
      held.length ? held[0].createdAt : draft.createdAt));
  }
  for (const session of sessions.filter((s) => s.user === user)) {
    const of = mine.filter((p) => p.sessionId === session.id);
    const failed = of.filter((p) => p.state === "failed");
    const line = session.state === "failed"
      ? `Study of ${displayTime(session.createdAt)} was refused: ${session.error}`
      : `Study of ${displayTime(session.createdAt)}: ${count(of.length - failed.length)} waiting to be sent`;
    const item = h("li", { class: "card" }, h("p", {}, line));
    for (const photo of failed) {
      item.append(h("p", { class: "alert" }, `A photo was refused: ${photo.error}`),
        h("button", { type: "button", class: "quiet danger", "data-drop": photo.uuid },
          "Delete the refused photo"));
    }
    if (session.state === "failed") {
      item.append(h("button", { type: "button", class: "quiet danger",
        "data-drop-session": session.id }, "Delete these photos"));
    }
    list.append(item);
  }
  byId("device-empty").hidden = list.children.length > 0;
  const others = photos.length - mine.length;
  say(byId("others-waiting"), others
    ? `${count(others)} of another user wait${others === 1 ? "s" : ""} here for that user to log in.`
    : "");
  renderRecent(recent, sent, mine);
}

/**
 * The recent studies: the server's list with the state of each (sending while photos wait
 * here), or, when the server could not be asked, the studies sent since the app opened.
 * @param {RecentStudy[]|null} recent
 * @param {{studyUid: string, photos: number, at: number}[]} sent
 * @param {object[]} mine this user's photos on the device
 */
function renderRecent(recent, sent, mine) {
  const list = byId("recent-list");
  if (recent) {
    const waiting = (id) => mine.filter((p) => p.sessionId === id && p.state === "queued").length;
    list.replaceChildren(...recent.map((study) => recentCard(study, waiting(study.id))));
  } else {
    list.replaceChildren(...sent.map((s) => h("li", { class: "card" },
      h("a", { href: `/studies/${s.studyUid}` }, `Study sent at ${displayTime(s.at)}`),
      ` (${count(s.photos)})`)));
  }
  say(byId("recent-status"), recent ? (recent.length ? "" : "No studies in the last 24 hours.")
    : "The server could not be asked where your recent studies are.");
}
