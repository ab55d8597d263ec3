/**
 * Video clips from the live camera: MediaRecorder on the camera's pictures, drawn frame by
 * frame into a canvas of at most 1080p (a browser may otherwise encode the camera's full
 * 12 MP frames, which H.264 level 4.2 does not allow, whatever size the track reports), in
 * memory only (the chunks become one Blob; nothing is written to the device's gallery), H.264
 * in MP4 where the browser records it (what DICOM stores as recorded), else WebM.
 * @module recorder
 */

/** What a clip is recorded as, best first: H.264 MP4, then the browser's WebM. */
export const CLIP_TYPES = ["video/mp4;codecs=avc1", "video/mp4", "video/webm;codecs=vp9",
  "video/webm;codecs=vp8", "video/webm"];

/** The camera size asked for while recording: 1080p, within H.264 level 4.1/4.2. */
export const CLIP_RESOLUTION = { width: 1920, height: 1080 };

/** Bit rate asked of the recorder: a 60 s clip stays near 60 MB. */
const BITS_PER_SECOND = 8_000_000;

/**
 * The media type this browser records clips as ({@link CLIP_TYPES} order), or null when it
 * cannot record.
 * @param {(type: string) => boolean} [supported] MediaRecorder.isTypeSupported
 * @returns {string|null}
 */
export function clipType(supported = globalThis.MediaRecorder && MediaRecorder.isTypeSupported
  ? (type) => MediaRecorder.isTypeSupported(type) : () => false) {
  return CLIP_TYPES.find((type) => supported(type)) || null;
}

/**
 * The size a clip is recorded at: the camera's picture scaled down to fit `box` (never up),
 * sides even (4:2:0 video).
 * @param {number} width the camera picture's width
 * @param {number} height its height
 * @param {{width: number, height: number}} box
 * @returns {{width: number, height: number}}
 */
export function clipSize(width, height, box) {
  const scale = Math.min(1, box.width / width, box.height / height);
  const even = (value) => Math.max(2, 2 * Math.round((value * scale) / 2));
  return { width: even(width), height: even(height) };
}

/**
 * A stream of `video`'s pictures drawn at `size` into a canvas, one frame per camera frame
 * (requestVideoFrameCallback where the browser has it, else each animation frame).
 * @param {HTMLVideoElement} video
 * @param {{width: number, height: number}} size
 * @returns {{stream: MediaStream, stop: () => void}}
 */
function drawnStream(video, size) {
  const canvas = Object.assign(document.createElement("canvas"), size);
  const context = canvas.getContext("2d");
  const stream = canvas.captureStream(0);
  const [track] = stream.getVideoTracks();
  const perFrame = typeof video.requestVideoFrameCallback === "function";
  let handle = 0;
  let running = true;
  const draw = () => {
    if (!running) return;
    context.drawImage(video, 0, 0, size.width, size.height);
    track.requestFrame();
    handle = perFrame ? video.requestVideoFrameCallback(draw) : requestAnimationFrame(draw);
  };
  draw();
  return {
    stream,
    stop() {
      running = false;
      if (perFrame) video.cancelVideoFrameCallback(handle);
      else cancelAnimationFrame(handle);
      track.stop();
    },
  };
}

/**
 * "m:ss" of a number of seconds (rounded up: a countdown shows 0:00 only at the end).
 * @param {number} seconds
 * @returns {string}
 */
export function clock(seconds) {
  const whole = Math.max(0, Math.ceil(seconds));
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

/**
 * One clip being recorded from the camera shown in a <video>, at {@link clipSize} within
 * {@link CLIP_RESOLUTION}, without sound: `done` resolves with the clip (a Blob typed as the
 * recorder wrote it) when {@link stop} is called or `maxSeconds` have passed; `onTick(left)`
 * gets the seconds left about four times a second.
 */
export class ClipRecording {
  #recorder;
  #timer;
  #chunks = [];
  #source;

  /**
   * @param {HTMLVideoElement} video the live camera
   * @param {string} type from {@link clipType}
   * @param {number} maxSeconds the server's limit (EBIW_MAX_VIDEO_SECONDS)
   * @param {(left: number) => void} onTick
   */
  constructor(video, type, maxSeconds, onTick) {
    this.#source = drawnStream(video, clipSize(video.videoWidth, video.videoHeight, CLIP_RESOLUTION));
    this.#recorder = new MediaRecorder(this.#source.stream,
      { mimeType: type, videoBitsPerSecond: BITS_PER_SECOND });
    this.done = new Promise((resolve, reject) => {
      this.#recorder.addEventListener("dataavailable", (event) => {
        if (event.data.size) this.#chunks.push(event.data);
      });
      this.#recorder.addEventListener("stop", () => {
        clearInterval(this.#timer);
        this.#source.stop();
        const clip = new Blob(this.#chunks, { type: this.#recorder.mimeType || type });
        this.#chunks = [];
        if (clip.size) resolve(clip);
        else reject(new Error("nothing was recorded"));
      });
      this.#recorder.addEventListener("error", (event) => {
        clearInterval(this.#timer);
        this.#source.stop();
        reject(event.error || new Error("the recording failed"));
      });
    });
    const started = performance.now();
    const limit = maxSeconds * 1000;
    this.#recorder.start(1000);
    onTick(maxSeconds);
    this.#timer = setInterval(() => {
      const elapsed = performance.now() - started;
      onTick((limit - elapsed) / 1000);
      // a little short of the limit: the clip's own duration must not pass it
      if (elapsed >= limit - 250) this.stop();
    }, 250);
  }

  /** Stop recording (the clip then arrives in `done`); stopping twice is harmless. */
  stop() {
    if (this.#recorder.state !== "inactive") this.#recorder.stop();
  }
}
