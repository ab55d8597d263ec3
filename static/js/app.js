/**
 * The capture app: log in → identify the patient (wristband or MRN) → confirm → body site and
 * capture details → photos → review and send → study link. Photos can also be taken first and
 * the patient identified later ("capture now, identify later"); such photos stay encrypted on
 * the device and are never sent before a patient is assigned.
 * @module app
 */

import { ApiError, NetworkError, login, logout, whoAmI } from "./api.js";
import {
  PHOTO_RESOLUTION, SCAN_RESOLUTION, cameraSupported, grabFrame, startCamera, stopCamera, toJpeg,
} from "./camera.js";
import { identifyTyped, identifyWristband } from "./identify.js";
import { loadSites, rememberSite, searchSites } from "./sites.js";
import * as store from "./store.js";
import {
  byId, count, displayDate, displayName, displayTime, h, patientLine, say, sexText, showScreen,
} from "./ui.js";
import { Uploader } from "./uploader.js";

const uploader = new Uploader();

/** Everything the app holds in memory; patient data lives only here and in encrypted IDB. */
const state = {
  me: null,
  /** @type {Draft|null} */
  draft: null,
  identification: null,
  sites: [],
  site: null,
  lastActivity: Date.now(),
  /** Studies completed since the app opened: {studyUid, photos, at}. */
  sent: [],
};

/**
 * @typedef {object} Draft
 * @property {string} id
 * @property {string} user
 * @property {object|null} patient the confirmed patient (identify.js Patient)
 * @property {string|null} encounter
 * @property {object|null} worklistItem the chosen worklist item, if any
 * @property {object|null} details body site, laterality, consent…
 * @property {string[]} photos upload UUIDs, in capture order
 * @property {Map<string, ImageBitmap>} thumbs
 * @property {Map<string, object>} results per photo: {state, loaded, total, photo, error}
 * @property {string|null} sessionId set once sent
 */

function newDraft() {
  return { id: crypto.randomUUID(), user: state.me.user, patient: null, encounter: null,
    worklistItem: null, details: null, photos: [], thumbs: new Map(), results: new Map(), sessionId: null };
}

// --- errors and the login ---------------------------------------------------------------------

/**
 * Say what went wrong in `element`; a lost login sends the user to the login screen.
 * @param {unknown} error
 * @param {HTMLElement} element
 */
function report(error, element) {
  if (error instanceof ApiError && error.needsLogin) {
    sessionEnded("Your login has ended. Log in again to continue.");
  } else if (error instanceof NetworkError) {
    say(element, "No connection to the server. Try again when you are back online.");
  } else {
    say(element, error instanceof Error ? error.message : String(error));
  }
}

function showLogin(message) {
  state.me = null;
  stopCameras();
  byId("logout").hidden = true;
  byId("who").textContent = "";
  say(byId("login-error"), message);
  showScreen("login");
}

/** The server no longer knows this login: pause sending until the user logs in again. */
function sessionEnded(message) {
  uploader.setUser(null);
  showLogin(message);
}

async function enter(me) {
  state.me = me;
  if (state.draft && state.draft.user !== me.user) state.draft = null;
  byId("who").textContent = me.user;
  byId("logout").hidden = false;
  byId("role-warning").hidden = me.role !== "view";
  uploader.setUser(me.user);
  await renderHome();
  showScreen("home");
}

async function onLogin(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const error = byId("login-error");
  say(error);
  try {
    const me = await login(form.username.value.trim(), form.password.value);
    form.reset();
    await enter(me);
  } catch (failure) {
    report(failure, error);
  }
}

async function onLogout() {
  const waiting = (await store.listPhotos()).length;
  if (waiting) {
    const dialog = byId("logout-dialog");
    byId("logout-warning").textContent = `${count(waiting)} on this device ${
      waiting === 1 ? "has" : "have"} not been sent. Logging out deletes ${
      waiting === 1 ? "it" : "them"} for good.`;
    dialog.returnValue = "";
    dialog.showModal();
    const choice = await new Promise((resolve) =>
      dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true }));
    if (choice !== "logout") return;
  }
  uploader.setUser(null);
  try {
    await logout();
  } catch {
    // offline: the server session times out by itself; the device is purged all the same
  }
  await store.purgeAll();
  state.draft = null;
  state.sent = [];
  sessionEnded("");
  await renderQueue();
}

/** Forget the patient in memory and ask for the login again; waiting photos keep going. */
function lock() {
  state.draft = null;
  state.identification = null;
  showLogin("Locked after a while without use. Log in again to continue.");
}

/** Lock the app after the idle timeout without user input (the server does the same). */
function watchIdle() {
  const touch = () => { state.lastActivity = Date.now(); };
  for (const type of ["pointerdown", "keydown"]) document.addEventListener(type, touch);
  setInterval(() => {
    const limit = (state.me && state.me.idle_timeout_seconds) || 0;
    if (limit && Date.now() - state.lastActivity > limit * 1000) lock();
  }, 15000);
}

// --- the queue on this device ----------------------------------------------------------------

async function renderQueue() {
  const queue = byId("queue");
  const user = state.me && state.me.user;
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

async function renderHome() {
  const user = state.me.user;
  const [photos, sessions] = await Promise.all([store.listPhotos(), store.listSessions()]);
  const mine = photos.filter((p) => p.user === user);
  const list = byId("device-list");
  list.replaceChildren();
  const drafts = new Map();
  for (const photo of mine.filter((p) => p.state === "held")) {
    drafts.set(photo.draftId, [...(drafts.get(photo.draftId) || []), photo]);
  }
  for (const [draftId, held] of drafts) {
    if (state.draft && state.draft.id === draftId) continue;
    list.append(h("li", { class: "card" },
      h("p", {}, `${count(held.length)} taken at ${displayTime(held[0].createdAt)}, `,
        h("strong", {}, "patient not identified")),
      h("div", { class: "row" },
        h("button", { type: "button", class: "primary", "data-resume": draftId }, "Identify patient"),
        h("button", { type: "button", class: "quiet danger", "data-discard": draftId }, "Discard"))));
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
  const recent = byId("recent-list");
  recent.replaceChildren(...state.sent.map((s) => h("li", { class: "card" },
    h("a", { href: `/studies/${s.studyUid}` }, `Study sent at ${displayTime(s.at)}`),
    ` (${count(s.photos)})`)));
}

async function onHomeClick(event) {
  const target = event.target.closest("button");
  if (!target) return;
  const photos = await store.listPhotos();
  if (target.dataset.resume) {
    const draft = newDraft();
    draft.id = target.dataset.resume;
    draft.photos = photos.filter((p) => p.draftId === draft.id && p.state === "held")
      .map((p) => p.uuid);
    state.draft = draft;
    await loadThumbnails(draft, photos);
    startIdentify();
  } else if (target.dataset.discard) {
    for (const p of photos.filter((x) => x.draftId === target.dataset.discard && x.state === "held")) {
      await store.deletePhoto(p.uuid);
    }
  } else if (target.dataset.drop) {
    await store.deletePhoto(target.dataset.drop);
    uploader.kick();
  } else if (target.dataset.dropSession) {
    for (const p of photos.filter((x) => x.sessionId === target.dataset.dropSession)) {
      await store.deletePhoto(p.uuid);
    }
    await store.deleteSession(target.dataset.dropSession);
  }
  await renderHome();
  await renderQueue();
}

async function loadThumbnails(draft, photos) {
  for (const record of photos.filter((p) => draft.photos.includes(p.uuid))) {
    const blob = await store.photoBlob(record);
    draft.thumbs.set(record.uuid, await createImageBitmap(blob, { resizeWidth: 320 }));
  }
}

// --- identify and confirm the patient ----------------------------------------------------------

function stopCameras() {
  stopCamera(byId("scan-video"));
  stopCamera(byId("camera-video"));
}

async function startIdentify() {
  byId("mrn-form").reset();
  say(byId("scan-status"));
  showScreen("identify");
  if (!cameraSupported()) {
    say(byId("scan-status"), "No camera here: type the MRN.");
    return;
  }
  try {
    await startCamera(byId("scan-video"), SCAN_RESOLUTION);
  } catch {
    say(byId("scan-status"), "The camera is not available: type the MRN.");
  }
}

async function identified(run) {
  const status = byId("scan-status");
  say(status, "Looking up the patient…");
  try {
    state.identification = await run();
  } catch (error) {
    report(error, status);
    return;
  }
  say(status);
  stopCameras();
  renderPatients();
  showScreen("patient");
}

function renderPatients() {
  const { read, patients, incomplete } = state.identification;
  say(byId("patient-read"), read ? `Read: ${read}` : "");
  const warning = patients.length === 0
    ? "No patient found. Check the wristband or the MRN and try again."
    : patients.length > 1 ? "Several patients match: check the name and birth date." : "";
  say(byId("patient-warning"), [warning, incomplete
    ? "A patient directory did not answer: the list may be incomplete." : ""]
    .filter(Boolean).join(" "));
  const list = byId("patient-list");
  list.replaceChildren(...patients.map((patient, index) => {
    const preferred = Math.max(0, patient.encounters.findIndex((e) => e.onWristband));
    const encounters = patient.encounters.map((e, i) => option(`encounter-${index}`, e.id,
      i === preferred, `${e.id}${e.department ? ` · ${e.department}` : ""}${
        e.started ? ` · since ${displayDate(e.started)}` : ""}${
        e.onWristband ? " · on the wristband" : ""}`));
    encounters.push(option(`encounter-${index}`, "", patient.encounters.length === 0,
      "No encounter"));
    const worklist = patient.worklist.map((w, i) => option(`worklist-${index}`, String(i), false,
      [w.requested_procedure_description || "Scheduled procedure", w.accession_number,
        w.scheduled_start && displayDate(w.scheduled_start)].filter(Boolean).join(" · ")));
    return h("article", { class: "card patient", "aria-label": displayName(patient) },
      h("h2", {}, displayName(patient)),
      h("dl", {},
        h("dt", {}, "Born"), h("dd", {}, displayDate(patient.birthDate)),
        h("dt", {}, "Sex"), h("dd", {}, sexText(patient.sex)),
        h("dt", {}, "MRN"), h("dd", {}, `${patient.mrn}${patient.issuer ? ` (${patient.issuer})` : ""}`)),
      h("fieldset", {}, h("legend", {}, "Encounter"), ...encounters),
      worklist.length ? h("fieldset", {}, h("legend", {}, "Worklist"), ...worklist,
        option(`worklist-${index}`, "", true, "None")) : null,
      h("button", { type: "button", class: "primary big", "data-confirm": index },
        "Confirm this patient"));
  }));
}

function option(name, value, checked, text) {
  return h("label", { class: "option" }, h("input", { type: "radio", name, value, checked }),
    ` ${text}`);
}

function onConfirmPatient(event) {
  const button = event.target.closest("button[data-confirm]");
  if (!button) return;
  const index = Number(button.dataset.confirm);
  const patient = state.identification.patients[index];
  const chosen = document.querySelector(`input[name="encounter-${index}"]:checked`);
  const item = document.querySelector(`input[name="worklist-${index}"]:checked`);
  state.draft.patient = patient;
  state.draft.encounter = chosen && chosen.value ? chosen.value : null;
  state.draft.worklistItem = item && item.value ? patient.worklist[Number(item.value)] : null;
  state.identification = null;
  const encounter = patient.encounters.find((e) => e.id === state.draft.encounter);
  startDetails(encounter ? encounter.department : null);
}

// --- body site and capture details ------------------------------------------------------------

function renderPatientLines() {
  const patient = state.draft && state.draft.patient;
  for (const element of document.querySelectorAll("[data-patient-line]")) {
    element.textContent = patient ? patientLine(patient) : "Patient not identified yet";
    element.classList.toggle("unidentified", !patient);
  }
}

async function startDetails(department) {
  const form = byId("details-form");
  const previous = state.draft.details;
  if (!previous) {
    form.reset();
    state.site = null;
    byId("department").value = department || "";
  }
  say(byId("details-error"));
  document.querySelector("#screen-details [data-action=discard]").textContent =
    state.draft.photos.length ? "Discard photos and start again" : "Cancel";
  renderPatientLines();
  showScreen("details");
  try {
    state.sites = await loadSites();
  } catch (error) {
    report(error, byId("details-error"));
  }
  renderSites();
  renderSiteChoice();
}

function renderSites() {
  const found = searchSites(state.sites, byId("site-search").value);
  if (state.site && !found.some((s) => s.code === state.site.code)) found.unshift(state.site);
  byId("site-list").replaceChildren(...found.map((site) => h("label", { class: "option" },
    h("input", { type: "radio", name: "site", value: site.code,
      checked: Boolean(state.site && state.site.code === site.code) }),
    ` ${site.meaning}`)));
}

function renderSiteChoice() {
  const site = state.site;
  byId("site-chosen").textContent = site ? `: ${site.meaning}` : "";
  byId("laterality").hidden = !(site && site.paired);
  const sensitive = byId("sensitive");
  if (site && site.sensitive) sensitive.checked = true;
  sensitive.disabled = Boolean(site && site.sensitive);
  byId("sensitive-note").hidden = !(site && site.sensitive);
}

function onSitePicked(event) {
  if (event.target.name !== "site") return;
  state.site = state.sites.find((s) => s.code === event.target.value) || null;
  renderSiteChoice();
}

function onConsentChanged() {
  const declined = byId("details-form").consent.value === "declined";
  byId("consent-declined").hidden = !declined;
}

function onDetails(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const error = byId("details-error");
  const site = state.site;
  const laterality = form.laterality.value;
  const consent = form.consent.value;
  const problem = !site ? "Choose the body site."
    : site.paired && !laterality ? "Choose the side (right, left or both)."
      : !consent ? "Record the patient's consent."
        : consent === "declined" ? "Consent was declined: no photos may be taken or sent." : "";
  if (problem) {
    say(error, problem);
    return;
  }
  say(error);
  state.draft.details = {
    body_site: site.code,
    laterality: site.paired ? laterality : null,
    description: form.view.value.trim() || null,
    consent,
    sensitive: byId("sensitive").checked || site.sensitive,
    source: form.source.value || "provider",
    department: form.department.value.trim() || null,
  };
  rememberSite(site.code);
  if (state.draft.photos.length) showReview();
  else startCapture();
}

// --- taking photos ----------------------------------------------------------------------------

async function startCapture() {
  renderPatientLines();
  renderStrip();
  say(byId("camera-status"));
  showScreen("camera");
  if (!cameraSupported()) {
    say(byId("camera-status"), "No live camera here: use the camera app.");
    return;
  }
  try {
    await startCamera(byId("camera-video"), PHOTO_RESOLUTION);
  } catch {
    say(byId("camera-status"), "The camera is not available: use the camera app.");
  }
}

function renderStrip() {
  const draft = state.draft;
  byId("shots").replaceChildren(...draft.photos.map((uuid, i) => {
    const canvas = h("canvas", { class: "thumb", role: "listitem",
      "aria-label": `Photo ${i + 1}` });
    paint(canvas, draft.thumbs.get(uuid));
    return canvas;
  }));
  byId("retake").disabled = draft.photos.length === 0;
  byId("camera-done").textContent = draft.photos.length ? `Done (${draft.photos.length})` : "Done";
}

function paint(canvas, bitmap) {
  if (!bitmap) return;
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
}

async function keepPhoto(uuid, blob, thumb) {
  const draft = state.draft;
  await store.savePhoto({ uuid, user: draft.user, draftId: draft.id, blob });
  draft.photos.push(uuid);
  draft.thumbs.set(uuid, thumb);
  renderStrip();
  await renderQueue();
}

async function onShutter() {
  const shutter = byId("shutter");
  const status = byId("camera-status");
  const uuid = crypto.randomUUID();
  shutter.disabled = true;
  try {
    performance.mark(`ebiw:shutter:${uuid}`);
    const frame = grabFrame(byId("camera-video"));
    say(status, "Saving…");
    const [blob, thumb] = await Promise.all([toJpeg(frame),
      createImageBitmap(frame, { resizeWidth: 320 })]);
    await keepPhoto(uuid, blob, thumb);
    say(status, `${count(state.draft.photos.length)} taken`);
  } catch (error) {
    say(status, `The photo could not be taken: ${error.message}`);
  } finally {
    shutter.disabled = false;
  }
}

async function onFilePicked(event) {
  const input = event.currentTarget;
  const file = input.files && input.files[0];
  input.value = "";
  if (!file) return;
  const status = byId("camera-status");
  try {
    const thumb = await createImageBitmap(file, { resizeWidth: 320 });
    await keepPhoto(crypto.randomUUID(), file, thumb);
    say(status, `${count(state.draft.photos.length)} taken`);
  } catch {
    say(status, "This file is not a photo the app can read.");
  }
}

async function onRetake() {
  const uuid = state.draft.photos.pop();
  if (!uuid) return;
  state.draft.thumbs.delete(uuid);
  await store.deletePhoto(uuid);
  renderStrip();
  await renderQueue();
  say(byId("camera-status"), "Last photo deleted: take it again.");
}

function onCameraDone() {
  stopCameras();
  if (!state.draft.photos.length) {
    say(byId("camera-status"), "Take at least one photo.");
    return;
  }
  showReview();
}

// --- review and send --------------------------------------------------------------------------

function showReview() {
  renderPatientLines();
  renderReview();
  say(byId("review-error"));
  showScreen("review");
}

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

function resultText(result) {
  if (!result) return "Not sent yet";
  if (result.state === "stored") return "Stored";
  if (result.state === "failed") return `Refused: ${result.error}`;
  if (result.total) return `Sending… ${Math.round((100 * result.loaded) / result.total)} %`;
  return "Waiting to be sent";
}

function renderReview() {
  const draft = state.draft;
  const sent = Boolean(draft.sessionId);
  byId("review-list").replaceChildren(...draft.photos.map((uuid, i) => {
    const result = draft.results.get(uuid);
    const canvas = h("canvas", { class: "thumb", "aria-hidden": "true" });
    paint(canvas, draft.thumbs.get(uuid));
    const progress = h("progress", { max: 1, "aria-label": `Upload of photo ${i + 1}` });
    progress.value = result && result.state === "stored" ? 1
      : result && result.total ? result.loaded / result.total : 0;
    return h("li", { class: "photo", "data-uuid": uuid },
      canvas,
      h("div", { class: "info" },
        h("p", { class: "label" }, `Photo ${i + 1}`),
        progress,
        h("p", { class: "state" }, resultText(result)),
        result && result.state === "stored" ? colourHint(result.photo) : null),
      sent ? null : h("button", { type: "button", class: "quiet danger", "data-remove": uuid,
        "aria-label": `Remove photo ${i + 1}` }, "Remove"));
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
  byId("more-photos").hidden = sent;
  byId("finish").hidden = !sent;
  byId("finish").textContent = finished ? "Finish" : "Continue in the background";
  for (const button of document.querySelectorAll("#screen-review [data-action=discard]")) {
    button.hidden = sent;
  }
}

async function onReviewClick(event) {
  const button = event.target.closest("button[data-remove]");
  if (!button) return;
  const uuid = button.dataset.remove;
  state.draft.photos = state.draft.photos.filter((u) => u !== uuid);
  state.draft.thumbs.delete(uuid);
  await store.deletePhoto(uuid);
  renderReview();
  await renderQueue();
}

function sessionRequest(draft) {
  const p = draft.patient;
  return {
    id: draft.sessionId,
    patient: { id: p.mrn, issuer: p.issuer || undefined,
      name: [p.family, p.given].filter(Boolean).join("^") || undefined,
      birth_date: p.birthDate || undefined, sex: p.sex || undefined },
    encounter: draft.encounter || undefined,
    identification: p.identification || undefined,
    worklist_item: draft.worklistItem || undefined,
    ...Object.fromEntries(Object.entries(draft.details).filter(([, v]) => v !== null)),
  };
}

async function onSend() {
  const draft = state.draft;
  if (!draft.patient || !draft.details) {
    startIdentify();
    return;
  }
  draft.sessionId = crypto.randomUUID();
  try {
    await store.queueSession({ id: draft.sessionId, user: draft.user, draftId: draft.id,
      body: sessionRequest(draft) });
  } catch (error) {
    draft.sessionId = null;
    report(error, byId("review-error"));
    return;
  }
  for (const uuid of draft.photos) draft.results.set(uuid, { state: "queued" });
  renderReview();
  uploader.kick();
}

function onFinish() {
  const draft = state.draft;
  if (draft.complete) {
    const link = byId("study-link");
    link.href = `/studies/${draft.studyUid}`;
    byId("done-summary").textContent = `${count(draft.photos.length)} of ${
      draft.patient ? displayName(draft.patient) : "the patient"} stored in one study.`;
    state.draft = null;
    showScreen("done");
  } else {
    state.draft = null;
    goHome();
  }
}

async function discardDraft() {
  for (const uuid of state.draft.photos) await store.deletePhoto(uuid);
  state.draft = null;
  await renderQueue();
  goHome();
}

async function goHome() {
  stopCameras();
  state.identification = null;
  await renderHome();
  showScreen("home");
}

// --- uploader events --------------------------------------------------------------------------

function draftOf(sessionId) {
  return state.draft && state.draft.sessionId === sessionId ? state.draft : null;
}

function wireUploader() {
  uploader.addEventListener("change", () => renderQueue());
  uploader.addEventListener("progress", ({ detail }) => {
    const draft = state.draft;
    if (!draft || !draft.photos.includes(detail.uuid)) return;
    draft.results.set(detail.uuid, { state: "sending", loaded: detail.loaded, total: detail.total });
    const item = document.querySelector(`#review-list li[data-uuid="${detail.uuid}"]`);
    if (item) {
      item.querySelector("progress").value = detail.loaded / detail.total;
      item.querySelector(".state").textContent = resultText(draft.results.get(detail.uuid));
    }
  });
  uploader.addEventListener("stored", ({ detail }) => {
    const draft = draftOf(detail.sessionId);
    if (draft) {
      draft.results.set(detail.uuid, { state: "stored", photo: detail.photo });
      renderReview();
    }
  });
  uploader.addEventListener("complete", ({ detail }) => {
    const photos = detail.session.photo_count || 0;
    state.sent.unshift({ studyUid: detail.session.study_instance_uid, photos, at: Date.now() });
    const draft = draftOf(detail.sessionId);
    if (draft) {
      draft.complete = true;
      draft.studyUid = detail.session.study_instance_uid;
      renderReview();
    } else if (!byId("screen-home").hidden && state.me) {
      renderHome();
    }
  });
  uploader.addEventListener("login-needed", ({ detail }) => sessionEnded(
    `${detail.message}. Log in again to send the waiting photos.`));
  setInterval(() => { if (uploader.retryAt) renderQueue(); }, 1000);
  window.addEventListener("offline", () => renderQueue());
}

// --- start ------------------------------------------------------------------------------------

function wire() {
  byId("login-form").addEventListener("submit", onLogin);
  byId("logout").addEventListener("click", onLogout);
  byId("start").addEventListener("click", () => {
    state.draft = newDraft();
    startIdentify();
  });
  byId("start-emergency").addEventListener("click", () => {
    state.draft = newDraft();
    startCapture();
  });
  byId("screen-home").addEventListener("click", onHomeClick);
  byId("scan").addEventListener("click", () => identified(() =>
    identifyWristband(byId("scan-video"))));
  byId("mrn-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const mrn = byId("mrn").value.trim();
    if (mrn) identified(() => identifyTyped(mrn));
  });
  byId("patient-list").addEventListener("click", onConfirmPatient);
  byId("site-search").addEventListener("input", renderSites);
  byId("site-list").addEventListener("change", onSitePicked);
  byId("details-form").addEventListener("change", (event) => {
    if (event.target.name === "consent") onConsentChanged();
  });
  byId("details-form").addEventListener("submit", onDetails);
  byId("shutter").addEventListener("click", onShutter);
  byId("retake").addEventListener("click", onRetake);
  byId("camera-done").addEventListener("click", onCameraDone);
  byId("file-input").addEventListener("change", onFilePicked);
  byId("review-list").addEventListener("click", onReviewClick);
  byId("more-photos").addEventListener("click", startCapture);
  byId("send").addEventListener("click", onSend);
  byId("finish").addEventListener("click", onFinish);
  byId("new-capture").addEventListener("click", () => {
    state.draft = newDraft();
    startIdentify();
  });
  for (const button of document.querySelectorAll("[data-action=discard]")) {
    button.addEventListener("click", discardDraft);
  }
  for (const button of document.querySelectorAll("[data-action=cancel]")) {
    button.addEventListener("click", () => {
      if (state.draft && state.draft.photos.length) showReview();
      else {
        state.draft = null;
        goHome();
      }
    });
  }
  for (const button of document.querySelectorAll("[data-action=identify-again]")) {
    button.addEventListener("click", startIdentify);
  }
}

async function resumeLogin() {
  try {
    const me = await whoAmI();
    if (me) await enter(me);
    else sessionEnded("");
  } catch {
    sessionEnded("You are offline. Photos on this device will be sent when you are back " +
      "online and logged in.");
    window.addEventListener("online", resumeLogin, { once: true });
  }
  await renderQueue();
}

async function boot() {
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("/sw.js").catch(() => {
      // the app works without it, only not offline
    });
  }
  wire();
  wireUploader();
  watchIdle();
  await resumeLogin();
}

boot();
