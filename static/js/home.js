/**
 * What waits on this device, as the user sees it: the status line under the title bar and
 * the lists of the home screen. Reads the queue from the store; shows no patient data.
 * @module home
 */

import * as store from "./store.js";
import { byId, count, displayTime, h, say } from "./ui.js";

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
 * The home screen's list of what waits on this device: photos held for a patient, studies
 * being sent or refused, other users' photos (counted only), and the studies sent.
 * @param {string} user the logged-in user
 * @param {string|null} currentDraft the draft being worked on (not listed)
 * @param {{studyUid: string, photos: number, at: number}[]} sent
 */
export async function renderHome(user, currentDraft, sent) {
  const [photos, sessions] = await Promise.all([store.listPhotos(), store.listSessions()]);
  const mine = photos.filter((p) => p.user === user);
  const list = byId("device-list");
  list.replaceChildren();
  const drafts = new Map();
  for (const photo of mine.filter((p) => p.state === "held")) {
    drafts.set(photo.draftId, [...(drafts.get(photo.draftId) || []), photo]);
  }
  for (const [draftId, held] of drafts) {
    if (draftId === currentDraft) continue;
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
  recent.replaceChildren(...sent.map((s) => h("li", { class: "card" },
    h("a", { href: `/studies/${s.studyUid}` }, `Study sent at ${displayTime(s.at)}`),
    ` (${count(s.photos)})`)));
}
