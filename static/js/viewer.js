// The study viewer: patient banner, series with thumbnails, the image with zoom, pan and
// measuring tools, original/normalized toggle with the ΔE report, and earlier studies of the
// same site side by side; a clip plays in its own player with frame stepping (viewer-clip.js)
// and no measuring tools. Everything comes from /dicomweb (see viewer-api.js for credentials).
//
// Performance marks for benchmarks: "ebiw:first-thumbnail" and "ebiw:main-image" when they are
// painted (the images also carry elementtiming attributes).

import { AuthError, DicomWeb, JsonApi, query } from "./viewer-api.js";
import { ClipPlayer } from "./viewer-clip.js";
import { gridRatio, imagesOf, lateralityLabel, studyOf, timelineOf, whyNoImages } from "./viewer-dicom.js";
import { ellipseEstimate, saveRequest, storedOn } from "./viewer-measure.js";
import { formatMeasurement, MEASURED, Stage } from "./viewer-stage.js";

const body = document.body;
const api = new DicomWeb(body.dataset.dicomweb);
const json = new JsonApi(body.dataset.api);
const $ = (id) => document.getElementById(id);
const TIMELINE_FIELDS = ["AnatomicRegionSequence", "ImageLaterality", "ImageType", "SourceImageSequence",
  "PixelSpacing", "DerivationDescription", "SeriesDescription"];

const state = { study: null, view: null, variant: "original", tool: "pan", compare: null, stored: [] };
/** What the last Clear removed, [[stage, shapes]], while "Undo clear" can put it back: until
 * anything is drawn again or another view is chosen. A stray tap near the toolbar must not
 * lose a clinician's unsaved tracing. */
let cleared = null;
/** The unsaved drawings of the photos not shown, by view ({image, shapes}): back when the photo
 * is chosen again, and the page asks before it is left with any (see `unsavedDrawings`). */
const drafts = new Map();

function markOnce(name) {
  let done = false;
  return () => {
    if (!done) {
      done = true;
      performance.mark(name);
      if (name === "ebiw:main-image") body.dataset.ready = "true";
    }
  };
}

const markThumbnail = markOnce("ebiw:first-thumbnail");
const markMain = markOnce("ebiw:main-image");
const stagesElement = $("stages");
const mainElement = document.createElement("div");
const clipElement = document.createElement("div");
clipElement.id = "clip";
stagesElement.append(mainElement, clipElement);
const clip = new ClipPlayer(clipElement, api, { onFrame: showFrameNumber });
const main = new Stage(mainElement, api, {
  timing: "main-image", onChange: renderMeasurements, onPainted: markMain,
  onOutline: proposeOutline, onHint: (text) => measureStatus(text, true), noteText: () => $("note-text").value.trim() || "Note",
});
main.root.id = "stage-main";
let compare = null;

// --- messages ------------------------------------------------------------------------------

function message(text, link) {
  const box = $("message");
  box.replaceChildren(document.createTextNode(text));
  if (link) {
    const anchor = document.createElement("a");
    anchor.href = link.href;
    anchor.textContent = link.text;
    box.append(" ", anchor);
  }
  box.hidden = false;
}

function fail(error) {
  if (error instanceof AuthError) {
    const login = body.dataset.login;
    message("Please sign in to see this study.",
      login ? { href: `${login}?next=${encodeURIComponent(location.pathname)}`, text: "Sign in" } : null);
  } else {
    message(`The study could not be loaded: ${error.message}.`);
  }
}

// --- banner and series -----------------------------------------------------------------------

function siteText(site, laterality) {
  if (!site) return "–";
  const side = lateralityLabel(laterality);
  return side ? `${site.meaning}, ${side}` : site.meaning;
}

function renderBanner() {
  const { patient, date, time, site, laterality, department } = state.study;
  $("patient-name").textContent = patient.name || "Name not recorded";
  $("patient-id").textContent = patient.issuer ? `${patient.id} (${patient.issuer})` : patient.id || "–";
  $("patient-birth").textContent = patient.birthDate || "–";
  $("patient-sex").textContent = patient.sex || "–";
  $("study-date").textContent = [date, time].filter(Boolean).join(" ") || "–";
  $("study-site").textContent = siteText(site, laterality);
  $("study-department").textContent = department || "–";
  document.title = `${patient.name || "Study"} · ${date} · ebiw-capture`;
}

function thumbnail(image, label) {
  const img = document.createElement("img");
  img.alt = label;
  img.decoding = "async";
  img.setAttribute("elementtiming", "thumbnail");
  api.image(`${image.path}/thumbnail`, { queued: true }).then((url) => {
    img.addEventListener("load", () => requestAnimationFrame(markThumbnail), { once: true });
    img.src = url;
  }).catch(() => img.classList.add("missing"));
  return img;
}

function renderSeries() {
  const nav = $("series");
  nav.replaceChildren();
  for (const series of state.study.series) {
    const section = document.createElement("section");
    const title = document.createElement("h2");
    title.textContent = `${series.description} (${series.images.length})`;
    const list = document.createElement("ul");
    for (const image of series.images) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "thumb";
      button.dataset.sop = image.sop;
      const caption = document.createElement("span");
      caption.textContent = `${image.video ? "Clip" : image.derived ? "Normalized" : "Image"} ${image.number}`;
      button.append(thumbnail(image, caption.textContent), caption);
      button.addEventListener("click", () => {
        const view = state.study.views.find((v) => v.original === image || v.normalized === image);
        state.variant = view.normalized === image ? "normalized" : "original";
        selectView(view);
      });
      item.append(button);
      list.append(item);
    }
    section.append(title, list);
    nav.append(section);
  }
}

// --- the selected view -----------------------------------------------------------------------

function shown(view) {
  return state.variant === "normalized" && view.normalized ? view.normalized : view.original;
}

/** Pixel spacing for an image: its own, else its pair's on this image's pixel grid. */
function calibration(view, image) {
  if (image.spacing) return { spacing: image.spacing, from: "own" };
  const other = image === view.original ? view.normalized : view.original;
  const ratio = other && other.spacing ? gridRatio(image, other) : null;
  if (ratio) {
    return { spacing: { row: other.spacing.row * ratio, column: other.spacing.column * ratio }, from: "pair" };
  }
  return { spacing: null, from: null };
}

function calibrationText(found) {
  if (!found.spacing) {
    return "Not calibrated: this image has no pixel spacing, so what you draw is shown in pixels. Saved measurements are in millimetres, measured by the server on the colour chart's plane (a photo without a chart cannot be saved).";
  }
  const mm = found.spacing.column.toPrecision(3);
  return found.from === "own"
    ? `Calibrated: ${mm} mm per pixel at the chart plane.`
    : `Calibrated from the normalized image's chart: ${mm} mm per pixel at the chart plane.`;
}

async function showIn(stage, view, keep) {
  forgetCleared(); // what Clear removed was drawn on the image about to be replaced
  const image = shown(view);
  const found = calibration(view, image);
  stage.root.classList.toggle("uncalibrated", !found.spacing);
  stage.root.dataset.calibrated = found.spacing ? "true" : "false";
  await stage.show(image, found.spacing, { keepMeasurements: keep });
  if (stage === main) stage.setStored(storedOn(state.stored, view, image));
  return found;
}

function markCurrent() {
  for (const button of document.querySelectorAll(".thumb")) {
    if (button.dataset.sop === shown(state.view).sop) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

/** Show the clip player or the measuring stage, and the toolbar that goes with it. */
function showPlayer(video) {
  mainElement.hidden = video;
  for (const element of document.querySelectorAll(".photo-tools")) element.hidden = video;
  $("frames").hidden = !video;
  $("frame-number").hidden = !video;
  if (!video) clip.hide();
}

function showFrameNumber(index, frames) {
  $("frame-number").textContent = `Frame ${index + 1} of ${frames}`;
  for (const button of document.querySelectorAll("[data-step]")) {
    button.disabled = Number(button.dataset.step) < 0 ? index <= 0 : index >= frames - 1;
  }
}

async function selectClip(view) {
  showPlayer(true);
  forgetCleared();
  main.clear(); // the photo's drawings were kept by selectView
  main.setStored([]);
  const note = $("calibration");
  note.textContent = "A clip is not measured: choose a photo to measure.";
  note.classList.remove("warning");
  try {
    await clip.show(view.original);
    requestAnimationFrame(markMain);
  } catch (error) {
    fail(error);
  }
}

async function selectView(view) {
  const keep = state.view === view;
  if (!keep && state.view && main.measurements.length) {
    drafts.set(state.view, { image: main.image, shapes: main.measurements });
  }
  state.view = view;
  if (view.original.video && state.compare) closeCompare(); // photos are compared, not clips
  markCurrent();
  renderVariant();
  renderReport();
  if (view.original.video) {
    await selectClip(view);
    return;
  }
  showPlayer(false);
  main.setLabel(stageLabel());
  const found = calibration(view, shown(view));
  const note = $("calibration");
  note.textContent = calibrationText(found);
  note.classList.toggle("warning", !found.spacing);
  try {
    await showIn(main, view, keep);
  } catch (error) {
    fail(error);
    return;
  }
  const kept = keep ? null : drafts.get(view);
  if (kept) {
    drafts.delete(view);
    main.restore(kept.shapes, kept.image);
  }
}

function stageLabel() {
  const variant = state.view && state.view.normalized ? ` · ${state.variant === "normalized" ? "normalized" : "original"}` : "";
  return `${state.compare ? "This study" : state.study.date}${variant}`;
}

function renderVariant() {
  const group = $("variant");
  const anyNormalized = Boolean(state.view.normalized) || Boolean(state.compare && state.compare.views.some((v) => v.normalized));
  group.hidden = !anyNormalized;
  for (const button of group.querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.variant === state.variant));
    button.disabled = button.dataset.variant === "normalized" && !state.view.normalized;
  }
}

function renderReport() {
  const normalized = state.view.normalized;
  $("report").hidden = !normalized;
  $("report-text").textContent = normalized ? normalized.derivation || "No report recorded." : "";
}

function renderMeasurements() {
  const list = $("measurements");
  list.replaceChildren();
  const stages = compare && state.compare ? [[main, "This study"], [compare, `Earlier, ${state.compare.date}`]] : [[main, ""]];
  for (const [stage, prefix] of stages) {
    for (const result of stage.results()) {
      const item = document.createElement("li");
      item.dataset.kind = result.kind;
      if (result.value !== null) item.dataset.value = String(result.value);
      const mm = stage.spacing || result.saved;
      if (result.value !== null) item.dataset.unit = mm ? (result.kind === "area" ? "mm2" : "mm") : (result.kind === "area" ? "px2" : "px");
      if (result.saved) item.dataset.saved = "true";
      const text = document.createElement("span");
      text.textContent = `${prefix ? `${prefix} · ` : ""}${result.name}: ${result.text || "drawn"}`;
      if (result.saved) text.textContent += ` · saved, ${result.saved.wound}`;
      const warnings = result.saved ? result.saved.warnings : [];
      if (warnings.length) {
        // kept with the report (the SR and its index), so said again after every reload
        item.dataset.warnings = warnings.map((w) => w.code).join(" ");
        const note = document.createElement("span");
        note.className = "measure-warning";
        note.textContent = `Warning: ${warnings.map((w) => w.message).join("; ")}`;
        text.append(note);
      }
      item.append(text);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "plain delete";
      remove.textContent = "✕";
      if (!result.saved) {
        remove.setAttribute("aria-label", `Delete ${result.name}`);
        remove.addEventListener("click", () => stage.remove(result.shape));
        item.prepend(remove);
      } else if (stage === main) {
        remove.setAttribute("aria-label", `Withdraw the saved report holding ${result.name}`);
        remove.addEventListener("click", () => withdrawReport(result.saved));
        item.prepend(remove);
      }
      list.append(item);
    }
  }
  const estimate = ellipseEstimate(main.results(), Boolean(main.spacing));
  const note = $("ellipse");
  note.hidden = !estimate;
  if (estimate) {
    const traced = estimate.area === null ? "" : ` · traced area ${formatMeasurement("area", estimate.area, estimate.calibrated)}`;
    note.textContent = `L×W ellipse (π/4·L·W): ${formatMeasurement("area", estimate.ellipse, estimate.calibrated)}${traced}`;
  }
  $("save").disabled = !main.unsaved().length;
  if (stages.some(([stage]) => stage.measurements.length)) forgetCleared();
}

function clearOrUndo() {
  if (cleared) {
    const removed = cleared;
    forgetCleared();
    for (const [stage, shapes] of removed) stage.restore(shapes);
    measureStatus("Drawings put back.");
    return;
  }
  const removed = stages().map((stage) => [stage, stage.clear()]).filter(([, shapes]) => shapes.length);
  if (!removed.length) return;
  cleared = removed;
  const count = removed.reduce((sum, [, shapes]) => sum + shapes.length, 0);
  const button = $("clear");
  button.textContent = "Undo clear";
  button.title = "Put back the drawings just removed";
  measureStatus(`Removed ${count} unsaved drawing${count === 1 ? "" : "s"}. Tap “Undo clear” to put ${count === 1 ? "it" : "them"} back.`);
}

/** How many measured shapes (lengths, widths, areas) are drawn and not saved, on any photo. */
function unsavedDrawings() {
  const measured = (shapes) => shapes.filter((m) => MEASURED.has(m.kind)).length;
  return main.unsaved().length + [...drafts.values()].reduce((sum, kept) => sum + measured(kept.shapes), 0);
}

function forgetCleared() {
  if (!cleared) return;
  cleared = null;
  const button = $("clear");
  button.textContent = "Clear";
  button.title = "Remove all measurements";
  measureStatus("");
}

function measureStatus(text, warning = false) {
  const box = $("measure-status");
  box.textContent = text;
  box.classList.toggle("warning", warning);
  box.hidden = !text;
}

/** The study's stored measurements, drawn on the main image. */
async function loadStored() {
  try {
    state.stored = (await json.get(`/studies/${encodeURIComponent(state.study.uid)}/measurements`)).measurements;
  } catch (error) {
    measureStatus(`Saved measurements not available (${error.message}).`, true);
    return;
  }
  if (main.image) main.setStored(storedOn(state.stored, state.view, main.image));
}

/** Withdraw a stored report (every measurement saved with it) once the user confirms. */
async function withdrawReport(saved) {
  const count = state.stored.filter((m) => m.report_sop_instance_uid === saved.report_sop_instance_uid).length;
  if (!window.confirm(`Withdraw the saved report of ${saved.wound} (${count} measurement${count === 1 ? "" : "s"})? It is kept on record as withdrawn; the PACS and the EMR are told.`)) return;
  measureStatus("Withdrawing…");
  try {
    await json.delete(`/studies/${encodeURIComponent(state.study.uid)}/measurements/${encodeURIComponent(saved.report_sop_instance_uid)}`);
    measureStatus("Withdrawn: the report is marked rejected in this study, the PACS and the EMR.");
  } catch (error) {
    measureStatus(`Not withdrawn: ${error.message}`, true);
  }
  await loadStored();
}

async function proposeOutline(stage, point) {
  measureStatus("Finding the wound's outline…");
  const seed = [Math.min(stage.image.columns - 1, Math.floor(point.x)), Math.min(stage.image.rows - 1, Math.floor(point.y))];
  try {
    const answer = await json.post("/outline", { study: state.study.uid, instance: stage.image.sop, seed });
    stage.add("area", answer.polygon.map(([x, y]) => ({ x, y })));
    measureStatus("Outline proposed: drag its corners to adjust it, then Save.");
  } catch (error) {
    measureStatus(`No outline proposed: ${error.message}`, true);
  }
}

async function saveMeasurements() {
  const request = saveRequest(main, $("wound").value.trim() || "wound 1");
  if (!request.lines.length && !request.polygons.length) return;
  $("save").disabled = true;
  measureStatus("Saving…");
  try {
    const answer = await json.post(`/studies/${encodeURIComponent(state.study.uid)}/measurements`, request);
    for (const shape of main.unsaved()) main.remove(shape);
    const warnings = [...answer.warnings.map((w) => w.message), ...answer.calibration.warnings.map((w) => w.message)];
    measureStatus(`Saved as a DICOM report in this study: values measured on the chart's plane (tilt ${answer.calibration.tilt_deg}°).${warnings.length ? ` Warning: ${[...new Set(warnings)].join("; ")}` : ""}`, warnings.length > 0);
    await loadStored();
  } catch (error) {
    measureStatus(`Not saved: ${error.message}`, true);
    renderMeasurements();
  }
}

// --- earlier studies -------------------------------------------------------------------------

async function loadTimeline() {
  const list = $("timeline");
  const { patient } = state.study;
  if (!patient.id || !state.study.site) {
    list.replaceChildren(Object.assign(document.createElement("li"), { className: "empty", textContent: "No body site or patient ID to compare by." }));
    return;
  }
  // The server finds the patient's instances from the study: no Patient ID in the URL.
  const related = `/studies/${encodeURIComponent(state.study.uid)}/related/instances`;
  try {
    const entries = timelineOf(
      await api.json(`${related}?${query({ includefield: TIMELINE_FIELDS })}`), state.study);
    list.replaceChildren();
    if (!entries.length) {
      list.append(Object.assign(document.createElement("li"), { className: "empty", textContent: "None." }));
    }
    for (const entry of entries) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "timeline-item";
      button.dataset.study = entry.uid;
      const text = document.createElement("span");
      text.textContent = `${entry.date} · ${entry.views.length} image${entry.views.length === 1 ? "" : "s"}`;
      button.append(thumbnail(entry.views[0].original, `Earlier study of ${entry.date}`), text);
      button.addEventListener("click", () => openCompare(entry));
      item.append(button);
      list.append(item);
    }
  } catch (error) {
    list.replaceChildren(Object.assign(document.createElement("li"), { className: "empty", textContent: `Not available (${error.message}).` }));
  }
}

async function openCompare(entry) {
  if (state.view.original.video) { // photos are compared: leave the clip for the first photo
    const photo = state.study.views.find((v) => !v.original.video);
    if (!photo) return;
    await selectView(photo);
  }
  if (!compare) {
    const element = document.createElement("div");
    element.id = "stage-compare";
    stagesElement.append(element);
    compare = new Stage(element, api, { onChange: renderMeasurements });
  }
  state.compare = entry;
  compare.setTool(state.tool);
  stagesElement.classList.add("comparing");
  $("close-compare").hidden = false;
  for (const button of document.querySelectorAll(".timeline-item")) {
    button.setAttribute("aria-pressed", String(button.dataset.study === entry.uid));
  }
  main.setLabel(stageLabel());
  compare.setLabel(`Earlier · ${entry.date}`);
  renderVariant();
  main.fit();
  try {
    await showIn(compare, entry.views[0], false);
  } catch (error) {
    fail(error);
  }
  renderMeasurements();
}

function closeCompare() {
  state.compare = null;
  stagesElement.classList.remove("comparing");
  if (compare) {
    compare.root.remove();
    compare = null;
  }
  $("close-compare").hidden = true;
  forgetCleared();
  for (const button of document.querySelectorAll(".timeline-item")) button.setAttribute("aria-pressed", "false");
  main.setLabel(stageLabel());
  requestAnimationFrame(() => main.fit());
  renderMeasurements();
}

// --- toolbar ---------------------------------------------------------------------------------

function stages() {
  return compare ? [main, compare] : [main];
}

function setTool(tool) {
  state.tool = tool;
  for (const button of document.querySelectorAll("button[data-tool]")) {
    button.setAttribute("aria-pressed", String(button.dataset.tool === tool));
  }
  for (const stage of stages()) stage.setTool(tool);
}

function wireToolbar() {
  for (const button of document.querySelectorAll("button[data-tool]")) {
    button.addEventListener("click", () => setTool(button.dataset.tool));
  }
  for (const button of document.querySelectorAll("[data-variant]")) {
    button.addEventListener("click", () => {
      if (state.variant === button.dataset.variant) return;
      state.variant = button.dataset.variant;
      selectView(state.view);
      if (compare && state.compare) showIn(compare, state.compare.views[0], true).catch(fail);
    });
  }
  const zoom = { in: (s) => s.zoomAt(1.5), out: (s) => s.zoomAt(1 / 1.5), fit: (s) => s.fit() };
  for (const button of document.querySelectorAll("[data-zoom]")) {
    button.addEventListener("click", () => stages().forEach(zoom[button.dataset.zoom]));
  }
  $("clear").addEventListener("click", clearOrUndo);
  window.addEventListener("beforeunload", (event) => {
    if (unsavedDrawings()) event.preventDefault();
  });
  $("save").addEventListener("click", saveMeasurements);
  $("close-compare").addEventListener("click", closeCompare);
  for (const button of document.querySelectorAll("[data-step]")) {
    button.addEventListener("click", () => clip.step(Number(button.dataset.step)));
  }
  document.addEventListener("keydown", (event) => {
    if (event.target.closest && event.target.closest("input, textarea")) return;
    if (clip.canStep() && (event.key === "," || event.key === ".")) clip.step(event.key === "," ? -1 : 1);
    else if (event.key === "Escape") stages().forEach((s) => s.cancel());
    else if (event.key === "+" || event.key === "=") stages().forEach(zoom.in);
    else if (event.key === "-") stages().forEach(zoom.out);
    else if (event.key === "0") stages().forEach(zoom.fit);
  });
}

// --- start -----------------------------------------------------------------------------------

async function start() {
  wireToolbar();
  setTool("pan");
  try {
    const metadata = await api.json(`/studies/${encodeURIComponent(body.dataset.study)}/metadata`);
    if (!imagesOf(metadata).length) {
      $("patient-name").textContent = "No photos to show";
      for (const part of document.querySelectorAll(".banner dl, .layout > *")) part.hidden = true;
      message(whyNoImages(metadata));
      return;
    }
    state.study = studyOf(metadata);
    renderBanner();
    const first = selectView(state.study.views[0]); // the main image is requested first
    renderSeries(); // thumbnails one at a time until the main image is in, then three at once
    markCurrent();
    await first;
    api.setQueueLimit(3);
    loadStored();
    loadTimeline();
  } catch (error) {
    fail(error);
  }
}

start();
