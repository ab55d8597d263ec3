/**
 * Photo quality on the phone: the sharpness and exposure checks of `app/pipeline/quality.py`,
 * computed the same way, with the thresholds and texts the server renders into the capture
 * page (`<main id="main" data-quality='{...}'>`), so there is one source of truth.
 *
 * Sharpness: variance of the 4-neighbour Laplacian ([[0,1,0],[1,-4,1],[0,1,0]], interior
 * pixels only) of the luma Y = 0.299 R + 0.587 G + 0.114 B of the central square crop of at
 * most `sharpnessCrop` pixels, at the canvas's own resolution (x0 = floor((width - side) / 2)).
 * Exposure: mean luma of every n-th pixel (n = ceil(longest side / 640)); too dark below
 * `minMeanLuma`; too bright when more than `maxClippedFraction` of those pixels have luma >=
 * `clipLuma`.
 * @module quality
 */

let config = null;

/** The server's thresholds and texts, read once from the page's `data-quality`. */
export function thresholds() {
  if (!config) {
    const raw = document.getElementById("main")?.dataset.quality;
    if (!raw) throw new Error("the page has no data-quality thresholds");
    config = JSON.parse(raw);
  }
  return config;
}

function pixels(canvas, x, y, w, h) {
  return canvas.getContext("2d", { willReadFrequently: true }).getImageData(x, y, w, h).data;
}

/**
 * Sharpness of a canvas (see the module comment); higher is sharper.
 * @param {HTMLCanvasElement} source
 * @returns {number}
 */
export function sharpness(source) {
  const side = thresholds().sharpnessCrop;
  const w = Math.min(side, source.width);
  const h = Math.min(side, source.height);
  if (w < 3 || h < 3) return 0;
  const x0 = Math.floor((source.width - w) / 2);
  const y0 = Math.floor((source.height - h) / 2);
  const rgba = pixels(source, x0, y0, w, h);
  const luma = new Float32Array(w * h);
  for (let i = 0, p = 0; i < luma.length; i += 1, p += 4) {
    luma[i] = 0.299 * rgba[p] + 0.587 * rgba[p + 1] + 0.114 * rgba[p + 2];
  }
  let sum = 0;
  let sumSq = 0;
  for (let y = 1; y < h - 1; y += 1) {
    for (let x = 1, i = y * w + 1; x < w - 1; x += 1, i += 1) {
      const lap = luma[i - w] + luma[i + w] + luma[i - 1] + luma[i + 1] - 4 * luma[i];
      sum += lap;
      sumSq += lap * lap;
    }
  }
  const n = (w - 2) * (h - 2);
  const mean = sum / n;
  return sumSq / n - mean * mean;
}

/** Mean luma and the share of clipped pixels, on every n-th pixel of the canvas. */
function exposure(canvas, clipLuma) {
  const step = Math.max(1, Math.ceil(Math.max(canvas.width, canvas.height) / 640));
  const rgba = pixels(canvas, 0, 0, canvas.width, canvas.height);
  let sum = 0;
  let clipped = 0;
  let n = 0;
  for (let y = 0; y < canvas.height; y += step) {
    for (let x = 0; x < canvas.width; x += step) {
      const p = 4 * (y * canvas.width + x);
      const luma = 0.299 * rgba[p] + 0.587 * rgba[p + 1] + 0.114 * rgba[p + 2];
      sum += luma;
      if (luma >= clipLuma) clipped += 1;
      n += 1;
    }
  }
  return { mean: n ? sum / n : 0, clipped: n ? clipped / n : 0 };
}

/**
 * The checks the phone can make on a photo before sending it: sharpness and exposure, with
 * the server's ids and texts. `ok` is false when one of them fails ("retake?").
 * @param {HTMLCanvasElement} canvas
 * @returns {{ok: boolean, checks: Array<{id: string, ok: boolean, value: number, text: string}>}}
 */
export function photoChecks(canvas) {
  const t = thresholds();
  const sharp = sharpness(canvas);
  const { mean, clipped } = exposure(canvas, t.clipLuma);
  const dark = mean < t.minMeanLuma;
  const bright = clipped > t.maxClippedFraction;
  const checks = [
    { id: "sharpness", ok: sharp >= t.minSharpness, value: Math.round(sharp * 10) / 10,
      text: sharp >= t.minSharpness ? t.texts.sharpness_ok : t.texts.sharpness_bad },
    { id: "exposure", ok: !(dark || bright), value: Math.round(mean * 10) / 10,
      text: dark ? t.texts.exposure_dark : bright ? t.texts.exposure_bright
        : t.texts.exposure_ok },
  ];
  return { ok: checks.every((c) => c.ok), checks };
}
