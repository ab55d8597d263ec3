/**
 * Sends what waits on the device, one request at a time, until the server has it all.
 *
 * For each queued session: open it with its client-made id (POST /api/v1/sessions, idempotent),
 * PUT each photo under its capture-time UUID (idempotent), delete the photo from the device as
 * soon as the server answers 201 or 200 (or 202: a clip it keeps durably and re-encodes in the
 * background), then complete the session. Network trouble and 5xx
 * answers are retried with exponential backoff (and at once when the browser comes back
 * online); a refusal (4xx) marks the photo or session failed for the user to see.
 * @module uploader
 */

import { ApiError, NetworkError, call, putBlob } from "./api.js";
import * as store from "./store.js";

const FIRST_DELAY_MS = 1000;
const MAX_DELAY_MS = 60000;

/**
 * Events (all CustomEvent, details in brackets): `change` (the queue or its state changed),
 * `progress` {uuid, loaded, total}, `stored` {uuid, sessionId, photo}, `failed` {uuid,
 * sessionId, error} (refused: kept on the device, marked failed), `complete` {sessionId,
 * session}, `login-needed` {message}.
 */
export class Uploader extends EventTarget {
  #user = null;
  #running = false;
  #again = false;
  #attempt = 0;
  #timer = null;
  /** When the next retry is due (ms since the epoch), or 0 when none is waiting. */
  retryAt = 0;
  /** The last network or server trouble, shown beside the queue; null once things work. */
  trouble = null;

  constructor() {
    super();
    window.addEventListener("online", () => this.kick());
  }

  /**
   * Send the queue of `user` (null pauses: nobody is logged in).
   * @param {string|null} user
   */
  setUser(user) {
    this.#user = user;
    if (user) this.kick();
  }

  /** Try now: new work was queued, the network came back, or the user asked. */
  kick() {
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#attempt = 0;
    this.retryAt = 0;
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#run();
  }

  /** @returns {boolean} whether a request is in flight */
  get busy() {
    return this.#running;
  }

  #emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  async #run() {
    this.#running = true;
    this.#emit("change");
    try {
      do {
        this.#again = false;
        await this.#drain();
      } while (this.#again);
      this.trouble = null;
    } catch (error) {
      if (error instanceof NetworkError || (error instanceof ApiError && error.transient)) {
        this.trouble = error.message;
        const delay = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** this.#attempt);
        this.#attempt += 1;
        const wait = delay / 2 + Math.random() * (delay / 2);
        this.retryAt = Date.now() + wait;
        this.#timer = setTimeout(() => {
          this.retryAt = 0;
          this.#run();
        }, wait);
      } else if (error instanceof ApiError && error.needsLogin) {
        this.trouble = error.message;
        this.#emit("login-needed", { message: error.message });
      } else {
        this.trouble = error.message;
      }
    } finally {
      this.#running = false;
      this.#emit("change");
    }
  }

  /** Work until nothing is left; throws on the first transient or login problem. */
  async #drain() {
    for (;;) {
      const user = this.#user;
      if (!user) return;
      const sessions = (await store.listSessions()).filter((s) => s.user === user);
      const photos = (await store.listPhotos()).filter((p) => p.user === user && p.sessionId);
      const toOpen = sessions.find((s) => s.state === "new");
      if (toOpen) {
        await this.#open(toOpen);
        continue;
      }
      const open = new Set(sessions.filter((s) => s.state === "open").map((s) => s.id));
      const photo = photos.find((p) => p.state === "queued" && open.has(p.sessionId));
      if (photo) {
        await this.#send(photo);
        continue;
      }
      const done = sessions.find((s) => s.state === "open" &&
        !photos.some((p) => p.sessionId === s.id));
      if (!done) return;
      await this.#complete(done);
    }
  }

  async #open(session) {
    try {
      const { body } = await call("POST", "/api/v1/sessions", await store.sessionBody(session));
      await store.updateSession(session.id, { state: "open", studyUid: body.study_instance_uid });
    } catch (error) {
      if (!(error instanceof ApiError) || error.transient || error.needsLogin) throw error;
      await store.updateSession(session.id, { state: "failed", error: error.message });
    }
    this.#emit("change");
  }

  async #send(photo) {
    const blob = await store.photoBlob(photo);
    const path = `/api/v1/sessions/${photo.sessionId}/photos/${photo.uuid}`;
    try {
      const { body } = await putBlob(path, blob, (loaded, total) =>
        this.#emit("progress", { uuid: photo.uuid, loaded, total }));
      await store.deletePhoto(photo.uuid);
      performance.mark(`ebiw:stored:${photo.uuid}`);
      this.#emit("stored", { uuid: photo.uuid, sessionId: photo.sessionId, photo: body });
    } catch (error) {
      if (!(error instanceof ApiError) || error.transient || error.needsLogin) throw error;
      await store.updatePhoto(photo.uuid, { state: "failed", error: error.message });
      this.#emit("failed", { uuid: photo.uuid, sessionId: photo.sessionId, error: error.message });
    }
    this.#emit("change");
  }

  async #complete(session) {
    try {
      const { body } = await call("POST", `/api/v1/sessions/${session.id}/complete`);
      await store.deleteSession(session.id);
      this.#emit("complete", { sessionId: session.id, session: body });
    } catch (error) {
      if (!(error instanceof ApiError) || error.transient || error.needsLogin) throw error;
      await store.updateSession(session.id, { state: "failed", error: error.message });
    }
    this.#emit("change");
  }
}
