/**
 * The capture app: log in → identify the patient (wristband or MRN) → confirm → body site and
 * capture details → photos and video clips → review and send → study link. Photos can also be taken first and
 * the patient identified later ("capture now, identify later"); such photos stay encrypted on
 * the device and are never sent before a patient is assigned. A session launched from the EMR
 * (SMART) has its patient and encounter chosen there: a new capture skips the identification.
 *
 * Offline start: when the server cannot be reached, the app opens for the last-known login
 * kept (encrypted) on the device; patients are identified among those confirmed before, or
 * later; the photos wait encrypted. Back online, the server is asked again: the same login
 * goes on and the photos are sent; an ended login shows the login screen, the photos wait for
 * the next login.
 * @module app
 */

import { ApiError, NetworkError, call, login, logout, whoAmI } from "./api.js";
import {
  PHOTO_RESOLUTION, SCAN_RESOLUTION, cameraSupported, grabFrame, setResolution, startCamera,
  stopCamera, thumbnailOf, toJpeg,
} from "./camera.js";
import { CameraControls, sharpestOf } from "./camera-controls.js";
import { Guidance } from "./guidance.js";
import { renderHome, renderQueue } from "./home.js";
import { openPrior, releasePrior } from "./prior.js";
import {
  identifyScannedOffline, identifyTyped, identifyTypedOffline, identifyWristband, patientOf,
  readWristband, recentIdentification, rememberPatient,
} from "./identify.js";
import { PhotoView } from "./photo-view.js";
import { photoChecks } from "./quality.js";
import { CLIP_RESOLUTION, ClipRecording, clipType, clock } from "./recorder.js";
import { itemName, renderReview, showProgress } from "./review.js";
import { showUser } from "./shell.js";
import { loadSites, rememberSite, searchSites } from "./sites.js";
import * as store from "./store.js";
import {
  ask, byId, count, displayDate, displayName, h, keepBackInApp, paintBitmap, patientLine, say,
  sexText, showScreen,
} from "./ui.js";
import { Uploader } from "./uploader.js";

const uploader = new Uploader();
const guidance = new Guidance(byId("camera-video"), byId("guidance"));
const controls = new CameraControls(byId("camera-video"), { torch: byId("torch"),
  zoom: byId("zoom"), zoomBox: byId("zoom-box"), marker: byId("focus-mark") });
const photoView = new PhotoView(byId("photo-view"));

/** The longest clip the server takes (EBIW_MAX_VIDEO_SECONDS, in the page). */
const MAX_CLIP_SECONDS = Number(byId("main").dataset.maxVideoSeconds) || 60;

/** How often to ask the server again while the app runs on the last-known login. */
const RECONNECT_EVERY_MS = 20000;

/** The last draft being kept on the device (each waits for the one before: the latest wins). */
let keepingDraft = Promise.resolve();

/** The reconnection under way, if any (one at a time). */
let reconnecting = null;

/** Everything the app holds in memory; patient data lives only here and in encrypted IDB. */
const state = {
  me: null,
  /** Started without the server: `me` is the last-known login, not confirmed yet. */
  offline: false,
  /** @type {Draft|null} */
  draft: null,
  identification: null,
  /** The EMR launch of this session ({target, patient}: no scan needed), or null. */
  launch: null,
  sites: [],
  site: null,
  lastActivity: Date.now(),
  /** Studies completed since the app opened: {studyUid, photos, at}. */
  sent: [],
  /** The clip being recorded (recorder.js ClipRecording), or null. */
  recording: null,
};

/**
 * @typedef {object} Draft
 * @property {string} id
 * @property {string} user
 * @property {object|null} patient the confirmed patient (identify.js Patient)
 * @property {string|null} encounter
 * @property {object|null} worklistItem the chosen worklist item, if any
 * @property {object|null} details body site, laterality, consent…
 * @property {import("./sites.js").BodySite|null} site the body site of `details`
 * @property {string[]} photos upload UUIDs (photos and clips), in capture order
 * @property {Set<string>} clips which of them are video clips
 * @property {Map<string, ImageBitmap>} thumbs
 * @property {Map<string, object>} checks per photo: the app's quality verdict (quality.js
 *   photoChecks), with `chart` the live guidance's last word on the chart when the photo was
 *   taken (its px_per_mm at photo scale), and `kept: true` once the user chose to keep a
 *   photo that failed it
 * @property {Map<string, object>} results per photo: {state, loaded, total, photo, error}
 * @property {string|null} sessionId set once sent
 */

/** Redraw the status line of the queue. */
function refreshQueue() {
  return renderQueue(state.me && state.me.user, uploader);
}

/** Redraw the home screen's lists, with the server's word on this user's recent studies. */
async function refreshHome() {
  let recent = [];  // an account that may only view takes no photos
  if (state.me.role !== "view") {
    recent = await call("GET", "/api/v1/sessions/recent").then(({ body }) => body, () => null);
  }
  return renderHome(state.me.user, state.draft && state.draft.id, recent, state.sent);
}

function newDraft() {
  return { id: crypto.randomUUID(), user: state.me.user, patient: null, encounter: null,
    worklistItem: null, details: null, site: null, photos: [], clips: new Set(), thumbs: new Map(),
    checks: new Map(), results: new Map(), sessionId: null };
}

/**
 * Keep, encrypted on the device, what a draft with a confirmed patient holds besides its photos
 * (those are kept as taken): a reload or leaving the app resumes it with the patient and the
 * details. A draft without a patient keeps only its photos. Not kept (the storage failed):
 * the draft goes on in memory, its photos are safe all the same.
 * @param {Draft} draft
 * @returns {Promise<void>} settled once it is kept (never rejects)
 */
function keepDraft(draft) {
  if (!draft.patient) return keepingDraft;
  const { patient, encounter, worklistItem, details, site } = draft;
  const kept = { id: draft.id, user: draft.user, contents: { patient, encounter, worklistItem,
    details, site, checks: Object.fromEntries(draft.checks) } };
  keepingDraft = keepingDraft.then(() => store.keepDraft(kept)).catch(() => {});
  return keepingDraft;
}

/**
 * Forget what `keepDraft` kept for a draft, after any keeping of it still under way.
 * @param {string} draftId
 * @returns {Promise<void>} settled once forgotten (never rejects)
 */
function forgetDraft(draftId) {
  keepingDraft = keepingDraft.then(() => store.forgetDraft(draftId)).catch(() => {});
  return keepingDraft;
}

/** Delete a draft from the device: its held photos and what `keepDraft` kept. */
async function deleteDraftFromDevice(draftId) {
  const photos = await store.listPhotos();
  for (const p of photos.filter((x) => x.draftId === draftId && x.state === "held")) {
    await store.deletePhoto(p.uuid);
  }
  await forgetDraft(draftId);
}

// --- errors and the login ---------------------------------------------------------------------

const LOGIN_ENDED = "Your login has ended. Log in again";

/**
 * A message as the screens show it: a sentence with a capital and a full stop (the server's
 * messages are lower-case phrases).
 * @param {string} message
 * @returns {string}
 */
function sentence(message) {
  const text = message.trim();
  return text && `${text.charAt(0).toUpperCase()}${text.slice(1)}${
    /[.!?…]$/.test(text) ? "" : "."}`;
}

/**
 * Say what went wrong in `element`; a login the server no longer knows sends the user to the
 * login screen, saying it ended.
 * @param {unknown} error
 * @param {HTMLElement} element
 */
function report(error, element) {
  if (error instanceof ApiError && error.needsLogin && state.me) {
    sessionEnded(`${LOGIN_ENDED} to continue.`);
  } else if (error instanceof NetworkError) {
    say(element, "No connection to the server. Try again when you are back online.");
  } else {
    say(element, sentence(error instanceof Error ? error.message : String(error)));
  }
}

/** Take every patient detail off the page (the screens are hidden, not gone). */
function clearPatientViews() {
  for (const id of ["patient-list", "review-list", "shots"]) byId(id).replaceChildren();
  for (const id of ["patient-read", "patient-warning", "done-summary", "scan-status"]) say(byId(id));
  for (const element of document.querySelectorAll("[data-patient-line]")) element.textContent = "";
  byId("mrn-form").reset();
  byId("details-form").reset();
  byId("discard-dialog").close();  // it names the patient
}

/** Show the login screen, forgetting the user and the patient (their photos stay queued). */
function showLogin(message) {
  state.me = null;
  state.draft = null;
  state.identification = null;
  state.launch = null;
  stopCameras();
  releasePrior();
  clearPatientViews();
  showUser(null);
  say(byId("login-error"), message);
  showScreen("login");
}

/** The server no longer knows this login: pause sending until the user logs in again. */
function sessionEnded(message) {
  uploader.setUser(null);
  store.forgetLogin().catch(() => {});  // the server ended it: no offline start with it
  showLogin(message);
}

/**
 * The launch context of a session opened from the EMR, or null when it cannot be read (then
 * the patient is identified as usual, which the server refuses to such a session).
 */
async function launchContext() {
  try {
    const { body } = await call("GET", "/launch/context");
    return { target: body.target, patient: patientOf(body.patient) };
  } catch {
    return null;
  }
}

/**
 * Open the home screen for `me`. Photos are sent only once the server confirmed the login
 * (offline, the uploader waits: it has no CSRF token yet).
 * @param {object} me the login (from the server, or the last-known one when offline)
 * @param {{target: string, patient: object}|null} launch the EMR launch of the login, if any
 */
async function enter(me, launch) {
  state.me = me;
  state.launch = launch;
  showUser(me);
  byId("role-warning").hidden = me.role !== "view";
  byId("start").disabled = me.role === "view";
  byId("start-emergency").disabled = me.role === "view";
  uploader.setUser(state.offline ? null : me.user);
  showOffline();
  await refreshHome();
  showScreen("home");
  if (state.launch && state.launch.target === "capture") startLaunched();
}

/**
 * Keep a login the server confirmed (never its CSRF token) on the device, for starting offline.
 * @param {object} me
 * @param {{target: string, patient: object}|null} launch
 */
async function keepLogin(me, launch) {
  const { user, role, expires_at, idle_timeout_seconds, launched } = me;
  await store.rememberLogin({ user, role, expires_at, idle_timeout_seconds,
    launched: Boolean(launched), launch });
}

/**
 * Open the app for a login the server just confirmed (and keep it for an offline start).
 * @param {object} me the answer of POST /login or GET /api/v1/me
 */
async function enterOnline(me) {
  state.offline = false;
  const launch = me.launched ? await launchContext() : null;
  await keepLogin(me, launch);
  await enter(me, launch);
}

/**
 * Why a login was refused, as the login screen says it: wrong credentials (the same words for
 * an unknown user), a lock with its minutes, too many attempts; never that a login ended.
 * @param {unknown} failure
 * @returns {string}
 */
function loginRefusal(failure) {
  if (failure instanceof ApiError && failure.code === "login_failed") {
    return "Wrong username or password.";
  }
  if (failure instanceof NetworkError) {
    return "No connection to the server. Try again when you are back online.";
  }
  return sentence(failure instanceof Error ? failure.message : String(failure));
}

async function onLogin(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const error = byId("login-error");
  say(error);
  try {
    const me = await login(form.username.value.trim(), form.password.value);
    form.reset();
    await enterOnline(me);
  } catch (failure) {
    if (state.me) report(failure, error);  // logged in: something after the login failed
    else say(error, loginRefusal(failure));
  }
}

/**
 * Log out, once the user agreed to lose their photos not sent yet: those are deleted from the
 * device with the rest of what this user left here; other users' photos stay for them.
 */
async function onLogout() {
  const { user } = state.me;
  const photos = await store.listPhotos();
  const waiting = photos.filter((p) => p.user === user).length;
  if (waiting) {
    byId("logout-warning").textContent = `${count(waiting)} you took on this device ${
      waiting === 1 ? "has" : "have"} not been sent. Logging out deletes ${
      waiting === 1 ? "it" : "them"} for good.${photos.length > waiting
      ? " Other users' photos stay here for them." : ""}`;
    if (await ask(byId("logout-dialog")) !== "logout") return;
  }
  uploader.setUser(null);
  try {
    await logout();
  } catch {
    // offline: the server session times out by itself; the device is purged all the same
  }
  await keepingDraft;  // a draft still being kept goes with the rest
  await store.purgeUser(user);
  state.sent = [];
  sessionEnded("");
  await refreshQueue();
}

/**
 * Forget the patient in memory and ask for the login again; waiting photos keep going. The
 * last-known login is forgotten too: a locked app does not open again offline.
 */
function lock() {
  state.offline = false;
  store.forgetLogin().catch(() => {});
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

// --- home ------------------------------------------------------------------------------------

async function onHomeClick(event) {
  const target = event.target.closest("button");
  if (!target) return;
  const photos = await store.listPhotos();
  if (target.dataset.resume) {
    await resumeDraft(target.dataset.resume, photos);
    return;
  } else if (target.dataset.discard) {
    const draftId = target.dataset.discard;
    const held = photos.filter((p) => p.draftId === draftId && p.state === "held").length;
    if (held) {  // as from the review: photos not sent are deleted only once confirmed
      const kept = await store.keptDraft(draftId).catch(() => null);
      if (!(await askDiscard(count(held), kept && kept.patient, held > 1))) return;
    }
    await deleteDraftFromDevice(draftId);
  } else if (target.dataset.drop) {
    await store.deletePhoto(target.dataset.drop);
    uploader.kick();
  } else if (target.dataset.dropSession) {
    for (const p of photos.filter((x) => x.sessionId === target.dataset.dropSession)) {
      await store.deletePhoto(p.uuid);
    }
    await store.deleteSession(target.dataset.dropSession);
  }
  await refreshHome();
  await refreshQueue();
}

/**
 * Go on with a draft left on the device where it was: identify the patient when it has none,
 * else the details when they are missing, else the review when it has photos, else the camera.
 * @param {string} draftId
 * @param {object[]} photos every photo's metadata (store.listPhotos)
 */
async function resumeDraft(draftId, photos) {
  const draft = newDraft();
  draft.id = draftId;
  draft.photos = photos.filter((p) => p.draftId === draftId && p.state === "held")
    .map((p) => p.uuid);
  const kept = await store.keptDraft(draftId).catch(() => null);
  if (kept) {
    Object.assign(draft, { patient: kept.patient, encounter: kept.encounter,
      worklistItem: kept.worklistItem, details: kept.details, site: kept.site,
      checks: new Map(Object.entries(kept.checks || {})) });
  }
  state.draft = draft;
  await loadThumbnails(draft, photos);
  if (!draft.patient) startIdentify();
  else if (!draft.details) startDetails(departmentOf(draft));
  else if (draft.photos.length) showReview();
  else startCapture();
}

async function loadThumbnails(draft, photos) {
  for (const record of photos.filter((p) => draft.photos.includes(p.uuid))) {
    if (record.type.startsWith("video/")) {  // a clip: listed without a picture
      draft.clips.add(record.uuid);
      continue;
    }
    const blob = await store.photoBlob(record);
    draft.thumbs.set(record.uuid, await thumbnailOf(blob));
  }
}

// --- identify and confirm the patient ----------------------------------------------------------

/** A new capture: of the patient the EMR launched the app for, else identify the patient. */
function startNew() {
  if (state.launch) {
    startLaunched();
    return;
  }
  state.draft = newDraft();
  startIdentify();
}

/** A draft for the launch patient and encounter, confirmed by the EMR: straight to the details. */
function startLaunched() {
  const { patient } = state.launch;
  const encounter = patient.encounters[0] || null;
  state.draft = newDraft();
  state.draft.patient = patient;
  state.draft.encounter = encounter ? encounter.id : null;
  keepDraft(state.draft);
  startDetails(encounter ? encounter.department : null);
}

function stopCameras() {
  if (state.recording) state.recording.stop();  // what was recorded so far is kept
  guidance.stop();
  controls.detach();
  stopCamera(byId("scan-video"));
  stopCamera(byId("camera-video"));
}

/**
 * The identify screen with its camera on.
 * @param {string} [mrn] put back in the MRN field, selected for correcting (a typed MRN that
 *   found nobody)
 */
async function startIdentify(mrn = "") {
  byId("mrn-form").reset();
  byId("mrn").value = mrn;
  say(byId("scan-status"));
  showScreen("identify");
  if (mrn) byId("mrn").select();
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

/**
 * Identify the patient with the server (`online`) or, offline, among the patients this user
 * confirmed before on this device (`offline`); then show them for confirmation. A failure
 * (`offline` throws when it cannot identify that way) is said on the identify screen.
 * @param {() => Promise<object>} online
 * @param {() => Promise<object>} offline
 */
async function identified(online, offline) {
  const status = byId("scan-status");
  say(status, "Looking up the patient…");
  if (state.offline) await reconnect();
  if (!state.me) return;  // the login ended meanwhile: the login screen shows
  try {
    state.identification = await (state.offline ? offline() : online().catch((error) => {
      if (error instanceof NetworkError) return offline();
      throw error;
    }));
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
  const { read, how, patients, incomplete } = state.identification;
  byId("patient-title").textContent = patients.length ? "Confirm the patient" : "No patient found";
  document.querySelector("#screen-patient [data-action=identify-again]").textContent =
    patients.length ? "Not this patient — identify again" : "Try again";
  say(byId("patient-read"), read && how === "scanned" ? `Read: ${read}` : "");
  say(byId("patient-warning"), [patientWarning(state.identification), incomplete
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

/**
 * What the patient screen says above the patients found: that nobody has the typed MRN or the
 * wristband, or that several match; offline, that the patients listed are those confirmed
 * before, or that this patient cannot be identified offline (never anyone else).
 * @param {import("./identify.js").Identification} identification
 * @returns {string}
 */
function patientWarning({ read, how, patients, offline }) {
  if (!offline) {
    if (patients.length) {
      return patients.length > 1 ? "Several patients match: check the name and birth date." : "";
    }
    return how === "typed" ? `No patient with MRN ${read} found. Check the MRN and try again.`
      : "No patient found for this wristband. Check it and try again, or type the MRN.";
  }
  const later = "To take the photos now, use “Capture now, identify later”.";
  if (patients.length) {
    return how === "list"
      ? "Offline: only the patients you confirmed before on this device are listed. Check the " +
        "name and birth date."
      : "Offline: found among the patients you confirmed before on this device. Check the name " +
        "and birth date.";
  }
  if (how === "list") return `Offline: no patient was confirmed on this device before. ${later}`;
  const what = how === "scanned" ? "this wristband" : "this MRN";
  return `Offline: no patient you confirmed before on this device has ${what}. This patient ` +
    `cannot be identified offline: type or scan again when you are back online. ${later}`;
}

/** @returns {string} the MRN just typed if it found nobody (to correct it), else "" */
function typedNotFound() {
  const found = state.identification;
  return found && found.how === "typed" && !found.patients.length ? found.read : "";
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
  rememberPatient(state.me.user, patient).catch(() => {});  // for identifying offline later
  keepDraft(state.draft);
  startDetails(departmentOf(state.draft));
}

/** @returns {string|null} the department of the draft's encounter, if known */
function departmentOf(draft) {
  const encounter = draft.patient.encounters.find((e) => e.id === draft.encounter);
  return encounter ? encounter.department : null;
}

// --- body site and capture details ------------------------------------------------------------

function renderPatientLines() {
  const patient = state.draft && state.draft.patient;
  for (const element of document.querySelectorAll("[data-patient-line]")) {
    if (patient) element.replaceChildren(...patientLine(patient));
    else element.textContent = "Patient not identified yet";
    element.classList.toggle("unidentified", !patient);
  }
}

async function startDetails(department) {
  const form = byId("details-form");
  const previous = state.draft.details;
  if (previous) {
    fillDetails(previous, state.draft.site);
  } else {
    form.reset();
    byId("consent-group").removeAttribute("aria-invalid");
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

/**
 * Put a draft's details back in the form (a resumed draft: the page was reloaded since).
 * @param {object} details
 * @param {import("./sites.js").BodySite} site
 */
function fillDetails(details, site) {
  const form = byId("details-form");
  state.site = site;
  form.reset();
  if (details.laterality) form.laterality.value = details.laterality;
  form.view.value = details.description || "";
  form.consent.value = details.consent;
  byId("sensitive").checked = details.sensitive;
  form.source.value = details.source;
  form.department.value = details.department || "";
  onConsentChanged();
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
  byId("consent-group").removeAttribute("aria-invalid");
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
      : !consent ? "Consent is required: record whether the patient gave it (given, declined " +
        "or not required)."
        : consent === "declined" ? "Consent was declined: no photos may be taken or sent." : "";
  if (consent) byId("consent-group").removeAttribute("aria-invalid");
  else byId("consent-group").setAttribute("aria-invalid", "true");
  if (problem) {
    say(error, problem);
    if (problem.startsWith("Consent is required")) form.consent[0].focus();
    return;
  }
  say(error);
  const before = state.draft.details;
  state.draft.details = {
    body_site: site.code,
    laterality: site.paired ? laterality : null,
    description: form.view.value.trim() || null,
    consent,
    sensitive: byId("sensitive").checked || site.sensitive,
    source: form.source.value || "provider",
    department: form.department.value.trim() || null,
  };
  state.draft.site = site;
  rememberSite(site.code);
  const moved = before && (before.body_site !== site.code
    || before.laterality !== state.draft.details.laterality);
  if (moved) releasePrior();  // the earlier photo held was of the other site or side
  keepDraft(state.draft);
  if (state.draft.photos.length) showReview();
  else startCapture();
}

// --- taking photos ----------------------------------------------------------------------------

async function startCapture() {
  renderPatientLines();
  renderStrip();
  say(byId("camera-status"));
  showScreen("camera");
  openPrior(state.draft, !isOffline());
  if (!cameraSupported()) {
    say(byId("camera-status"), "No live camera here: use the camera app.");
    return;
  }
  try {
    await startCamera(byId("camera-video"), PHOTO_RESOLUTION);
  } catch {
    say(byId("camera-status"), "The camera is not available: use the camera app.");
    return;
  }
  if (byId("screen-camera").hidden) return;  // left while the camera started
  controls.attach();
  guidance.start();
}

function renderStrip() {
  const draft = state.draft;
  byId("shots").replaceChildren(...draft.photos.map((uuid, i) => {
    const canvas = h("canvas", { class: "thumb", role: "listitem",
      "aria-label": `${draft.clips.has(uuid) ? "Clip" : "Photo"} ${i + 1}` });
    paintBitmap(canvas, draft.thumbs.get(uuid));
    return canvas;
  }));
  byId("retake").disabled = draft.photos.length === 0 || Boolean(state.recording);
  byId("camera-done").textContent = draft.photos.length ? `Done (${draft.photos.length})` : "Done";
}

async function keepPhoto(uuid, blob, thumb, verdict) {
  const draft = state.draft;
  await store.savePhoto({ uuid, user: draft.user, draftId: draft.id, blob });
  performance.mark(`ebiw:kept:${uuid}`);
  draft.photos.push(uuid);
  draft.thumbs.set(uuid, thumb);
  draft.checks.set(uuid, verdict);
  keepDraft(draft);
  renderStrip();
  await refreshQueue();
}

async function onShutter() {
  const shutter = byId("shutter");
  const status = byId("camera-status");
  const uuid = crypto.randomUUID();
  shutter.disabled = true;
  try {
    performance.mark(`ebiw:shutter:${uuid}`);
    say(status, "Hold still…");  // the burst: about half a second
    const { canvas: frame, frames } = await sharpestOf(byId("camera-video"));
    say(status, "Saving…");
    const verdict = { ...photoChecks(frame), chart: guidance.latest && guidance.latest.chart,
      width: frame.width };
    const [blob, thumb] = await Promise.all([toJpeg(frame),
      thumbnailOf(frame)]);
    await keepPhoto(uuid, blob, thumb, verdict);
    say(status, `${count(state.draft.photos.length)} taken · kept the sharpest of ${frames}`);
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
    const thumb = await thumbnailOf(file);
    await keepPhoto(crypto.randomUUID(), file, thumb, photoChecks(await canvasOf(file)));
    say(status, `${count(state.draft.photos.length)} taken`);
  } catch {
    say(status, "This file is not a photo the app can read.");
  }
}

/** Show the camera screen's controls as they are while a clip records, or not. */
function showRecording(recording) {
  const record = byId("record");
  record.setAttribute("aria-pressed", String(recording));
  record.setAttribute("aria-label", recording ? "Stop recording" : "Record clip");
  for (const id of ["shutter", "camera-done", "camera-back", "file-input"]) {
    byId(id).disabled = recording;
  }
  byId("retake").disabled = recording || state.draft.photos.length === 0;
  byId("record-countdown").hidden = !recording;
}

/**
 * Record a clip from the live camera (at most 1080p, no sound) until the button is pressed
 * again or the server's limit is reached, with the time left shown (the live guidance pauses);
 * kept like a photo (encrypted on the device, then sent by the uploader with the recorder's
 * media type).
 */
async function onRecord() {
  if (state.recording) {
    state.recording.stop();
    return;
  }
  const video = byId("camera-video");
  const status = byId("camera-status");
  const type = clipType();
  if (!type || !video.srcObject) {
    say(status, "Clips cannot be recorded in this browser.");
    return;
  }
  const uuid = crypto.randomUUID();
  const countdown = byId("record-countdown");
  const record = byId("record");
  record.disabled = true;  // until the recording runs: one press, one clip
  let recording;
  try {
    const thumb = await thumbnailOf(grabFrame(video));  // the clip's first picture
    await setResolution(video, CLIP_RESOLUTION);
    recording = new ClipRecording(video, type, MAX_CLIP_SECONDS, (left) => {
      countdown.textContent = `Recording · ${clock(left)} left`;
    });
    state.recording = recording;
    guidance.stop();  // photo advice, and its frames sent to the server, pause while recording
    showRecording(true);
    record.disabled = false;
    say(status, `Recording a clip of up to ${clock(MAX_CLIP_SECONDS)}: press the button again to stop.`);
    const clip = await recording.done;
    state.draft.clips.add(uuid);
    await keepPhoto(uuid, clip, thumb, { ok: true });
    say(status, `Clip kept · ${count(state.draft.photos.length, "item")} taken`);
  } catch (error) {
    say(status, `The clip could not be recorded: ${error.message}`);
  } finally {
    record.disabled = false;
    if (state.recording === recording) state.recording = null;
    if (state.draft) showRecording(false);
    if (video.srcObject) {  // still on the camera screen
      setResolution(video, PHOTO_RESOLUTION);
      guidance.start();
    }
  }
}

/** A picked file at full resolution, drawn into a canvas (for its quality checks). */
async function canvasOf(file) {
  const bitmap = await createImageBitmap(file);
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  bitmap.close();
  return canvas;
}

async function onRetake() {
  const uuid = state.draft.photos.pop();
  if (!uuid) return;
  state.draft.thumbs.delete(uuid);
  state.draft.checks.delete(uuid);
  state.draft.clips.delete(uuid);
  await store.deletePhoto(uuid);
  renderStrip();
  await refreshQueue();
  say(byId("camera-status"), "Last photo deleted: take it again.");
}

/** On to the review once there is a photo; without one, the camera keeps running and says so. */
function onCameraDone() {
  if (!state.draft.photos.length) {
    say(byId("camera-status"), "Take at least one photo first.");
    return;
  }
  stopCameras();
  showReview();
}

/**
 * Leave the camera without taking more: to the review when the draft has photos, else to its
 * details (a draft with neither patient nor details, captured before identifying: home).
 */
function onCameraBack() {
  const draft = state.draft;
  stopCameras();
  if (draft.photos.length) {
    showReview();
  } else if (draft.patient || draft.details) {
    startDetails(draft.patient ? departmentOf(draft) : null);
  } else {
    state.draft = null;
    goHome();
  }
}

// --- review and send --------------------------------------------------------------------------

function showReview() {
  renderPatientLines();
  renderReview(state.draft);
  say(byId("review-error"));
  showScreen("review");
}

/** Drop a photo of the draft, here and on the device. */
async function removePhoto(uuid) {
  const draft = state.draft;
  draft.photos = draft.photos.filter((u) => u !== uuid);
  draft.thumbs.delete(uuid);
  draft.checks.delete(uuid);
  draft.clips.delete(uuid);
  await store.deletePhoto(uuid);
  await refreshQueue();
}

/**
 * A photo of the draft full screen: at full resolution while it is on the device, else (sent
 * and deleted from the device) its thumbnail.
 */
async function viewPhoto(uuid) {
  const draft = state.draft;
  const title = `Photo ${draft.photos.indexOf(uuid) + 1}`;
  let full;
  try {
    full = await createImageBitmap(await store.photoBlob({ uuid, type: "image/jpeg" }));
  } catch {
    const thumb = draft.thumbs.get(uuid);
    if (thumb) photoView.open(thumb, title);
    return;
  }
  photoView.open(full, title);
  full.close();
}

/**
 * Delete one photo or clip of the draft once the user confirmed it in the discard dialog
 * ("Delete photo 2 of DEMO, Alice?"), then show the review without it, the focus on the Remove
 * of the photo now in its place (else the one before it, else Take more). Keep, the default,
 * and Escape change nothing, as does an answer that comes after the draft moved on.
 * @param {string} uuid
 */
async function confirmRemove(uuid) {
  const draft = state.draft;
  const confirmed = await askDiscard(itemName(draft, uuid).toLowerCase(), draft.patient, false);
  if (!confirmed || state.draft !== draft || !draft.photos.includes(uuid)) return;
  const place = draft.photos.indexOf(uuid);
  await removePhoto(uuid);
  renderReview(draft);
  const removes = byId("review-list").querySelectorAll("[data-remove]");
  (removes[Math.min(place, removes.length - 1)] || byId("more-photos")).focus();
}

async function onReviewClick(event) {
  const button = event.target.closest("button");
  if (!button) return;
  const { remove, retake, keep, view } = button.dataset;
  if (view) {
    await viewPhoto(view);
  } else if (keep) {
    state.draft.checks.get(keep).kept = true;
    keepDraft(state.draft);
    renderReview(state.draft);
    document.querySelector(`#review-list [data-view="${keep}"]`).focus();
  } else if (remove) {
    await confirmRemove(remove);
  } else if (retake) {
    await removePhoto(retake);
    startCapture();
  }
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

/**
 * Queue the draft as one session for the uploader. Once per draft: a second tap while it is
 * queued, or after, does nothing (its sessionId is set before the first await).
 */
async function onSend() {
  const draft = state.draft;
  if (draft.sessionId) return;
  if (!draft.patient || !draft.details) {
    startIdentify();
    return;
  }
  const send = byId("send");
  send.disabled = true;
  draft.sessionId = crypto.randomUUID();
  try {
    await keepingDraft;  // queueing forgets the kept draft: nothing may keep it again after
    await store.queueSession({ id: draft.sessionId, user: draft.user, draftId: draft.id,
      body: sessionRequest(draft) });
  } catch (error) {
    draft.sessionId = null;
    send.disabled = false;
    report(error, byId("review-error"));
    return;
  }
  for (const uuid of draft.photos) draft.results.set(uuid, { state: "queued" });
  renderReview(state.draft);
  byId("finish").focus();  // Send is hidden now: focus would fall to the page
  uploader.kick();
}

function onFinish() {
  const draft = state.draft;
  releasePrior();
  if (draft.complete) {
    const link = byId("study-link");
    link.href = `/studies/${draft.studyUid}`;
    say(byId("done-summary"), `${count(draft.photos.length)} of ${
      draft.patient ? displayName(draft.patient) : "the patient"} stored in one study.`);
    state.draft = null;
    showScreen("done");
  } else {
    state.draft = null;
    goHome();
  }
}

/**
 * What discarding `draft` deletes, in words: "2 photos", "1 photo and 1 clip".
 * @param {Draft} draft
 * @returns {string}
 */
function draftContents(draft) {
  const clips = draft.clips.size;
  const photos = draft.photos.length - clips;
  return [photos ? count(photos) : "", clips ? count(clips, "clip") : ""]
    .filter(Boolean).join(" and ");
}

/**
 * Drop the draft and go home. Photos not sent are deleted from the device only once the user
 * confirmed it (Keep, the default, and Escape change nothing); a draft without photos goes
 * without asking.
 */
async function discardDraft() {
  const draft = state.draft;
  if (draft.photos.length) {
    const confirmed = await askDiscard(draftContents(draft), draft.patient,
      draft.photos.length > 1);
    if (!confirmed || state.draft !== draft) return;
  }
  for (const uuid of draft.photos) await store.deletePhoto(uuid);
  await forgetDraft(draft.id);
  state.draft = null;
  await refreshQueue();
  goHome();
}

/**
 * Whether the user confirms deleting `what` ("2 photos", "photo 2") of `patient`, if known, not
 * sent yet, in the discard dialog: "Delete 2 photos of DEMO, Alice?", with the warning and the
 * Keep button (the default) worded for one item or several. The dialog names the patient: its
 * title is emptied once answered.
 * @param {string} what
 * @param {import("./identify.js").Patient|null|undefined} patient
 * @param {boolean} several whether `what` is more than one item
 * @returns {Promise<boolean>}
 */
async function askDiscard(what, patient, several) {
  const title = byId("discard-dialog-title");
  title.textContent = `Delete ${what}${patient ? ` of ${displayName(patient)}` : ""}?`;
  byId("discard-warning").textContent =
    `${several ? "They have" : "It has"} not been sent and cannot be recovered.`;
  byId("discard-keep").textContent = several ? "Keep them" : "Keep it";
  const choice = await ask(byId("discard-dialog"));
  title.textContent = "";
  return choice === "discard";
}

async function goHome() {
  stopCameras();
  releasePrior();
  state.identification = null;
  await refreshHome();
  showScreen("home");
}

// --- uploader events --------------------------------------------------------------------------

function draftOf(sessionId) {
  return state.draft && state.draft.sessionId === sessionId ? state.draft : null;
}

function wireUploader() {
  uploader.addEventListener("change", () => refreshQueue());
  uploader.addEventListener("progress", ({ detail }) => {
    const draft = state.draft;
    if (draft && draft.photos.includes(detail.uuid)) {
      showProgress(draft, detail.uuid, detail.loaded, detail.total);
    }
  });
  uploader.addEventListener("stored", ({ detail }) => {
    const draft = draftOf(detail.sessionId);
    if (draft) {
      // 202: a clip the server re-encodes in the background before storing it
      const processing = detail.photo && detail.photo.status === "processing";
      draft.results.set(detail.uuid, { state: processing ? "processing" : "stored",
        photo: detail.photo });
      renderReview(draft);
    } else if (!byId("screen-home").hidden && state.me) {
      refreshHome();
    }
  });
  uploader.addEventListener("failed", ({ detail }) => {
    const draft = draftOf(detail.sessionId);
    if (draft) {  // refused: it stays on the device, the review says why
      draft.results.set(detail.uuid, { state: "failed", error: detail.error });
      renderReview(draft);
    }
  });
  uploader.addEventListener("complete", ({ detail }) => {
    const photos = detail.session.photo_count || 0;
    state.sent.unshift({ studyUid: detail.session.study_instance_uid, photos, at: Date.now() });
    const draft = draftOf(detail.sessionId);
    if (draft) {
      draft.complete = true;
      draft.studyUid = detail.session.study_instance_uid;
      renderReview(draft);
    } else if (!byId("screen-home").hidden && state.me) {
      refreshHome();
    }
  });
  uploader.addEventListener("login-needed", () => sessionEnded(
    `${LOGIN_ENDED} to send the photos waiting on this device.`));
  setInterval(() => { if (uploader.retryAt) refreshQueue(); }, 1000);
  window.addEventListener("offline", () => refreshQueue());
}

/** Cancel identifying: back to the review when the draft has photos, else home without it. */
function onCancel() {
  if (state.draft && state.draft.photos.length) {
    showReview();
  } else {
    if (state.draft) forgetDraft(state.draft.id);
    state.draft = null;
    goHome();
  }
}

/**
 * The phone's Back button (popstate, once keepBackInApp's entry is gone): one screen back in
 * the app, a dialog open is closed, a clip recording stops; from home or the login screen it
 * leaves the app. A draft left for home stays on the device, to continue from there.
 */
function onBack() {
  const dialog = document.querySelector("dialog[open]");
  const screen = [...document.querySelectorAll(".screen")].find((s) => !s.hidden);
  const name = screen ? screen.id.replace("screen-", "") : "login";
  if (name === "home" || name === "login") {
    history.back();
    return;
  }
  keepBackInApp();  // still in the app: the next Back comes here too
  const draft = state.draft;
  if (dialog) {
    dialog.close();
  } else if (state.recording) {
    state.recording.stop();
  } else if (name === "identify") {
    onCancel();
  } else if (name === "patient") {
    startIdentify(typedNotFound());
  } else if (name === "details") {
    if (draft.photos.length && draft.details) showReview();
    else if (state.launch || !draft.patient) leaveDraft();
    else startIdentify();
  } else if (name === "camera") {
    onCameraBack();
  } else if (name === "review") {
    if (draft.sessionId) onFinish();
    else leaveDraft();
  } else {
    goHome();
  }
}

/** Home, the draft staying on the device to continue from there. */
function leaveDraft() {
  state.draft = null;
  goHome();
}

// --- start ------------------------------------------------------------------------------------

function wire() {
  byId("login-form").addEventListener("submit", onLogin);
  byId("logout").addEventListener("click", onLogout);
  byId("start").addEventListener("click", startNew);
  byId("start-emergency").addEventListener("click", () => {
    state.draft = newDraft();
    startCapture();
  });
  byId("screen-home").addEventListener("click", onHomeClick);
  byId("scan").addEventListener("click", async () => {
    const video = byId("scan-video");
    const barcode = await readWristband(video);  // decoded on the phone, if it can: offline too
    identified(() => identifyWristband(video, barcode),
      () => identifyScannedOffline(state.me.user, barcode));
  });
  byId("recent-patients").addEventListener("click", () => identified(
    () => recentIdentification(state.me.user), () => recentIdentification(state.me.user)));
  byId("mrn-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const mrn = byId("mrn").value.trim();
    if (mrn) {
      identified(() => identifyTyped(mrn), () => identifyTypedOffline(state.me.user, mrn));
    }
  });
  byId("patient-list").addEventListener("click", onConfirmPatient);
  byId("site-search").addEventListener("input", renderSites);
  byId("site-list").addEventListener("change", onSitePicked);
  byId("details-form").addEventListener("change", (event) => {
    if (event.target.name === "consent") onConsentChanged();
  });
  byId("details-form").addEventListener("submit", onDetails);
  byId("shutter").addEventListener("click", onShutter);
  byId("record").addEventListener("click", onRecord);
  byId("retake").addEventListener("click", onRetake);
  byId("camera-done").addEventListener("click", onCameraDone);
  byId("camera-back").addEventListener("click", onCameraBack);
  byId("file-input").addEventListener("change", onFilePicked);
  byId("review-list").addEventListener("click", onReviewClick);
  byId("more-photos").addEventListener("click", startCapture);
  byId("change-details").addEventListener("click", () => startDetails(null));
  byId("send").addEventListener("click", onSend);
  byId("finish").addEventListener("click", onFinish);
  byId("new-capture").addEventListener("click", startNew);
  for (const button of document.querySelectorAll("[data-action=discard]")) {
    button.addEventListener("click", discardDraft);
  }
  for (const button of document.querySelectorAll("[data-action=cancel]")) {
    button.addEventListener("click", onCancel);
  }
  window.addEventListener("popstate", onBack);
  for (const button of document.querySelectorAll("[data-action=identify-again]")) {
    button.addEventListener("click", () => startIdentify(typedNotFound()));
  }
}

/** Whether the server is out of reach (as far as the app knows). */
function isOffline() {
  return state.offline || !navigator.onLine;
}

/** Show the offline state: the note on the home screen, the list of patients confirmed before. */
function showOffline() {
  const offline = Boolean(state.me) && isOffline();
  byId("offline-note").hidden = !offline;
  byId("recent-patients").hidden = !offline;
}

/**
 * The last-known login kept on the device, while it has not expired; else null.
 * @returns {Promise<object|null>}
 */
async function lastValidLogin() {
  try {
    const known = await store.lastLogin();
    return known && (!known.expires_at || Date.parse(known.expires_at) > Date.now()) ? known : null;
  } catch {
    return null;  // nothing kept, or unreadable: log in online
  }
}

/**
 * The server answered that nobody is logged in: show the login screen, saying the login ended
 * if there was one. The photos waiting on the device stay, encrypted, for that user's next
 * login.
 */
async function loginEnded() {
  const hadLogin = Boolean(state.me) || Boolean(await store.lastLogin().catch(() => null));
  state.offline = false;
  sessionEnded(hadLogin ? `${LOGIN_ENDED} to send the photos waiting on this device.` : "");
}

/**
 * The server is out of reach at start: open the app for the last-known login (photos wait on
 * the device), or show the login screen when there is none; ask the server again later.
 */
async function startOffline() {
  state.offline = true;
  const known = await lastValidLogin();
  if (known) {
    await enter(known, known.launch);
  } else {
    sessionEnded("You are offline. Photos on this device will be sent when you are back " +
      "online and logged in.");
  }
  await refreshQueue();
}

/**
 * While the app runs without the server: ask it again. The same login goes on where it is (the
 * photos start going), another login opens its home screen, an ended login shows the login
 * screen; still out of reach changes nothing.
 * @returns {Promise<void>}
 */
function reconnect() {
  if (!reconnecting) {
    reconnecting = (async () => {
      let me;
      try {
        me = await whoAmI();
      } catch {
        return;  // still offline
      }
      if (me && state.me && me.user === state.me.user) {
        state.offline = false;
        await keepLogin(me, state.launch);
        state.me = me;
        uploader.setUser(me.user);
        showOffline();
      } else if (me) {
        await enterOnline(me);
      } else {
        await loginEnded();
      }
      await refreshQueue();
    })().finally(() => { reconnecting = null; });
  }
  return reconnecting;
}

/** Ask the server who is logged in and open the app for that (or offline, see startOffline). */
async function resumeLogin() {
  let me;
  try {
    me = await whoAmI();
  } catch {
    await startOffline();
    return;
  }
  if (me) await enterOnline(me);
  else await loginEnded();
  await refreshQueue();
}

/** Follow the network: show the offline state, and reconnect when it comes back. */
function watchNetwork() {
  window.addEventListener("offline", showOffline);
  window.addEventListener("online", () => {
    showOffline();
    if (state.offline) reconnect();
  });
  setInterval(() => { if (state.offline && navigator.onLine) reconnect(); }, RECONNECT_EVERY_MS);
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
  watchNetwork();
  await resumeLogin();
}

boot();
