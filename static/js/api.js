/**
 * The server's API as the app uses it: JSON calls with the session cookie and CSRF header,
 * photo uploads with progress, and typed errors (network trouble vs. an answer).
 * @module api
 */

const CSRF_HEADER = "X-CSRF-Token";
let csrfToken = null;

/** The request never got an answer (offline, connection reset, server unreachable). */
export class NetworkError extends Error {
  constructor(message = "no connection to the server") {
    super(message);
    this.name = "NetworkError";
  }
}

/** The server answered with an error status; `message` is the server's, safe to show. */
export class ApiError extends Error {
  /**
   * @param {number} status HTTP status
   * @param {string} code the error body's code
   * @param {string} message the error body's message
   * @param {object|null} [body] the whole JSON answer, when there was one
   * @param {number|null} [retryAfter] the answer's Retry-After, in seconds, when it had one
   */
  constructor(status, code, message, body = null, retryAfter = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.body = body;
    this.retryAfter = retryAfter;
  }

  /** @returns {boolean} whether trying again later may succeed */
  get transient() {
    return this.status >= 500 || [408, 425, 429].includes(this.status);
  }

  /** @returns {boolean} whether the user must log in (again) first */
  get needsLogin() {
    return this.status === 401 || (this.status === 403 && this.code === "csrf");
  }
}

/**
 * Remember the session's CSRF token (from the login answer or GET /api/v1/me); memory only.
 * @param {string|null} token
 */
export function setCsrfToken(token) {
  csrfToken = token;
}

/**
 * What to tell the user of an error answer without a message of ours (a proxy's or a
 * gateway's page, an empty body): what it means, then its status for whoever supports them.
 * @param {number} status HTTP status
 * @returns {string}
 */
function statusMessage(status) {
  const meaning = status === 413 ? "the file is too large for the server"
    : status === 429 ? "the server is busy"
      : status >= 500 ? "the server could not be reached or had a problem"
        : "the server refused it";
  return `${meaning} (error ${status})`;
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: keep the generic message
  }
  const error = (body && body.error) || {};
  const retryAfter = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return new ApiError(response.status, error.code || "error",
    error.message || statusMessage(response.status), body,
    Number.isFinite(retryAfter) ? retryAfter : null);
}

/**
 * Send a request with an optional body (a Blob is sent as is, anything else as JSON); resolve
 * with the successful response, never cached by the browser.
 * @param {string} method
 * @param {string} path
 * @param {object|Blob|undefined} body
 * @param {string} accept the Accept header
 * @param {number} [timeoutMs] give up (NetworkError) when no answer came in this time
 * @returns {Promise<Response>}
 * @throws {NetworkError|ApiError}
 */
async function send(method, path, body, accept, timeoutMs) {
  const headers = { Accept: accept };
  let payload;
  if (body instanceof Blob) {
    headers["Content-Type"] = body.type || "application/octet-stream";
    payload = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  if (method !== "GET" && csrfToken) headers[CSRF_HEADER] = csrfToken;
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, credentials: "same-origin",
      cache: "no-store", signal: timeoutMs ? AbortSignal.timeout(timeoutMs) : undefined });
  } catch {
    throw new NetworkError();
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

/**
 * Call the server with an optional body (a Blob is sent as is, anything else as JSON);
 * resolve with the JSON answer (null for 204).
 * @param {string} method
 * @param {string} path
 * @param {object|Blob} [body]
 * @param {{timeoutMs?: number}} [options] timeoutMs: a NetworkError when no answer came by then
 * @returns {Promise<{status: number, body: any}>}
 * @throws {NetworkError|ApiError}
 */
export async function call(method, path, body, { timeoutMs } = {}) {
  const response = await send(method, path, body, "application/json", timeoutMs);
  return { status: response.status, body: response.status === 204 ? null : await response.json() };
}

/**
 * POST a JSON body and resolve with the image answered (null for 204) and the headers: for
 * images asked about something that must not go in a URL (a patient). Memory only.
 * @param {string} path
 * @param {object} body
 * @returns {Promise<{blob: Blob|null, headers: Headers}>}
 * @throws {NetworkError|ApiError}
 */
export async function postForImage(path, body) {
  const response = await send("POST", path, body, "image/jpeg, application/json");
  let blob = null;
  if (response.status !== 204) {
    try {
      blob = await response.blob();
    } catch {
      throw new NetworkError();  // the connection broke while the image was coming
    }
  }
  return { blob, headers: response.headers };
}

/**
 * PUT a photo's bytes, reporting upload progress; resolve with the server's answer.
 * @param {string} path
 * @param {Blob} blob
 * @param {(loaded: number, total: number) => void} onProgress
 * @param {AbortSignal} [signal] aborts the upload (it then rejects with a NetworkError)
 * @returns {Promise<{status: number, body: object}>}
 * @throws {NetworkError|ApiError}
 */
export function putBlob(path, blob, onProgress, signal) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    if (signal) signal.addEventListener("abort", () => xhr.abort(), { once: true });
    xhr.open("PUT", path);
    xhr.setRequestHeader("Content-Type", blob.type || "application/octet-stream");
    xhr.setRequestHeader("Accept", "application/json");
    if (csrfToken) xhr.setRequestHeader(CSRF_HEADER, csrfToken);
    xhr.responseType = "json";
    xhr.timeout = 60000 + blob.size / 50;  // a stalled link fails instead of hanging (≥ 50 kB/s)
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve({ status: xhr.status, body: xhr.response });
      } else {
        const error = xhr.response && xhr.response.error;
        reject(new ApiError(xhr.status, error ? error.code : "error",
          error ? error.message : statusMessage(xhr.status)));
      }
    });
    xhr.addEventListener("error", () => reject(new NetworkError()));
    xhr.addEventListener("timeout", () => reject(new NetworkError("the upload timed out")));
    xhr.addEventListener("abort", () => reject(new NetworkError("the upload was interrupted")));
    xhr.send(blob);
  });
}

/**
 * Log in; resolve with the session description (user, role, csrf_token, expires_at).
 * @param {string} username
 * @param {string} password
 * @returns {Promise<object>}
 */
export async function login(username, password) {
  const { body } = await call("POST", "/login", { username, password });
  setCsrfToken(body.csrf_token);
  return body;
}

/** End the server session (best effort: the caller purges the device either way). */
export async function logout() {
  try {
    await call("POST", "/logout");
  } finally {
    setCsrfToken(null);
  }
}

/**
 * Who is logged in (and the CSRF token), or null when nobody is.
 * @returns {Promise<object|null>}
 * @throws {NetworkError}
 */
export async function whoAmI() {
  try {
    const { body } = await call("GET", "/api/v1/me");
    setCsrfToken(body.csrf_token);
    return body;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return null;
    throw error;
  }
}
