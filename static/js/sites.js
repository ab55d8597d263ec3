/**
 * Body sites (SNOMED CT, from GET /api/v1/body-sites, kept on the device for starting
 * offline): search, and the sites this device used recently. localStorage keeps only the site
 * codes, never anything about a patient.
 * @module sites
 */

import { NetworkError, call } from "./api.js";
import { keepSites, keptSites } from "./store.js";

const RECENT_KEY = "ebiw.recentSites";
const RECENT_MAX = 8;

let sitesPromise = null;

/**
 * @typedef {object} BodySite
 * @property {string} code SNOMED CT code
 * @property {string} meaning
 * @property {boolean} paired laterality (R, L or B) is required
 * @property {boolean} sensitive photos are flagged sensitive
 */

/**
 * Every selectable site: fetched once and kept on the device; offline, the kept table.
 * @returns {Promise<BodySite[]>}
 * @throws {NetworkError} offline before the table was ever fetched
 */
export function loadSites() {
  if (!sitesPromise) {
    sitesPromise = (async () => {
      try {
        const { body } = await call("GET", "/api/v1/body-sites");
        await keepSites(body);
        return body;
      } catch (error) {
        const kept = error instanceof NetworkError ? await keptSites() : null;
        if (!kept) throw error;
        sitesPromise = null;  // fetch it again next time: the network may be back
        return kept;
      }
    })();
    sitesPromise.catch(() => { sitesPromise = null; });
  }
  return sitesPromise;
}

/** @returns {string[]} codes of the recently used sites, most recent first */
export function recentCodes() {
  try {
    const codes = JSON.parse(localStorage.getItem(RECENT_KEY) || "[]");
    return Array.isArray(codes) ? codes.filter((c) => typeof c === "string") : [];
  } catch {
    return [];
  }
}

/** @param {string} code the site just used */
export function rememberSite(code) {
  const codes = [code, ...recentCodes().filter((c) => c !== code)].slice(0, RECENT_MAX);
  localStorage.setItem(RECENT_KEY, JSON.stringify(codes));
}

/**
 * The sites to offer for a search: recent ones first, then matches on a word start before
 * matches inside a word; at most `limit`.
 * @param {BodySite[]} sites
 * @param {string} query
 * @param {number} [limit=40]
 * @returns {BodySite[]}
 */
export function searchSites(sites, query, limit = 40) {
  const q = query.trim().toLowerCase();
  const recent = recentCodes();
  const rank = (site) => {
    const meaning = site.meaning.toLowerCase();
    const recency = recent.indexOf(site.code);
    if (!q) return recency >= 0 ? recency : null;
    const at = meaning.indexOf(q);
    if (at < 0 && site.code !== q) return null;
    const wordStart = at === 0 || (at > 0 && !/[a-z]/.test(meaning[at - 1]));
    return (recency >= 0 ? 0 : 100) + (wordStart ? 0 : 50) + Math.min(at, 49);
  };
  return sites.map((site) => [rank(site), site])
    .filter(([r]) => r !== null)
    .sort((a, b) => a[0] - b[0] || a[1].meaning.localeCompare(b[1].meaning))
    .slice(0, limit)
    .map(([, site]) => site);
}
