/**
 * What the app keeps on the device: photos not yet acknowledged by the server and the capture
 * sessions they belong to, in IndexedDB, encrypted with AES-GCM under a non-extractable key
 * that lives in the same database. Nothing is kept once the server has it. Logging out deletes
 * what that user left here; other users' photos stay (a shared phone) until they log in and
 * send them, and once nothing of anyone is left the key goes too.
 *
 * Stores: `keys` (the CryptoKey), `sessions` (id, owner, state, encrypted request body),
 * `photos` (uuid, owner, draft, session, state: metadata only), `blobs` (uuid → encrypted
 * bytes, kept apart so that listing the queue never copies photos), `patients` (user → the
 * encrypted list of patients that user identified, for identifying offline), `drafts` (id,
 * owner, and encrypted what a capture not sent yet holds besides its photos: the confirmed
 * patient, the capture details) and `meta` (the last-known login, encrypted, for starting
 * offline; the body-site table, which is no patient's data).
 * @module store
 */

const DB_NAME = "ebiw-capture";
const DB_VERSION = 3;
const KEY_ID = "photo-key";
const LOGIN_ID = "login";
const SITES_ID = "body-sites";

/** Names of every object store (emptied, the key too, when the last user's data goes). */
const STORES = ["keys", "sessions", "photos", "blobs", "patients", "drafts", "meta"];

let dbPromise = null;
let keyPromise = null;

function promised(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function openDb() {
  if (!dbPromise) {
    const request = indexedDB.open(DB_NAME, DB_VERSION);
    request.onupgradeneeded = (event) => {
      const db = request.result;
      if (event.oldVersion < 1) {
        db.createObjectStore("keys");
        db.createObjectStore("sessions", { keyPath: "id" });
        db.createObjectStore("photos", { keyPath: "uuid" });
        db.createObjectStore("blobs");
      }
      if (event.oldVersion < 2) {
        db.createObjectStore("patients");
        db.createObjectStore("meta");
      }
      if (event.oldVersion < 3) db.createObjectStore("drafts", { keyPath: "id" });
    };
    dbPromise = promised(request).then((db) => {
      db.onversionchange = () => db.close();  // a newer app in another tab upgrades the schema
      return db;
    });
  }
  return dbPromise;
}

/**
 * Run `work(stores)` in one transaction and resolve with its result once it has committed.
 * @template T
 * @param {string[]} names object stores to open
 * @param {IDBTransactionMode} mode
 * @param {(stores: Object<string, IDBObjectStore>) => Promise<T>|T} work
 * @returns {Promise<T>}
 */
async function transaction(names, mode, work) {
  const db = await openDb();
  const tx = db.transaction(names, mode);
  const stores = Object.fromEntries(names.map((name) => [name, tx.objectStore(name)]));
  const done = new Promise((resolve, reject) => {
    tx.oncomplete = resolve;
    tx.onabort = () => reject(tx.error);
    tx.onerror = () => reject(tx.error);
  });
  let result;
  try {
    result = await work(stores);
  } catch (error) {
    done.catch(() => {});
    tx.abort();
    throw error;
  }
  await done;
  return result;
}

/** The device key: made once, never extractable, shared by every tab (first writer wins). */
function deviceKey() {
  if (!keyPromise) {
    keyPromise = (async () => {
      const existing = await transaction(["keys"], "readonly", (s) => promised(s.keys.get(KEY_ID)));
      if (existing) return existing;
      const key = await crypto.subtle.generateKey({ name: "AES-GCM", length: 256 }, false,
        ["encrypt", "decrypt"]);
      try {
        await transaction(["keys"], "readwrite", (s) => promised(s.keys.add(key, KEY_ID)));
        return key;
      } catch {
        return transaction(["keys"], "readonly", (s) => promised(s.keys.get(KEY_ID)));
      }
    })();
    keyPromise.catch(() => { keyPromise = null; });
  }
  return keyPromise;
}

async function encrypt(bytes, label) {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const data = await crypto.subtle.encrypt(
    { name: "AES-GCM", iv, additionalData: new TextEncoder().encode(label) },
    await deviceKey(), bytes);
  return { iv, data };
}

async function decrypt(sealed, label) {
  return crypto.subtle.decrypt(
    { name: "AES-GCM", iv: sealed.iv, additionalData: new TextEncoder().encode(label) },
    await deviceKey(), sealed.data);
}

/**
 * Keep a new photo, encrypted, as held by a draft (not yet assigned to a session).
 * @param {{uuid: string, user: string, draftId: string, blob: Blob}} photo
 * @returns {Promise<object>} the photo's metadata record
 */
export async function savePhoto({ uuid, user, draftId, blob }) {
  const sealed = await encrypt(await blob.arrayBuffer(), uuid);
  const record = { uuid, user, draftId, sessionId: null, state: "held", error: null,
    type: blob.type || "application/octet-stream", size: blob.size, createdAt: Date.now() };
  await transaction(["photos", "blobs"], "readwrite", (s) => {
    s.photos.add(record);
    s.blobs.add(sealed, uuid);
  });
  return record;
}

/**
 * The photo's bytes, decrypted.
 * @param {{uuid: string, type: string}} record
 * @returns {Promise<Blob>}
 */
export async function photoBlob(record) {
  const sealed = await transaction(["blobs"], "readonly", (s) => promised(s.blobs.get(record.uuid)));
  if (!sealed) throw new Error("photo not on this device");
  return new Blob([await decrypt(sealed, record.uuid)], { type: record.type });
}

/** @returns {Promise<object[]>} every photo's metadata, oldest first */
export async function listPhotos() {
  const all = await transaction(["photos"], "readonly", (s) => promised(s.photos.getAll()));
  return all.sort((a, b) => a.createdAt - b.createdAt);
}

/**
 * Change fields of a photo's metadata (no-op when the photo is gone).
 * @param {string} uuid
 * @param {object} changes
 */
export async function updatePhoto(uuid, changes) {
  await transaction(["photos"], "readwrite", async (s) => {
    const record = await promised(s.photos.get(uuid));
    if (record) s.photos.put({ ...record, ...changes });
  });
}

/**
 * Forget a photo and its bytes (after the server acknowledged it, or when discarded).
 * @param {string} uuid
 */
export async function deletePhoto(uuid) {
  await transaction(["photos", "blobs"], "readwrite", (s) => {
    s.photos.delete(uuid);
    s.blobs.delete(uuid);
  });
}

/**
 * Keep a capture session to open on the server and give it the draft's held photos, in one
 * transaction (the draft kept by `keepDraft` goes): from then on the uploader sends them.
 * @param {{id: string, user: string, draftId: string, body: object}} session
 */
export async function queueSession({ id, user, draftId, body }) {
  const sealed = await encrypt(new TextEncoder().encode(JSON.stringify(body)), id);
  await transaction(["sessions", "photos", "drafts"], "readwrite", async (s) => {
    s.drafts.delete(draftId);  // the session holds it all from now on
    s.sessions.add({ id, user, draftId, state: "new", studyUid: null, error: null,
      sealed, createdAt: Date.now() });
    const photos = await promised(s.photos.getAll());
    for (const photo of photos) {
      if (photo.draftId === draftId && photo.state === "held") {
        s.photos.put({ ...photo, sessionId: id, state: "queued" });
      }
    }
  });
}

/**
 * The session request body (decrypted).
 * @param {{id: string, sealed: object}} session
 * @returns {Promise<object>}
 */
export async function sessionBody(session) {
  return JSON.parse(new TextDecoder().decode(await decrypt(session.sealed, session.id)));
}

/** @returns {Promise<object[]>} every queued session, oldest first */
export async function listSessions() {
  const all = await transaction(["sessions"], "readonly", (s) => promised(s.sessions.getAll()));
  return all.sort((a, b) => a.createdAt - b.createdAt);
}

/**
 * Change fields of a session record (no-op when it is gone).
 * @param {string} id
 * @param {object} changes
 */
export async function updateSession(id, changes) {
  await transaction(["sessions"], "readwrite", async (s) => {
    const record = await promised(s.sessions.get(id));
    if (record) s.sessions.put({ ...record, ...changes });
  });
}

/** @param {string} id session to forget (once the server completed it) */
export async function deleteSession(id) {
  await transaction(["sessions"], "readwrite", (s) => s.sessions.delete(id));
}

/**
 * Keep what a draft holds besides its photos (whatever `contents` the app gives: the confirmed
 * patient, the capture details…), encrypted, in place of what was kept for it before; so that
 * a reload or leaving the app loses none of it.
 * @param {{id: string, user: string, contents: object}} draft
 */
export async function keepDraft({ id, user, contents }) {
  const sealed = await encrypt(new TextEncoder().encode(JSON.stringify(contents)), `draft:${id}`);
  await transaction(["drafts"], "readwrite", async (s) => {
    const kept = await promised(s.drafts.get(id));
    s.drafts.put({ id, user, createdAt: kept ? kept.createdAt : Date.now(), sealed });
  });
}

/** @returns {Promise<object[]>} every kept draft ({id, user, createdAt}, contents sealed) */
export async function listDrafts() {
  return transaction(["drafts"], "readonly", (s) => promised(s.drafts.getAll()));
}

/**
 * What `keepDraft` kept for a draft, decrypted; null when nothing is kept for it.
 * @param {string} id
 * @returns {Promise<object|null>}
 */
export async function keptDraft(id) {
  const record = await transaction(["drafts"], "readonly", (s) => promised(s.drafts.get(id)));
  if (!record) return null;
  return JSON.parse(new TextDecoder().decode(await decrypt(record.sealed, `draft:${id}`)));
}

/** @param {string} id the draft to forget (sent or discarded) */
export async function forgetDraft(id) {
  await transaction(["drafts"], "readwrite", (s) => s.drafts.delete(id));
}

/**
 * Keep what is needed to open the app without a network: who is logged in, until when, and
 * the EMR launch (with its patient) if any; encrypted. Never the CSRF token.
 * @param {{user: string, role: string, expires_at: string|null,
 *   idle_timeout_seconds: number|null, launched: boolean, launch: object|null}} login
 */
export async function rememberLogin(login) {
  const sealed = await encrypt(new TextEncoder().encode(JSON.stringify(login)), LOGIN_ID);
  await transaction(["meta"], "readwrite", (s) => promised(s.meta.put(sealed, LOGIN_ID)));
}

/** @returns {Promise<object|null>} the login kept by `rememberLogin`, or null */
export async function lastLogin() {
  const sealed = await transaction(["meta"], "readonly", (s) => promised(s.meta.get(LOGIN_ID)));
  return sealed ? JSON.parse(new TextDecoder().decode(await decrypt(sealed, LOGIN_ID))) : null;
}

/** Forget the last-known login (the server ended it): the app no longer starts offline. */
export async function forgetLogin() {
  await transaction(["meta"], "readwrite", (s) => promised(s.meta.delete(LOGIN_ID)));
}

/**
 * Keep the patients `user` identified (most recent first), encrypted, for identifying offline.
 * @param {string} user
 * @param {object[]} patients
 */
export async function keepPatients(user, patients) {
  const label = `patients:${user}`;
  const sealed = await encrypt(new TextEncoder().encode(JSON.stringify(patients)), label);
  await transaction(["patients"], "readwrite", (s) => promised(s.patients.put(sealed, user)));
}

/**
 * @param {string} user
 * @returns {Promise<object[]>} the patients kept by `keepPatients` for `user`
 */
export async function keptPatients(user) {
  const sealed = await transaction(["patients"], "readonly", (s) =>
    promised(s.patients.get(user)));
  if (!sealed) return [];
  return JSON.parse(new TextDecoder().decode(await decrypt(sealed, `patients:${user}`)));
}

/** @param {object[]} sites the body-site table, kept for starting offline */
export async function keepSites(sites) {
  await transaction(["meta"], "readwrite", (s) => promised(s.meta.put(sites, SITES_ID)));
}

/** @returns {Promise<object[]|null>} the body-site table kept by `keepSites`, or null */
export async function keptSites() {
  return (await transaction(["meta"], "readonly", (s) => promised(s.meta.get(SITES_ID)))) || null;
}

/**
 * Delete what `user` left on this device (logout): their photos and clips with their bytes,
 * their sessions, their drafts, the patients they confirmed and the last-known login. Other
 * users' photos, sessions, drafts and patients stay untouched, encrypted under the same key; when none are left, every
 * store is emptied, the key and the body-site table included.
 * @param {string} user
 */
export async function purgeUser(user) {
  const emptied = await transaction(STORES, "readwrite", async (s) => {
    const photos = await promised(s.photos.getAll());
    const sessions = await promised(s.sessions.getAll());
    const mine = photos.filter((p) => p.user === user);
    for (const photo of mine) {
      s.photos.delete(photo.uuid);
      s.blobs.delete(photo.uuid);
    }
    for (const session of sessions.filter((x) => x.user === user)) s.sessions.delete(session.id);
    const drafts = await promised(s.drafts.getAll());
    for (const draft of drafts.filter((x) => x.user === user)) s.drafts.delete(draft.id);
    s.patients.delete(user);
    s.meta.delete(LOGIN_ID);
    const othersLeft = photos.length > mine.length || sessions.some((x) => x.user !== user) ||
      drafts.some((x) => x.user !== user) ||
      (await promised(s.patients.count())) > 0;
    if (!othersLeft) {
      for (const name of STORES) s[name].clear();
    }
    return !othersLeft;
  });
  if (emptied) keyPromise = null;
}
