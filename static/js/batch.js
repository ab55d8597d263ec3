/**
 * The batch page (/batch): drop many photos, send them (see batch-queue.js), review the
 * patient groups the server sorted them into (see batch-review.js), confirm each group.
 *
 * The batch id lives in the page's fragment (#<uuid>, never sent to the server), so a reload
 * keeps the batch: the review comes back from the server, and files dropped again are hashed
 * and recognised (upload UUID = UUIDv5(batch id, SHA-256)) instead of sent twice. Photos are
 * not kept by the browser; file names never leave it.
 * @module batch
 */

import { ApiError, NetworkError, call, whoAmI } from "./api.js";
import { acceptable, inFileOrder, sha256Hex, uuidV5 } from "./batch-files.js";
import { BatchQueue } from "./batch-queue.js";
import { addedPatient, renderReview } from "./batch-review.js";
import { thumbnailOf } from "./camera.js";
import { loadSites } from "./sites.js";
import { ask, byId, count, h, rebuildKeepingFocus, say } from "./ui.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const THUMB_TYPES = new Set(["image/jpeg", "image/png", "image/webp"]);
const REFRESH_MS = 800;

const state = {
  batch: null,
  /** @type {BatchQueue|null} */
  queue: null,
  /** @type {Map<string, {name: string, thumb?: ImageBitmap}>} files on this device */
  local: new Map(),
  hashing: 0,
  refreshTimer: null,
  /** @type {import("./sites.js").BodySite[]} */
  sites: [],
  /** Per group: the body site and side entered for its confirmation. */
  details: new Map(),
  /** @type {Map<string, import("./batch-review.js").Problem>} what went wrong, by place */
  problems: new Map(),
  /** @type {Set<string>} the groups whose confirmation has not been answered yet */
  confirming: new Set(),
};

/**
 * Say what went wrong with the page as a whole (the files chosen, the batch) at its top,
 * above the drop zone. What goes wrong in the review is said where it happened
 * (`noteProblem`, `sayAtForm`).
 * @param {string} message "" to clear it
 */
function problem(message) {
  say(byId("batch-error"), message);
}

/**
 * Why an action failed, in words for the user.
 * @param {unknown} error
 * @returns {string|null} null when the session has lapsed: the login is shown instead
 */
function reasonOf(error) {
  if (error instanceof ApiError && error.needsLogin) {
    showLogin();
    return null;
  }
  return error instanceof NetworkError || error instanceof ApiError ? error.message
    : "something went wrong; reload the page";
}

function failed(error) {
  const reason = reasonOf(error);
  if (reason !== null) problem(reason);
}

/**
 * Keep what went wrong at a place of the review (batch-review.js problemAt) for the next
 * drawing, which shows it there, announces it and takes focus to it (`error:<place>`).
 * @param {string} place `group:<id>` or `item:<upload UUID>`
 * @param {string} message
 * @returns {string} the message's focus key
 */
function noteProblem(place, message) {
  state.problems.set(place, { message, fresh: true });
  return `error:${place}`;
}

function showLogin() {
  byId("booting").hidden = true;
  byId("batch").hidden = true;
  byId("login-needed").hidden = false;
}

async function openBatch() {
  const wanted = location.hash.slice(1);
  if (UUID.test(wanted)) {
    try {
      const { body } = await call("GET", `/api/v1/batches/${wanted}`);
      return body;
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404) throw error;
    }
  }
  const { body } = await call("POST", "/api/v1/batches", {});
  history.replaceState(null, "", `#${body.id}`);
  return body;
}

function useBatch(batch) {
  state.batch = batch;
  state.queue = new BatchQueue(batch.id);
  state.queue.addEventListener("change", renderQueue);
  state.queue.addEventListener("progress", renderProgress);
  state.queue.addEventListener("stored", scheduleRefresh);
  state.queue.addEventListener("idle", scheduleRefresh);
  state.queue.addEventListener("login-needed", showLogin);
  byId("batch-id").textContent = batch.id.slice(0, 8);
  renderQueue();
  render();
}

/**
 * Draw the review from `state.batch`; focus goes to the first of `focus`'s keys drawn, else
 * stays on what had it (ui.rebuildKeepingFocus).
 * @param {string[]} [focus]
 */
function render(focus = []) {
  const batch = state.batch;
  const items = batch.items.length;
  byId("review").hidden = items === 0;
  byId("review-summary").textContent = `${count(items)} on the server, ` +
    `${count(batch.groups.filter((g) => g.items.length).length, "patient")}, ` +
    `${count(batch.unsorted.length)} unsorted` +
    (batch.label_photos === "drop" ? " · label photos are not kept" : "");
  rebuildKeepingFocus(byId("groups"), () => renderReview(byId("groups"), batch, state.local,
    { update, confirm, refuse, problems: state.problems, sites: state.sites,
      details: state.details, confirming: state.confirming }), focus);
}

function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refresh, REFRESH_MS);
}

/**
 * Get the batch again and draw it (as it was, when that fails: the reason goes to the top).
 * @param {string[]} [focus] see render
 */
async function refresh(focus = []) {
  try {
    const { body } = await call("GET", `/api/v1/batches/${state.batch.id}`);
    state.batch = body;
  } catch (error) {
    failed(error);
  }
  render(focus);
}

/**
 * Move, drop or keep a photo. Focus stays on the control used (`control`), in the photo's
 * card wherever it is drawn now; a refusal is said in that card.
 * @param {string} uuid
 * @param {object} changes
 * @param {string} control the control's focus key
 */
async function update(uuid, changes, control) {
  const place = `item:${uuid}`;
  state.problems.delete(place);
  try {
    const { body } = await call("PATCH", `/api/v1/batches/${state.batch.id}/items/${uuid}`,
      changes);
    state.batch = body;
    render([control]);
  } catch (error) {
    const reason = reasonOf(error);
    if (reason !== null) await refresh([noteProblem(place, reason)]);
  }
}

/**
 * Confirm a group. Until the server has answered, every drawing shows its Confirm button
 * disabled ("Storing…"), so that a redraw in the meantime (a file sent, a thumbnail made)
 * cannot offer a second confirmation. Then focus goes to its result line, or to what went
 * wrong, said above its Confirm button.
 * @param {string} groupId
 * @param {object} body
 */
async function confirm(groupId, body) {
  if (state.confirming.has(groupId)) return;
  const place = `group:${groupId}`;
  state.problems.delete(place);
  state.confirming.add(groupId);
  render();
  let focus = `result:${groupId}`;
  try {
    await call("POST", `/api/v1/batches/${state.batch.id}/groups/${groupId}/confirm`, body);
  } catch (error) {
    const reason = reasonOf(error);
    if (reason === null) return;
    focus = noteProblem(place, reason);
  } finally {
    state.confirming.delete(groupId);
  }
  await refresh([focus]);
}

/**
 * Say, above the group's Confirm button, what stops its confirmation (nothing is sent).
 * @param {string} groupId
 * @param {string} message
 */
function refuse(groupId, message) {
  render([noteProblem(`group:${groupId}`, message)]);
}

/**
 * Say in the "Add a patient by MRN" form, brought to the middle of the screen, what went
 * wrong (an alert under the MRN field, which is marked invalid, described by it, and takes
 * focus to be corrected) or what was found (a status under the form); nothing clears both.
 * @param {{problem?: string, found?: string}} outcome
 */
function sayAtForm({ problem: message = "", found = "" }) {
  const mrn = byId("manual-mrn");
  say(byId("manual-error"), message);
  byId("manual-found").textContent = found;
  if (message) {
    mrn.setAttribute("aria-invalid", "true");
    mrn.focus({ preventScroll: true });
  } else {
    mrn.removeAttribute("aria-invalid");
  }
  if (message || found) {
    byId(message ? "manual-error" : "manual-found").scrollIntoView({ block: "center" });
  }
}

async function addPatient(event) {
  event.preventDefault();
  sayAtForm({});
  const mrn = byId("manual-mrn").value.trim();
  const issuer = byId("manual-issuer").value.trim();
  if (!mrn) {
    sayAtForm({ problem: "Type the patient's MRN." });
    return;
  }
  try {
    const { body } = await call("POST", `/api/v1/batches/${state.batch.id}/groups`,
      issuer ? { mrn, issuer } : { mrn });
    state.batch = body;
    render();
    const added = addedPatient(body.groups.find((g) => g.id === body.group_id));
    if (added.found) byId("manual-form").reset();
    sayAtForm(added.found ? { found: added.message } : { problem: added.message });
  } catch (error) {
    const reason = reasonOf(error);
    if (reason !== null) sayAtForm({ problem: reason });
  }
}

// --- files ------------------------------------------------------------------------------

async function addFiles(list) {
  const files = inFileOrder([...list].filter(acceptable));
  const skipped = list.length - files.length;
  problem(skipped ? `${count(skipped, "file")} left out: not a photo (JPEG, PNG, HEIC, TIFF) or a clip (MP4, MOV)` : "");
  if (!files.length) return;
  const known = new Set(state.batch.items.map((i) => i.upload_uuid));
  let order = Math.max(-1, ...state.batch.items.map((i) => i.order),
    ...[...state.queue.entries.values()].map((e) => e.order)) + 1;
  state.hashing += files.length;
  renderQueue();
  const entries = [];
  for (const file of files) {
    const uuid = await uuidV5(state.batch.id, await sha256Hex(file));
    state.hashing -= 1;
    if (state.queue.entries.has(uuid)) continue;
    const local = { name: file.name };
    state.local.set(uuid, local);
    if (THUMB_TYPES.has(file.type)) {
      thumbnailOf(file, 160).then((bitmap) => {
        local.thumb = bitmap;
        render();
      }).catch(() => {});
    }
    const done = known.has(uuid);
    entries.push({ uuid, file: done ? null : file, name: file.name, order: order++,
      size: file.size, loaded: done ? file.size : 0, state: done ? "done" : "queued",
      error: null, retryable: false });
  }
  state.queue.add(entries);
  render();
}

function renderProgress(event) {
  const entry = state.queue.entries.get(event.detail.uuid);
  const row = document.querySelector(`#file-list [data-uuid="${entry.uuid}"] progress`);
  if (row) row.value = entry.size ? entry.loaded / entry.size : 0;
  renderTotals();
}

function renderTotals() {
  const t = state.queue.totals;
  const overall = byId("overall");
  overall.value = t.bytes ? t.sent / t.bytes : 0;
  byId("overall-text").textContent = `${t.done} of ${count(t.files, "file")} on the server` +
    (t.failed ? ` · ${t.failed} failed` : "") +
    (state.hashing ? ` · reading ${state.hashing}…` : "") +
    (state.queue.paused ? " · paused" : "");
}

const STATE_TEXT = { queued: "waiting", uploading: "sending", done: "on the server", failed: "failed" };

function renderQueue() {
  const queue = state.queue;
  byId("upload").hidden = queue.entries.size === 0 && !state.hashing;
  byId("pause").hidden = queue.paused || !queue.busy;
  byId("resume").hidden = !queue.paused;
  const rows = [];
  for (const entry of queue.entries.values()) {
    const progress = h("progress", { max: "1", value: String(entry.size ? entry.loaded / entry.size : 0),
      "aria-label": `${entry.name} sent` });
    const row = h("li", { "data-uuid": entry.uuid, "data-state": entry.state, class: "batch-file",
      tabindex: "-1", "data-focus": `file:${entry.uuid}` },
      h("span", { class: "batch-name" }, entry.name), progress,
      h("span", { class: "batch-state" }, entry.error || STATE_TEXT[entry.state]));
    if (entry.state === "failed" && entry.file && entry.retryable) {
      const retry = h("button", { type: "button", class: "secondary retry",
        "data-focus": `retry:${entry.uuid}` }, "Retry");
      retry.addEventListener("click", () => queue.retry(entry.uuid));
      row.append(retry);
    }
    rows.push(row);
  }
  // Retry gone from its row (the file is being sent), focus stays on the row.
  rebuildKeepingFocus(byId("file-list"), () => byId("file-list").replaceChildren(...rows));
  renderTotals();
}

/**
 * How many photos of this batch are not stored: held on the server in no confirmed group
 * (and not dropped), or still to be sent from this device.
 * @returns {number}
 */
function unstoredPhotos() {
  const held = state.batch.items.filter((i) => i.status === "held" && !i.dropped).length;
  const sending = [...state.queue.entries.values()].filter((e) => e.file &&
    (e.state === "queued" || e.state === "uploading")).length;
  return held + sending;
}

/**
 * Leave this batch for a new one. Its photos not stored yet would be out of reach (the page
 * shows one batch, by the id in its fragment): the user is asked first, and on yes they are
 * discarded on the server, so that nothing of theirs lingers there unseen. The current batch
 * stays as it was, its uploads going on, when the user keeps it or the discard fails.
 */
async function startNewBatch() {
  const unstored = unstoredPhotos();
  if (unstored) {
    byId("new-batch-warning").textContent = `${count(unstored)} of this batch ${
      unstored === 1 ? "is" : "are"} not stored yet: a new batch discards ${
      unstored === 1 ? "it" : "them"} for good.`;
    if (await ask(/** @type {HTMLDialogElement} */ (byId("new-batch-dialog"))) !== "discard") {
      return;
    }
  }
  problem("");
  state.queue.pause();
  if (unstored) {
    try {
      await call("DELETE", `/api/v1/batches/${state.batch.id}`);
    } catch (error) {
      state.queue.resume();
      failed(error);
      return;
    }
  }
  history.replaceState(null, "", location.pathname);
  state.local = new Map();
  state.details = new Map();
  state.problems = new Map();
  sayAtForm({});
  try {
    useBatch(await openBatch());
  } catch (error) {
    failed(error);
  }
}

function wireDropZone() {
  const zone = byId("drop");
  const input = /** @type {HTMLInputElement} */ (byId("files"));
  input.addEventListener("change", () => {
    addFiles(input.files).catch(failed);
    input.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    addFiles(event.dataTransfer.files).catch(failed);
  });
  byId("pause").addEventListener("click", () => state.queue.pause());
  byId("resume").addEventListener("click", () => state.queue.resume());
  byId("manual-form").addEventListener("submit", addPatient);
  byId("new-batch").addEventListener("click", startNewBatch);
  window.addEventListener("beforeunload", (event) => {
    if (state.queue && state.queue.busy) event.preventDefault();
  });
}

async function start() {
  let me;
  try {
    me = await whoAmI();
  } catch (error) {
    byId("booting").textContent = error.message;
    return;
  }
  if (!me) {
    showLogin();
    return;
  }
  byId("who").textContent = me.user;
  state.sites = await loadSites().catch(() => []);  // without them: confirm without a site
  wireDropZone();
  try {
    useBatch(await openBatch());
  } catch (error) {
    byId("booting").hidden = true;
    failed(error);
    return;
  }
  byId("booting").hidden = true;
  byId("batch").hidden = false;
}

start();
