/**
 * Small DOM helpers and the wording of values shown to the user. No innerHTML anywhere:
 * every text goes in as text.
 * @module ui
 */

/**
 * The element with this id (throws when the page lacks it: a bug, not a user error).
 * @param {string} id
 * @returns {HTMLElement}
 */
export function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`#${id} is missing from the page`);
  return element;
}

/**
 * Make an element: `h("li", {class: "card"}, "text", child)`.
 * @param {string} tag
 * @param {Object<string, string|boolean|number>} [attributes] `false`/`null` attributes are left out
 * @param {...(Node|string|null)} children
 * @returns {HTMLElement}
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) element.append(child);
  }
  return element;
}

/**
 * Show a message in an element (hidden when the message is empty).
 * @param {HTMLElement} element
 * @param {string} [message]
 */
export function say(element, message = "") {
  element.textContent = message;
  element.hidden = !message;
}

/**
 * Replace a part of the page (`build` replaces `container`'s children) without dropping the
 * user's focus to the body. Elements that may hold focus carry a `data-focus` key, the same
 * in every build. Afterwards focus is on the first element found with one of `wanted`'s keys,
 * else with the key of the element focused before (a text field keeps its caret), else with
 * that of its nearest keyed ancestor (a row that stands for a control the new build lacks);
 * when none is found, focus is left to the browser.
 * @param {HTMLElement} container
 * @param {() => void} build
 * @param {string[]} [wanted] keys to focus, first found wins, before what had focus
 */
export function rebuildKeepingFocus(container, build, wanted = []) {
  const active = document.activeElement;
  const keys = [...wanted];
  for (let el = active; el instanceof HTMLElement && el !== container &&
    container.contains(el); el = el.parentElement) {
    if (el.dataset.focus) keys.push(el.dataset.focus);
  }
  const caret = active instanceof HTMLInputElement && typeof active.selectionStart === "number"
    ? [active.selectionStart, active.selectionEnd] : null;
  build();
  for (const key of keys) {
    const target = container.querySelector(`[data-focus="${CSS.escape(key)}"]`);
    if (!(target instanceof HTMLElement)) continue;
    target.focus();
    if (caret && target instanceof HTMLInputElement && key === active.dataset.focus) {
      target.setSelectionRange(caret[0], caret[1]);
    }
    return;
  }
}

/** The screens the phone's Back button leaves the app from; on the others it stays in it. */
const OUTER_SCREENS = ["home", "login"];

/**
 * Make sure the phone's Back button stays in the app: one history entry of this page (the same
 * URL, a state that says nothing but that) stands between the app and the page before it; Back
 * takes it off, and the app's popstate handler goes one screen back.
 */
export function keepBackInApp() {
  if (!(history.state && history.state.inApp)) history.pushState({ inApp: true }, "");
}

/**
 * Show one screen (`<section id="screen-NAME">`), hide the others and move focus to its title;
 * on a screen inside the flow, the phone's Back button stays in the app (keepBackInApp).
 * @param {string} name
 */
export function showScreen(name) {
  for (const section of document.querySelectorAll(".screen")) {
    section.hidden = section.id !== `screen-${name}`;
  }
  if (!OUTER_SCREENS.includes(name)) keepBackInApp();
  byId("booting").hidden = true;
  const title = document.querySelector(`#screen-${name} h1`);
  if (title) {
    title.tabIndex = -1;
    title.focus({ preventScroll: true });
  }
  window.scrollTo(0, 0);
}

/**
 * Ask with a modal `<dialog>` whose `<form method="dialog">` has one button per answer.
 * @param {HTMLDialogElement} dialog
 * @returns {Promise<string>} the value of the button pressed; "" when the dialog was dismissed
 *   (Escape) or closed by the app
 */
export function ask(dialog) {
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) =>
    dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true }));
}

/**
 * A DICOM-style name for people: "FAMILY, Given".
 * @param {{family: string, given: string}} patient
 * @returns {string}
 */
export function displayName(patient) {
  const given = patient.given.toLowerCase().replace(/(^|[\s-])\p{L}/gu, (c) => c.toUpperCase());
  return [patient.family.toUpperCase(), given].filter(Boolean).join(", ") || "(no name)";
}

/**
 * A YYYY-MM-DD date in the user's locale (the date as written, no time-zone shift).
 * @param {string|null} iso
 * @returns {string}
 */
export function displayDate(iso) {
  if (!iso) return "unknown";
  const date = new Date(`${iso.slice(0, 10)}T00:00:00Z`);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleDateString(undefined, { timeZone: "UTC", year: "numeric", month: "short",
    day: "numeric" });
}

/**
 * A time of day in the user's locale.
 * @param {number|string} when ms since the epoch or an ISO date-time
 * @returns {string}
 */
export function displayTime(when) {
  return new Date(when).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

const SEX = { F: "female", M: "male", O: "other" };

/**
 * @param {string|null} sex F, M or O
 * @returns {string} the word for it
 */
export function sexText(sex) {
  return sex ? SEX[sex] || sex : "unknown";
}

/**
 * One line about a patient, as elements: the name, then the MRN and birth date with the issuer
 * and sex ("DEMO, Alice · MRN 00123456 (LOCAL) · born Mar 14, 1950 · female"). The name and the
 * identifiers are elements of their own (`patient-name`, `patient-ids`), and the separator
 * between them, the issuer and the sex are of class `patient-extra`: a narrow screen may show
 * the two on lines of their own and keep the extras out of sight (the whole text stays in the
 * DOM for screen readers).
 * @param {import("./identify.js").Patient} patient
 * @returns {HTMLElement[]}
 */
export function patientLine(patient) {
  const extra = (text) => h("span", { class: "patient-extra" }, text);
  return [h("span", { class: "patient-name" }, displayName(patient)), extra(" · "),
    h("span", { class: "patient-ids" }, `MRN ${patient.mrn}`,
      patient.issuer ? extra(` (${patient.issuer})`) : null,
      ` · born ${displayDate(patient.birthDate)}`,
      patient.sex ? extra(` · ${sexText(patient.sex)}`) : null)];
}

/**
 * "1 photo" / "3 photos".
 * @param {number} n
 * @param {string} [word="photo"]
 * @param {string} [plural] the word for several (default: word + "s")
 * @returns {string}
 */
export function count(n, word = "photo", plural = `${word}s`) {
  return `${n} ${n === 1 ? word : plural}`;
}

/**
 * Draw a bitmap (a photo's thumbnail) into a canvas at its size; nothing when there is none.
 * @param {HTMLCanvasElement} canvas
 * @param {ImageBitmap|undefined} bitmap
 */
export function paintBitmap(canvas, bitmap) {
  if (!bitmap) return;
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
}
