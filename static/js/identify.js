/**
 * Who is the patient: a wristband read by the camera (decoded on the device when the browser
 * has a BarcodeDetector, otherwise the frame is sent to POST /api/v1/identify) or an MRN typed
 * by hand (POST /api/v1/patients/search). Identifiers travel in request bodies, never in URLs.
 *
 * Offline, the patients this user confirmed before on this device (kept encrypted by store.js,
 * purged at logout) can be chosen from a list, or matched by the typed MRN or by the wristband
 * decoded on the device.
 * @module identify
 */

import { ApiError, call } from "./api.js";
import { grabFrame, toJpeg } from "./camera.js";
import { keepPatients, keptPatients } from "./store.js";

/** How many confirmed patients each user keeps on the device for identifying offline. */
const RECENT_MAX = 30;

/** BarcodeDetector format → the symbology names of the API. */
const SYMBOLOGIES = { code_128: "Code128", code_39: "Code39", qr_code: "QRCode",
  pdf417: "PDF417", data_matrix: "DataMatrix" };

async function detectOnDevice(video) {
  if (!("BarcodeDetector" in window)) return null;
  try {
    const supported = await window.BarcodeDetector.getSupportedFormats();
    const formats = Object.keys(SYMBOLOGIES).filter((f) => supported.includes(f));
    if (!formats.length) return null;
    const found = await new window.BarcodeDetector({ formats }).detect(video);
    return found.length ? found[0] : null;
  } catch {
    return null;  // the server reads the frame instead
  }
}

async function lookUp(path, body, how) {
  try {
    return identification((await call("POST", path, body)).body, how);
  } catch (error) {
    // 404 carries the same answer (nobody matches, and what was read): not a failure here
    if (error instanceof ApiError && error.status === 404 && error.body &&
        Array.isArray(error.body.patients)) {
      return identification(error.body, how);
    }
    throw error;
  }
}

/**
 * @typedef {object} Barcode a barcode decoded on the device
 * @property {string} payload what it carries (PHI: never in a URL or a log)
 * @property {string} symbology in the API's names (Code128, QRCode…)
 */

/**
 * Read the wristband in front of the camera on the device, which works offline too.
 * @param {HTMLVideoElement} video the live camera
 * @returns {Promise<Barcode|null>} null when the browser decodes no barcodes (no
 *   BarcodeDetector) or found none: then only the server can read the frame
 */
export async function readWristband(video) {
  const barcode = await detectOnDevice(video);
  return barcode ? { payload: barcode.rawValue, symbology: SYMBOLOGIES[barcode.format] } : null;
}

/**
 * Identify from the wristband with the server: the barcode read on the device, else the
 * camera's frame for the server to read.
 * @param {HTMLVideoElement} video the live camera
 * @param {Barcode|null} barcode what `readWristband` read
 * @returns {Promise<Identification>}
 */
export async function identifyWristband(video, barcode) {
  const body = barcode
    ? { barcode: barcode.payload, method: "scanned", symbology: barcode.symbology }
    : await toJpeg(grabFrame(video), 0.9);
  return lookUp("/api/v1/identify", body, "scanned");
}

/**
 * Identify from an MRN entered by hand.
 * @param {string} mrn
 * @returns {Promise<Identification>}
 */
export async function identifyTyped(mrn) {
  const found = await lookUp("/api/v1/patients/search", { mrn: mrn.trim() }, "typed");
  return { ...found, read: found.read || mrn.trim() };
}

/**
 * @typedef {object} Encounter
 * @property {string} id the encounter identifier (DICOM Admission ID)
 * @property {string|null} department
 * @property {string|null} started ISO date-time
 * @property {boolean} onWristband the wristband names this encounter
 *
 * @typedef {object} Patient
 * @property {string} mrn
 * @property {string|null} issuer
 * @property {string} family
 * @property {string} given
 * @property {string|null} birthDate YYYY-MM-DD
 * @property {string|null} sex F, M or O
 * @property {Encounter[]} encounters open encounters, preferred first
 * @property {object[]} worklist scheduled worklist items (as the API gives them)
 * @property {object|null} identification how the patient was identified, for POST /sessions
 *
 * @typedef {object} Identification
 * @property {string|null} read the identifier that was read (or typed), for the user to compare
 * @property {"scanned"|"typed"|"list"} how from the wristband, a typed MRN, or the list of the
 *   patients confirmed before
 * @property {Patient[]} patients the matching patients (possibly none, possibly several)
 * @property {boolean} incomplete some patient directory did not answer
 * @property {boolean} [offline] found offline, among the patients confirmed before
 */

/**
 * The identify answer in the shape the screens use.
 * @param {object} body the JSON answer of /api/v1/identify or /api/v1/patients/search
 * @param {"scanned"|"typed"} how
 * @returns {Identification}
 */
function identification(body, how) {
  const patients = (Array.isArray(body.patients) ? body.patients : []).map(patientOf)
    .filter((p) => p.mrn);
  const first = Array.isArray(body.identifiers) && body.identifiers[0];
  return {
    read: first ? first.mrn : null,
    how,
    patients,
    incomplete: Boolean(body.unavailable && Object.keys(body.unavailable).length),
  };
}

/**
 * One patient of an answer (/api/v1/identify, /api/v1/patients/search, /launch/context) in the
 * shape the screens use.
 * @param {object} p
 * @returns {Patient}
 */
export function patientOf(p) {
  return {
    mrn: String(p.mrn || ""),
    issuer: p.issuer || null,
    family: (p.name && p.name.family) || "",
    given: (p.name && p.name.given) || "",
    birthDate: p.birth_date || null,
    sex: p.sex || null,
    encounters: (p.encounters || []).filter((e) => e.identifier).map((e) => ({
      id: e.identifier, department: e.department || null, started: e.started || null,
      onWristband: Boolean(e.on_wristband),
    })),
    worklist: Array.isArray(p.worklist) ? p.worklist : [],
    identification: p.identification || null,
  };
}

/**
 * Keep a patient the user just confirmed (online) for identifying offline later: most recent
 * first, at most RECENT_MAX, one entry per MRN and issuer.
 * @param {string} user
 * @param {Patient} patient
 */
export async function rememberPatient(user, patient) {
  const same = (p) => p.mrn === patient.mrn && p.issuer === patient.issuer;
  const kept = (await keptPatients(user)).filter((p) => !same(p));
  await keepPatients(user, [patient, ...kept].slice(0, RECENT_MAX));
}

/**
 * A kept patient, as identified offline: the encounters and worklist of the last lookup, the
 * identification saying how it was done here.
 * @param {Patient} patient
 * @param {string} method "typed" (the MRN matched), "scanned" (the wristband matched) or
 *   "manual" (chosen from the list)
 * @returns {Patient}
 */
function offline(patient, method) {
  return { ...patient, identification: { method, evidence: { offline: "confirmed before" } } };
}

/**
 * The patients `user` confirmed before on this device, for choosing one offline.
 * @param {string} user
 * @returns {Promise<Identification>}
 */
export async function recentIdentification(user) {
  return { read: null, how: "list",
    patients: (await keptPatients(user)).map((p) => offline(p, "manual")),
    incomplete: false, offline: true };
}

/**
 * The patients `user` confirmed before whose MRN `matches`, as identified offline.
 * @param {string} user
 * @param {(mrn: string) => boolean} matches given a kept MRN in capitals
 * @param {string} read what was typed or read, shown for the user to compare
 * @param {"scanned"|"typed"} how also the identification method sent with the session
 * @returns {Promise<Identification>}
 */
async function identifyOffline(user, matches, read, how) {
  const patients = (await keptPatients(user)).filter((p) => matches(p.mrn.toUpperCase()));
  return { read, how, patients: patients.map((p) => offline(p, how)), incomplete: false,
    offline: true };
}

/**
 * Identify offline from a typed MRN: the patients `user` confirmed before with that MRN.
 * @param {string} user
 * @param {string} mrn
 * @returns {Promise<Identification>}
 */
export async function identifyTypedOffline(user, mrn) {
  const wanted = mrn.trim().toUpperCase();
  return identifyOffline(user, (kept) => kept === wanted, mrn.trim(), "typed");
}

/**
 * Identify offline from a wristband decoded on the device: the patients `user` confirmed before
 * whose MRN is the whole payload or one of its runs of letters and digits (`00123456`,
 * `MRN:00123456`, `00123456^^^HOSP^MR`). Payloads only the server's rules can parse (a GS1
 * element string) match nobody: that patient cannot be identified offline. Never the other
 * patients confirmed before: a wristband names one patient.
 * @param {string} user
 * @param {Barcode|null} barcode what `readWristband` read
 * @returns {Promise<Identification>}
 * @throws {Error} when nothing was decoded on the device (only the server could read it)
 */
export async function identifyScannedOffline(user, barcode) {
  if (!barcode) throw new Error("Scanning needs a connection — type the MRN.");
  const payload = barcode.payload.trim();
  const tokens = new Set([payload, ...payload.split(/[^\p{L}\p{N}]+/u)]
    .map((token) => token.toUpperCase()));
  return identifyOffline(user, (kept) => tokens.has(kept), payload, "scanned");
}
