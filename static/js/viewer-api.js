// DICOMweb client of the viewer: same-origin fetches with the user's credentials.
//
// The session cookie is sent with every request (credentials: "same-origin"); an app that
// embeds the viewer may instead put a bearer token in sessionStorage["ebiw.token"], which is
// then sent as Authorization and takes precedence, as on the server.

export const TOKEN_KEY = "ebiw.token";

export class AuthError extends Error {
  constructor() {
    super("sign-in required");
    this.name = "AuthError";
  }
}

export class DicomWeb {
  /** @param {string} root path of the DICOMweb root, e.g. "/dicomweb" */
  constructor(root) {
    this.root = root.replace(/\/$/, "");
    this.images = new Map(); // path -> Promise<object URL>, for the life of the page
    this.waiting = []; // queued image fetches
    this.running = 0;
    this.limit = 1;
  }

  /** How many queued image fetches may run at once (raise it once the main image is in). */
  setQueueLimit(limit) {
    this.limit = limit;
    this.next();
  }

  headers(accept) {
    const headers = { Accept: accept };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  async get(path, accept) {
    const response = await fetch(this.root + path, {
      headers: this.headers(accept),
      credentials: "same-origin",
      cache: "default",
    });
    if (response.status === 401) throw new AuthError();
    if (!response.ok) throw new Error(await refusal(response));
    return response;
  }

  /** DICOM JSON datasets of a search or metadata request ([] for 204 No Content). */
  async json(path) {
    const response = await this.get(path, "application/dicom+json");
    return response.status === 204 ? [] : response.json();
  }

  /**
   * An object URL of a rendered image or thumbnail, fetched once per page. With ``queued``,
   * only a few such fetches run together (see setQueueLimit), so that a study's thumbnails,
   * which the server renders on their first view, do not all compete with the main image.
   */
  image(path, { queued = false } = {}) {
    if (!this.images.has(path)) {
      const fetchBlob = () => this.get(path, "image/jpeg").then((response) => response.blob());
      const pending = (queued ? this.inTurn(fetchBlob) : fetchBlob())
        .then((blob) => URL.createObjectURL(blob));
      pending.catch(() => this.images.delete(path));
      this.images.set(path, pending);
    }
    return this.images.get(path);
  }

  inTurn(task) {
    return new Promise((resolve, reject) => {
      this.waiting.push(() => task().then(resolve, reject).finally(() => {
        this.running -= 1;
        this.next();
      }));
      this.next();
    });
  }

  next() {
    while (this.running < this.limit && this.waiting.length) {
      this.running += 1;
      this.waiting.shift()();
    }
  }
}

/** The message of a JSON error body (which names no PHI), else `fallback`. */
function errorMessage(body, fallback) {
  return body && body.error && body.error.message ? body.error.message : fallback;
}

/** What an archive's refusal says: its error body's message, else its status. */
async function refusal(response) {
  const body = await response.json().catch(() => null);
  return errorMessage(body, `the archive answered ${response.status}`);
}

/** Query string of QIDO-RS parameters; repeated keys for arrays. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const item of [].concat(value)) search.append(key, item);
  }
  return search.toString();
}

export class ApiError extends Error {
  constructor(status, body) {
    super(errorMessage(body, `the server answered ${status}`));
    this.name = "ApiError";
    this.status = status;
  }
}

/**
 * The JSON API (/api/v1) with the same credentials as DicomWeb; a state-changing request
 * with the session cookie carries the login's CSRF token (from GET /me, fetched once).
 */
export class JsonApi {
  /** @param {string} root path of the API root, e.g. "/api/v1" */
  constructor(root) {
    this.root = root.replace(/\/$/, "");
    this.csrf = null;
  }

  async request(method, path, body) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    else if (method !== "GET") headers["X-CSRF-Token"] = await this.csrfToken();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(this.root + path, {
      method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) throw new AuthError();
    const answer = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, answer);
    return answer;
  }

  async csrfToken() {
    if (!this.csrf) this.csrf = (await this.request("GET", "/me")).csrf_token || "";
    return this.csrf;
  }

  get(path) {
    return this.request("GET", path);
  }

  post(path, body) {
    return this.request("POST", path, body);
  }

  delete(path) {
    return this.request("DELETE", path);
  }
}
