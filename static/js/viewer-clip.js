// A clip (a DICOM Video Photographic Image) in the viewer: a <video> with the browser's
// controls, its first picture as the poster (rendered by the server, as for a photo), and
// stepping one frame back or forward by the instance's Frame Time (or Cine Rate). A clip is not
// measured: it has no pixel spacing, and the measuring stage is hidden while it is shown.
//
// The MP4 comes from WADO-RS `rendered` (video/mp4). Signed in with the session cookie, the
// <video> streams it from that URL (range requests, so a long clip seeks without loading it
// all); with a bearer token (an embedding app), which a media request cannot carry, it is
// fetched with the token and played from an object URL.

import { TOKEN_KEY } from "./viewer-api.js";

// Where in a frame a step lands, in frames: a little after its start, so that Frame Time's six
// digits and the media clock's microseconds never round it back onto the frame before.
const INTO_FRAME = 0.01;

/** The index of the frame shown at `time` seconds (frames `frameSeconds` apart). */
export function frameAt(time, frameSeconds) {
  return Math.floor(time / frameSeconds + INTO_FRAME / 2);
}

/**
 * The time to show after stepping `direction` (-1 or +1) frames from `current` seconds: just
 * after the start of the frame `direction` away from the one shown, kept within the clip's
 * `frames` frames of `frameSeconds` each. Successive steps are one frame time apart.
 */
export function steppedTime(current, frameSeconds, frames, direction) {
  const last = Math.max(0, frames - 1);
  const index = Math.min(last, Math.max(0, frameAt(current, frameSeconds) + direction));
  return (index + INTO_FRAME) * frameSeconds;
}

export class ClipPlayer {
  /**
   * @param {HTMLElement} root an empty element that the player fills (hidden until `show`)
   * @param {import("./viewer-api.js").DicomWeb} api
   * @param {{onFrame?: Function}} options `onFrame(index, frames)` when the shown frame changes
   */
  constructor(root, api, options = {}) {
    this.root = root;
    this.api = api;
    this.options = options;
    this.image = null;
    this.objectUrl = null;
    root.classList.add("clip");
    root.hidden = true;
    this.video = document.createElement("video");
    this.video.controls = true;
    this.video.playsInline = true;
    this.video.preload = "auto";
    this.video.muted = true; // stored clips have no sound unless kept; never autoplayed anyway
    this.status = document.createElement("div");
    this.status.className = "stage-status";
    root.append(this.video, this.status);
    for (const event of ["timeupdate", "seeked", "loadedmetadata"]) {
      this.video.addEventListener(event, () => this.frameChanged());
    }
    this.video.addEventListener("error", () => {
      this.status.hidden = false;
      this.status.textContent = "This clip cannot be played in this browser.";
    });
  }

  /** Show a clip: poster first, then the video's source; resolves once the poster is set. */
  async show(image) {
    this.image = image;
    this.root.hidden = false;
    this.video.setAttribute("aria-label", `Clip ${image.number}`);
    this.status.hidden = false;
    this.status.textContent = "Loading…";
    this.release();
    this.video.removeAttribute("src");
    const box = { width: this.root.clientWidth || 390, height: this.root.clientHeight || 300 };
    const ratio = window.devicePixelRatio || 1;
    const viewport = `${Math.ceil(box.width * ratio)},${Math.ceil(box.height * ratio)}`;
    const poster = await this.api.image(`${image.path}/rendered?viewport=${viewport}`);
    if (this.image !== image) return;
    this.video.poster = poster;
    const source = await this.source(image);
    if (this.image !== image) return;
    this.video.src = source;
    this.status.hidden = true;
    this.frameChanged();
  }

  /** The URL the <video> plays `image` from (see the header). */
  async source(image) {
    const url = `${this.api.root}${image.path}/rendered?accept=video/mp4`;
    if (!sessionStorage.getItem(TOKEN_KEY)) return url;
    const blob = await (await this.api.get(`${image.path}/rendered`, "video/mp4")).blob();
    this.objectUrl = URL.createObjectURL(blob);
    return this.objectUrl;
  }

  release() {
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
    this.objectUrl = null;
  }

  hide() {
    this.image = null;
    this.video.pause();
    this.video.removeAttribute("src");
    this.video.removeAttribute("poster");
    this.video.load();
    this.release();
    this.root.hidden = true;
  }

  /** Whether frame stepping is possible: a clip shown whose frame time is known. */
  canStep() {
    return Boolean(this.image && this.image.frameSeconds);
  }

  /** Pause and show the frame `direction` (-1 or +1) away from the current one. */
  step(direction) {
    if (!this.canStep()) return;
    this.video.pause();
    this.video.currentTime = steppedTime(this.video.currentTime, this.image.frameSeconds,
      this.image.frames, direction);
    this.frameChanged();
  }

  frameChanged() {
    if (!this.canStep() || !this.options.onFrame) return;
    const index = frameAt(this.video.currentTime, this.image.frameSeconds);
    this.options.onFrame(Math.min(index, this.image.frames - 1), this.image.frames);
  }
}
