/**
 * File identity for batch uploads: a file's upload UUID is UUIDv5(batch id, SHA-256 of its
 * bytes as lowercase hex), the same value the server computes (app.workflow.batch
 * upload_uuid_for), so a file dropped again after a reload is recognised, not sent twice.
 * @module batch-files
 */

const ACCEPTED_TYPES = new Set(["image/jpeg", "image/png", "image/heic", "image/heif",
  "image/tiff", "image/webp", "video/mp4", "video/quicktime"]);
const ACCEPTED_NAMES = /\.(jpe?g|png|heic|heif|tiff?|webp|mp4|mov)$/i;

/**
 * Whether a dropped file looks like a photo or a video clip (an Android .mp4, an iPhone .mov)
 * we take (the server checks the bytes anyway).
 * @param {File} file
 * @returns {boolean}
 */
export function acceptable(file) {
  return ACCEPTED_TYPES.has(file.type) || ACCEPTED_NAMES.test(file.name);
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * SHA-256 of a file's bytes, lowercase hex.
 * @param {Blob} blob
 * @returns {Promise<string>}
 */
export async function sha256Hex(blob) {
  return hex(await crypto.subtle.digest("SHA-256", await blob.arrayBuffer()));
}

/**
 * RFC 9562 UUIDv5 of a name (UTF-8) in a namespace UUID, as Python's uuid.uuid5 makes it.
 * @param {string} namespace a UUID
 * @param {string} name
 * @returns {Promise<string>}
 */
export async function uuidV5(namespace, name) {
  const ns = namespace.replace(/-/g, "");
  const bytes = new Uint8Array(16 + new TextEncoder().encode(name).length);
  for (let i = 0; i < 16; i += 1) bytes[i] = parseInt(ns.slice(i * 2, i * 2 + 2), 16);
  bytes.set(new TextEncoder().encode(name), 16);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-1", bytes)).slice(0, 16);
  digest[6] = (digest[6] & 0x0f) | 0x50;
  digest[8] = (digest[8] & 0x3f) | 0x80;
  const h = hex(digest);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

/**
 * Files in file order: by file time (File.lastModified, which cameras and phones set when
 * they write the photo), then by name with digit runs compared as numbers (IMG_9 before
 * IMG_10). Capture time (EXIF DateTimeOriginal) decides on the server; a photo without one
 * keeps its place in this order (app/pipeline/slipsheet.py capture_order).
 * @param {File[]} files
 * @returns {File[]}
 */
export function inFileOrder(files) {
  return [...files].sort((a, b) => a.lastModified - b.lastModified ||
    collator.compare(a.name, b.name));
}
