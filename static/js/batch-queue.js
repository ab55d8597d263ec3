/**
 * The batch page's upload queue: each file PUT to the idempotent item API, a few at a time,
 * with per-file and overall progress, pause/resume and a retry per file that failed for a
 * passing reason.
 *
 * Network trouble, timeouts and 5xx/429 answers are retried by themselves (backoff, up to
 * `AUTO_RETRIES` times), then the user may retry the file (`retryable`); a refusal of the
 * file itself (4xx: not an image, too large) fails it with the server's message for good, as
 * the same bytes sent again can only be refused again. Pausing aborts the uploads in flight and puts them back in the queue: the
 * API is idempotent, so sending a file again is harmless.
 * @module batch-queue
 */

import { ApiError, NetworkError, putBlob } from "./api.js";

export const CONCURRENCY = 3;
const AUTO_RETRIES = 3;
const FIRST_DELAY_MS = 1000;

/**
 * @typedef {object} Entry
 * @property {string} uuid upload UUID
 * @property {File|null} file the local file (null: known only from the server)
 * @property {string} name what the user calls it (the file name, never sent)
 * @property {number} order place in file order
 * @property {number} size bytes
 * @property {number} loaded bytes sent so far
 * @property {"queued"|"uploading"|"done"|"failed"} state
 * @property {string|null} error why it failed
 * @property {boolean} retryable whether sending it again may succeed (it failed for a passing
 *   reason: the network, a timeout, a busy or failing server)
 */

/**
 * Events (CustomEvent): `change` (any entry or the queue's state changed), `progress`
 * {uuid}, `stored` {uuid, item}, `idle` (nothing queued or in flight), `login-needed`.
 */
export class BatchQueue extends EventTarget {
  /** @type {Map<string, Entry>} */
  entries = new Map();
  paused = false;
  #batchId;
  #concurrency;
  #flight = new Map();
  #attempts = new Map();

  /**
   * @param {string} batchId
   * @param {{concurrency?: number}} [options]
   */
  constructor(batchId, { concurrency = CONCURRENCY } = {}) {
    super();
    this.#batchId = batchId;
    this.#concurrency = concurrency;
  }

  #emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /**
   * Add files (entries already on the server come in as `done`) and start sending.
   * @param {Entry[]} entries
   */
  add(entries) {
    for (const entry of entries) {
      if (!this.entries.has(entry.uuid)) this.entries.set(entry.uuid, entry);
    }
    this.#emit("change");
    this.#pump();
  }

  /** Stop starting uploads and abort those in flight (they go back to the queue). */
  pause() {
    this.paused = true;
    for (const controller of this.#flight.values()) controller.abort();
    this.#emit("change");
  }

  /** Send what is queued again. */
  resume() {
    this.paused = false;
    this.#emit("change");
    this.#pump();
  }

  /**
   * Send one file again that failed for a passing reason (`retryable`).
   * @param {string} uuid
   */
  retry(uuid) {
    const entry = this.entries.get(uuid);
    if (!entry || entry.state !== "failed" || !entry.retryable) return;
    Object.assign(entry, { state: "queued", error: null, loaded: 0 });
    this.#attempts.delete(uuid);
    this.#emit("change");
    this.#pump();
  }

  /** @returns {{files: number, done: number, failed: number, bytes: number, sent: number}} */
  get totals() {
    let done = 0;
    let failed = 0;
    let bytes = 0;
    let sent = 0;
    for (const e of this.entries.values()) {
      bytes += e.size;
      sent += e.state === "done" ? e.size : e.loaded;
      if (e.state === "done") done += 1;
      if (e.state === "failed") failed += 1;
    }
    return { files: this.entries.size, done, failed, bytes, sent };
  }

  /** @returns {boolean} whether files are queued or in flight */
  get busy() {
    return this.#flight.size > 0 ||
      [...this.entries.values()].some((e) => e.state === "queued" && e.file);
  }

  #pump() {
    if (this.paused) return;
    for (const entry of this.entries.values()) {
      if (this.#flight.size >= this.#concurrency) return;
      if (entry.state === "queued" && entry.file && !this.#flight.has(entry.uuid)) {
        this.#send(entry);
      }
    }
    if (this.#flight.size === 0) this.#emit("idle");
  }

  async #send(entry) {
    const controller = new AbortController();
    this.#flight.set(entry.uuid, controller);
    Object.assign(entry, { state: "uploading", loaded: 0, error: null });
    this.#emit("change");
    const path = `/api/v1/batches/${this.#batchId}/items/${entry.uuid}?order=${entry.order}`;
    try {
      const { body } = await putBlob(path, entry.file, (loaded) => {
        entry.loaded = loaded;
        this.#emit("progress", { uuid: entry.uuid });
      }, controller.signal);
      Object.assign(entry, { state: "done", loaded: entry.size });
      this.#emit("stored", { uuid: entry.uuid, item: body });
    } catch (error) {
      this.#failed(entry, error, controller.signal.aborted);
    } finally {
      this.#flight.delete(entry.uuid);
      this.#emit("change");
      this.#pump();
    }
  }

  #failed(entry, error, aborted) {
    entry.loaded = 0;
    if (aborted) {
      entry.state = "queued";
      return;
    }
    if (error instanceof ApiError && error.needsLogin) {
      Object.assign(entry, { state: "queued" });
      this.pause();
      this.#emit("login-needed", { message: error.message });
      return;
    }
    const transient = error instanceof NetworkError ||
      (error instanceof ApiError && error.transient);
    const attempts = (this.#attempts.get(entry.uuid) || 0) + 1;
    this.#attempts.set(entry.uuid, attempts);
    if (transient && attempts <= AUTO_RETRIES) {
      Object.assign(entry, { state: "failed", retryable: true });
      entry.error = `${error.message} — trying again`;
      const delay = FIRST_DELAY_MS * 2 ** (attempts - 1) * (0.5 + Math.random() / 2);
      setTimeout(() => {
        if (entry.state === "failed") {
          Object.assign(entry, { state: "queued", error: null });
          this.#pump();
        }
      }, delay);
      return;
    }
    Object.assign(entry, { state: "failed", error: error.message, retryable: transient });
  }
}
