/**
 * The live camera: a stream shown in a <video>, and frames grabbed to a canvas and encoded as
 * JPEG in memory (canvas → Blob). Nothing is ever written to the device's gallery.
 * @module camera
 */

/** The resolution asked for photos: the best the rear camera gives (12 MP class). */
export const PHOTO_RESOLUTION = { width: 4096, height: 3072 };

/** The resolution asked for scanning a wristband: HD is plenty and quick to send. */
export const SCAN_RESOLUTION = { width: 1920, height: 1080 };

/** @returns {boolean} whether this browser can show a live camera (secure context needed) */
export function cameraSupported() {
  return Boolean(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
}

/**
 * Start the rear camera in `video`.
 * @param {HTMLVideoElement} video
 * @param {{width: number, height: number}} resolution the ideal size
 * @returns {Promise<void>}
 */
export async function startCamera(video, resolution) {
  stopCamera(video);
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: false,
    video: { facingMode: { ideal: "environment" }, width: { ideal: resolution.width },
      height: { ideal: resolution.height } },
  });
  video.srcObject = stream;
  await video.play();
}

/** How long {@link setResolution} waits for the first picture of the new size. */
const RESIZE_WAIT_MS = 2000;

/**
 * Ask the running camera of `video` for another size, at most `resolution` (e.g. a clip's
 * 1080p instead of a photo's 12 MP: the browser scales the picture down), keeping the stream,
 * and wait (up to 2 s) until its pictures have that size, so that what is recorded next starts
 * at it; a camera that refuses keeps its size.
 * @param {HTMLVideoElement} video
 * @param {{width: number, height: number}} resolution the ideal and largest size
 * @returns {Promise<boolean>} whether the camera took the constraints
 */
export async function setResolution(video, resolution) {
  const track = video.srcObject && video.srcObject.getVideoTracks()[0];
  if (!track) return false;
  try {
    await track.applyConstraints({ width: { ideal: resolution.width, max: resolution.width },
      height: { ideal: resolution.height, max: resolution.height } });
  } catch {
    return false;
  }
  const fits = () => video.videoWidth <= resolution.width && video.videoHeight <= resolution.height;
  if (!fits()) {
    await new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        video.removeEventListener("resize", check);
        resolve();
      };
      const check = () => { if (fits()) done(); };
      const timer = setTimeout(done, RESIZE_WAIT_MS);
      video.addEventListener("resize", check);
    });
  }
  return true;
}

/**
 * Stop the camera shown in `video` (the light goes off).
 * @param {HTMLVideoElement} video
 */
export function stopCamera(video) {
  const stream = video.srcObject;
  if (stream) {
    for (const track of stream.getTracks()) track.stop();
  }
  video.srcObject = null;
}

/**
 * The current frame of `video` as a canvas, at full resolution.
 * @param {HTMLVideoElement} video
 * @returns {HTMLCanvasElement}
 */
export function grabFrame(video) {
  if (!video.videoWidth) throw new Error("the camera has no picture yet");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return canvas;
}

/**
 * Encode a canvas as JPEG.
 * @param {HTMLCanvasElement} canvas
 * @param {number} [quality=0.92]
 * @returns {Promise<Blob>}
 */
export function toJpeg(canvas, quality = 0.92) {
  return new Promise((resolve, reject) => {
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("could not encode the photo"))),
      "image/jpeg", quality);
  });
}

/**
 * A small bitmap of a photo for previews (kept in memory, drawn into canvases).
 * @param {Blob|HTMLCanvasElement} source
 * @param {number} [width=320]
 * @returns {Promise<ImageBitmap>}
 */
export async function thumbnailOf(source, width = 320) {
  try {
    return await createImageBitmap(source, { resizeWidth: width, resizeQuality: "medium" });
  } catch {
    // browsers without resize options: scale through a small canvas
    const full = await createImageBitmap(source);
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = Math.max(1, Math.round((full.height * width) / full.width));
    canvas.getContext("2d").drawImage(full, 0, 0, canvas.width, canvas.height);
    full.close();
    return createImageBitmap(canvas);
  }
}
