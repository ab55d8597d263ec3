// Reading DICOM JSON (PS3.18 Annex F) into the viewer's model: a study, its series, and
// "views": an original photo paired with its colour-normalized DERIVED image (matched by the
// derived image's Source Image Sequence), so the viewer can switch between the two.

export const TAG = {
  imageType: "00080008",
  sopClass: "00080016",
  sopInstance: "00080018",
  studyDate: "00080020",
  studyTime: "00080030",
  department: "00081040",
  seriesDescription: "0008103E",
  derivationDescription: "00082111",
  sourceImages: "00082112",
  referencedSop: "00081155",
  anatomicRegion: "00082218",
  codeValue: "00080100",
  codeMeaning: "00080104",
  patientName: "00100010",
  patientId: "00100020",
  issuer: "00100021",
  birthDate: "00100030",
  sex: "00100040",
  study: "0020000D",
  series: "0020000E",
  seriesNumber: "00200011",
  instanceNumber: "00200013",
  laterality: "00200062",
  cineRate: "00180040",
  frameTime: "00181063",
  frames: "00280008",
  rows: "00280010",
  columns: "00280011",
  pixelSpacing: "00280030",
  modality: "00080060",
  conceptName: "0040A043",
};

/** What a rejection note (IHE IOCM KOS) says of the images it took away, by its title's code. */
const REJECTED = {
  113037: "The photos of this study were moved to another patient or withdrawn for patient safety: look for them from the right patient's record.",
  113038: "The photos of this study were withdrawn: they were taken for the wrong worklist entry.",
  113001: "The photos of this study were rejected for quality reasons.",
  113039: "The photos of this study were deleted under the retention policy.",
};

/** Video Photographic Image Storage: a clip, shown in a <video>, never measured. */
export const VIDEO_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.4.1";

const LATERALITY = { L: "left", R: "right", B: "both sides" };
const SEX = { F: "Female", M: "Male", O: "Other" };

export function values(ds, tag) {
  return (ds && ds[tag] && ds[tag].Value) || [];
}

export function first(ds, tag) {
  return values(ds, tag)[0];
}

/** "FAMILY^GIVEN^MIDDLE" → "FAMILY, Given Middle". */
export function personName(ds, tag = TAG.patientName) {
  const value = first(ds, tag);
  const alphabetic = value && value.Alphabetic ? value.Alphabetic : "";
  if (!alphabetic) return "";
  const [family = "", given = "", middle = ""] = alphabetic.split("^");
  const rest = [given, middle].filter(Boolean).join(" ");
  return rest ? `${family}, ${rest}` : family;
}

/** DICOM DA "YYYYMMDD" → ISO "YYYY-MM-DD" (unchanged when malformed). */
export function isoDate(da) {
  return /^\d{8}$/.test(da || "") ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}` : da || "";
}

function isoTime(tm) {
  return /^\d{4}/.test(tm || "") ? `${tm.slice(0, 2)}:${tm.slice(2, 4)}` : "";
}

export function sexLabel(code) {
  return SEX[code] || code || "";
}

export function siteOf(ds) {
  const item = first(ds, TAG.anatomicRegion);
  return item ? { code: first(item, TAG.codeValue), meaning: first(item, TAG.codeMeaning) } : null;
}

export function lateralityLabel(code) {
  return LATERALITY[code] || "";
}

/**
 * Seconds between two frames of a clip: its Frame Time (ms), else one over its Cine Rate
 * (frames per second); null when it has neither.
 */
export function frameSeconds(ds) {
  const frameTime = Number(first(ds, TAG.frameTime));
  if (frameTime > 0) return frameTime / 1000;
  const rate = Number(first(ds, TAG.cineRate));
  return rate > 0 ? 1 / rate : null;
}

/** One image (a photo, or with `video` a clip) as the viewer uses it. */
export function imageOf(ds) {
  const spacing = values(ds, TAG.pixelSpacing).map(Number);
  const source = first(ds, TAG.sourceImages);
  const study = first(ds, TAG.study);
  const series = first(ds, TAG.series);
  const sop = first(ds, TAG.sopInstance);
  return {
    study,
    series,
    sop,
    path: `/studies/${study}/series/${series}/instances/${sop}`,
    number: Number(first(ds, TAG.instanceNumber) || 0),
    seriesNumber: Number(first(ds, TAG.seriesNumber) || 0),
    rows: Number(first(ds, TAG.rows) || 0),
    columns: Number(first(ds, TAG.columns) || 0),
    // PixelSpacing is (row spacing, column spacing): vertical first.
    spacing: spacing.length === 2 && spacing.every((v) => v > 0) ? { row: spacing[0], column: spacing[1] } : null,
    derived: values(ds, TAG.imageType)[0] === "DERIVED",
    video: first(ds, TAG.sopClass) === VIDEO_SOP_CLASS,
    frames: Number(first(ds, TAG.frames) || 1),
    frameSeconds: frameSeconds(ds),
    sourceSop: source ? first(source, TAG.referencedSop) : null,
    derivation: first(ds, TAG.derivationDescription) || "",
    site: siteOf(ds),
    laterality: first(ds, TAG.laterality) || "",
    date: first(ds, TAG.studyDate) || "",
    seriesDescription: first(ds, TAG.seriesDescription) || "",
  };
}

/**
 * How many of ``to``'s pixels one of ``from``'s is, when both are the same scene on pixel grids
 * of one aspect (a normalized copy may be reduced); null when they are not.
 */
export function gridRatio(from, to) {
  if (!from || !to || !from.columns || !to.columns) return null;
  const ratio = to.columns / from.columns;
  return Math.abs(from.rows * ratio - to.rows) <= 1 ? ratio : null;
}

/**
 * Views of a set of images: each original with the derived image made from it (if any);
 * a derived image whose source is not among them stands alone. Ordered by series, number.
 */
export function pairViews(images) {
  const sorted = [...images].sort((a, b) => a.seriesNumber - b.seriesNumber || a.number - b.number);
  const bySop = new Map(sorted.map((image) => [image.sop, image]));
  const views = new Map();
  for (const image of sorted) {
    if (!image.derived || !bySop.has(image.sourceSop) || bySop.get(image.sourceSop).derived) {
      views.set(image.sop, { key: image.sop, original: image, normalized: null });
    }
  }
  for (const image of sorted) {
    const view = image.derived && views.get(image.sourceSop);
    if (view && view.original !== image && !view.normalized) view.normalized = image;
  }
  return [...views.values()];
}

/** The study as the banner, the series list and the views need it, from its metadata. */
/** The instances with pixels to show: not a measurement report, presentation state or note. */
export function imagesOf(instances) {
  return instances.filter((ds) => Number(first(ds, TAG.rows) || 0) > 0);
}

/**
 * Why a study with no images left shows nothing, in words: from the title of its rejection
 * note (a patient move, a quality rejection, the retention policy...), else that it has none.
 */
export function whyNoImages(instances) {
  for (const ds of instances) {
    const code = first(first(ds, TAG.conceptName), TAG.codeValue);
    if (first(ds, TAG.modality) === "KO" && REJECTED[code]) return REJECTED[code];
  }
  return "This study has no images.";
}

export function studyOf(instances) {
  const metadata = imagesOf(instances);
  const images = metadata.map(imageOf);
  const head = metadata.find((ds) => values(ds, TAG.imageType)[0] !== "DERIVED") || metadata[0];
  const series = new Map();
  for (const image of images) {
    if (!series.has(image.series)) {
      series.set(image.series, {
        uid: image.series,
        number: image.seriesNumber,
        description: image.seriesDescription || `Series ${image.seriesNumber}`,
        derived: image.derived,
        images: [],
      });
    }
    series.get(image.series).images.push(image);
  }
  for (const entry of series.values()) entry.images.sort((a, b) => a.number - b.number);
  const site = siteOf(head);
  return {
    uid: first(head, TAG.study),
    patient: {
      name: personName(head),
      id: first(head, TAG.patientId) || "",
      issuer: first(head, TAG.issuer) || "",
      birthDate: isoDate(first(head, TAG.birthDate)),
      sex: sexLabel(first(head, TAG.sex)),
    },
    date: isoDate(first(head, TAG.studyDate)),
    time: isoTime(first(head, TAG.studyTime)),
    department: first(head, TAG.department) || "",
    site,
    laterality: first(head, TAG.laterality) || "",
    series: [...series.values()].sort((a, b) => a.number - b.number),
    views: pairViews(images),
  };
}

/** Earlier studies of the same body site (and side), newest first, from an instance search:
 * their photos (a clip is not shown side by side). */
export function timelineOf(instances, current) {
  const studies = new Map();
  for (const image of instances.map(imageOf)) {
    if (image.study === current.uid || image.video) continue; // photos are compared, not clips
    if (!studies.has(image.study)) studies.set(image.study, []);
    studies.get(image.study).push(image);
  }
  const sameSite = (image) =>
    current.site && image.site && image.site.code === current.site.code &&
    (!current.laterality || current.laterality === "U" || image.laterality === current.laterality);
  return [...studies.entries()]
    .filter(([, images]) => images.some(sameSite))
    .map(([uid, images]) => ({ uid, date: isoDate(images[0].date), views: pairViews(images.filter(sameSite)) }))
    .sort((a, b) => b.date.localeCompare(a.date));
}
