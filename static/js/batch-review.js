/**
 * The batch page's review: the groups the server sorted the photos into (one per patient,
 * from the label frames), the patient directory's answer for each, and the unsorted photos.
 * The user moves a photo to another group, drops it, or confirms a group's patient; nothing
 * is stored before a group is confirmed. Everything is rendered from the server's answer
 * (GET /api/v1/batches/{id}); no innerHTML, every text goes in as text.
 *
 * What goes wrong with an action is shown where it was taken (a group's confirmation: above
 * its Confirm button; a photo's move or drop: in the photo's card), not at the top of the
 * page, thousands of pixels away on a phone. Every control, a group's result line and each
 * such message carry a `data-focus` key, so that a redraw keeps the user's place
 * (ui.rebuildKeepingFocus).
 * @module batch-review
 */

import { count, displayDate, displayName, h, paintBitmap, sexText } from "./ui.js";

/**
 * @typedef {object} Handlers
 * @property {(uuid: string, changes: object, control: string) => void} update PATCH an item;
 *   `control` is the focus key of the control used
 * @property {(groupId: string, body: object) => void} confirm confirm a group
 * @property {(groupId: string, message: string) => void} refuse say what stops the group's
 *   confirmation (see problemAt)
 * @property {Map<string, Problem>} problems what went wrong, by place (problemAt)
 * @property {import("./sites.js").BodySite[]} sites the body sites to choose from
 * @property {Map<string, {site: string, side: string}>} details per group: the body site (its
 *   meaning, as typed or chosen) and side entered so far, kept across redraws
 * @property {Set<string>} confirming the groups whose confirmation is being sent: their
 *   Confirm button is drawn disabled, saying so
 */

/**
 * @typedef {object} Problem what went wrong with the last action at a place
 * @property {string} message what to tell the user
 * @property {boolean} fresh not shown yet
 */

/**
 * What went wrong at `place` (`group:<id>`: its confirmation, `item:<upload UUID>`: a move or
 * a drop), as a message to show there; null when nothing did. The first time it is shown it is
 * an alert, announced by screen readers; redraws show it again without announcing it again.
 * Its focus key is `error:<place>`.
 * @param {Map<string, Problem>} problems
 * @param {string} place
 * @returns {HTMLElement|null}
 */
function problemAt(problems, place) {
  const problem = problems.get(place);
  if (!problem) return null;
  const element = h("p", { class: "alert", role: problem.fresh ? "alert" : null,
    tabindex: "-1", "data-focus": `error:${place}` }, problem.message);
  problem.fresh = false;
  return element;
}

/**
 * The name and MRN of a patient from the directory: "FAMILY, Given · MRN 123".
 * @param {object} p the lookup's patient
 * @returns {string}
 */
function nameAndMrn(p) {
  return `${displayName({ family: p.name.family || "", given: p.name.given || "" })} · MRN ${p.mrn}`;
}

/**
 * What the review shows of a patient from the directory.
 * @param {object} p the lookup's patient
 * @returns {string}
 */
function patientText(p) {
  const name = displayName({ family: p.name.family || "", given: p.name.given || "" });
  return `${name} · born ${displayDate(p.birth_date)} · ${sexText(p.sex)} · MRN ${p.mrn}` +
    (p.issuer ? ` (${p.issuer})` : "");
}

/**
 * The directory's patient a confirmed group was stored for, when its lookup holds them.
 * @param {object} group a confirmed group
 * @returns {object|null} the lookup's patient
 */
function confirmedPatient(group) {
  const patients = group.lookup ? group.lookup.patients : [];
  return patients.find((p) => p.mrn === group.patient.id &&
    p.issuer === group.patient.issuer) || null;
}

function groupTitle(group) {
  const lookup = group.lookup || { status: "pending", patients: [] };
  if (group.status === "confirmed" && group.patient) {
    const chosen = confirmedPatient(group);
    return chosen ? patientText(chosen) : `MRN ${group.patient.id} (${group.patient.issuer})`;
  }
  if (lookup.status === "matched") return patientText(lookup.patients[0]);
  const id = `MRN ${group.identifier.mrn}${group.identifier.issuer ? ` (${group.identifier.issuer})` : ""}`;
  return {
    ambiguous: `${id}: several patients — choose one`,
    not_found: `${id}: not in the patient directory`,
    unavailable: `${id}: the patient directory did not answer`,
  }[lookup.status] || id;
}

/**
 * The label a move menu shows for a group.
 * @param {object} group
 * @returns {string}
 */
function shortName(group) {
  const p = (group.lookup && group.lookup.patients.length === 1) ? group.lookup.patients[0] : null;
  return p ? nameAndMrn(p) : `MRN ${group.identifier.mrn}`;
}

/**
 * What adding a patient by MRN found, to say beside the form: the patient (name and MRN, so
 * that the user can check both) and that photos can now be moved to them, or why not.
 * @param {object} group the group the server made (or had) for the MRN
 * @returns {{found: boolean, message: string}} `found`: photos can be moved to the group and
 *   it can be confirmed
 */
export function addedPatient(group) {
  const lookup = group.lookup || { status: "unavailable", patients: [] };
  const id = `MRN ${group.identifier.mrn}${group.identifier.issuer ? ` (${group.identifier.issuer})` : ""}`;
  if (lookup.status === "matched") {
    const p = lookup.patients[0];
    return { found: true, message: `Found ${nameAndMrn(p)}${p.issuer ? ` (${p.issuer})` : ""}. ` +
      "Move their photos to them with “Move to…” on each photo." };
  }
  if (lookup.status === "ambiguous") {
    return { found: true, message: `${id} belongs to ${lookup.patients.length} patients: ` +
      `move their photos to “${shortName(group)}”, then choose which patient when you confirm.` };
  }
  return { found: false, message: lookup.status === "not_found"
    ? `No patient found for ${id}. Check the number (and the issuer).`
    : `The patient directory did not answer for ${id}. Try again in a moment.` };
}

/**
 * Whether the move menus offer a group: not when it is empty and no patient has its MRN (an
 * MRN added by hand that "Add a patient" said was not found), as photos moved there could not
 * be stored.
 * @param {object} group
 * @returns {boolean}
 */
function takesPhotos(group) {
  return group.items.length > 0 || !(group.lookup && group.lookup.status === "not_found");
}

function itemCard(item, batch, local, handlers) {
  const file = local.get(item.upload_uuid);
  const canvas = h("canvas", { class: "batch-thumb", "aria-hidden": "true" });
  if (file && file.thumb) paintBitmap(canvas, file.thumb);
  const name = file ? file.name : `photo ${item.order + 1}`;
  const tags = [];
  if (item.media_type.startsWith("video/")) tags.push("video clip");
  if (item.role === "label") tags.push("label photo");
  else if (item.barcode) tags.push("label in the frame");
  if (item.assigned === "manual") tags.push("moved by hand");
  if (!item.acquired_at) tags.push("no capture time: placed by file time, then name");
  const card = h("li", { class: `batch-item ${item.dropped ? "dropped" : ""}`,
    "data-uuid": item.upload_uuid, "data-status": item.status },
  canvas,
  h("span", { class: "batch-name" }, name),
  h("span", { class: "muted batch-tags" }, tags.join(" · ")),
  problemAt(handlers.problems, `item:${item.upload_uuid}`));
  if (item.status !== "held") {
    card.append(h("span", { class: "batch-state" }, item.status === "stored" ? "stored" : "not stored"));
    return card;
  }
  const move = h("select", { class: "move", "aria-label": `Move ${name} to`,
    "data-focus": `move:${item.upload_uuid}` },
    h("option", { value: "" }, "Move to…"));
  for (const group of batch.groups) {
    if (group.id === item.group_id || !takesPhotos(group)) continue;
    move.append(h("option", { value: group.id }, shortName(group)));
  }
  if (item.group_id) move.append(h("option", { value: "unsorted" }, "Unsorted"));
  if (item.assigned === "manual") move.append(h("option", { value: "auto" }, "Back to automatic"));
  move.addEventListener("change", () => {
    const value = move.value;
    if (!value) return;
    const changes = value === "auto" ? { auto: true }
      : { group_id: value === "unsorted" ? null : value };
    handlers.update(item.upload_uuid, changes, move.dataset.focus);
  });
  const drop = h("input", { type: "checkbox", class: "drop", checked: item.dropped,
    "data-focus": `drop:${item.upload_uuid}` });
  drop.addEventListener("change", () =>
    handlers.update(item.upload_uuid, { dropped: drop.checked }, drop.dataset.focus));
  card.append(move, h("label", { class: "check" }, drop, " Drop"));
  return card;
}

function confirmControls(group, items, handlers) {
  const lookup = group.lookup || { status: "pending", patients: [] };
  const held = group.counts.held;
  const box = h("div", { class: "row" });
  if (!held) {
    box.append(h("span", { class: "muted" }, group.status === "confirmed"
      ? `Stored: ${group.counts.stored}, not stored: ${group.counts.skipped}` : "No photos"));
    return box;
  }
  const choices = lookup.status === "ambiguous" ? lookup.patients : [];
  let chosen = lookup.status === "matched" || group.status === "confirmed" ? {} : null;
  const sending = handlers.confirming.has(group.id);
  if (choices.length) {
    const fieldset = h("fieldset", {}, h("legend", {}, "Which patient?"));
    for (const p of choices) {
      const radio = h("input", { type: "radio", name: `patient-${group.id}`,
        "data-focus": `patient:${group.id}:${p.issuer}|${p.mrn}` });
      radio.addEventListener("change", () => {
        chosen = { patient: { mrn: p.mrn, issuer: p.issuer } };
        button.disabled = sending;
      });
      fieldset.append(h("label", { class: "option" }, radio, ` ${patientText(p)}`));
    }
    box.append(fieldset);
  }
  const details = group.status === "confirmed" ? null
    : siteControls(group, handlers, holdsClip(group, items));
  if (details) box.append(details.element);
  const button = h("button", { type: "button", class: "primary confirm",
    disabled: !chosen || sending, "data-focus": `confirm:${group.id}` },
    sending ? "Storing…"
      : group.status === "confirmed" ? `Store ${held} more` : `Confirm and store ${held}`);
  button.addEventListener("click", () => {
    const site = details ? details.body() : {};
    if (typeof site === "string") {
      handlers.refuse(group.id, site);
      return;
    }
    handlers.confirm(group.id, { ...(chosen || {}), ...site });
  });
  box.append(button);
  return box;
}

const SIDES = [["R", "Right"], ["L", "Left"], ["B", "Both"]];

/**
 * Whether the group holds a video clip it will store: DICOM requires a video's anatomic
 * region, so the server refuses such a group without a body site (422 `body_site_required`).
 * @param {object} group
 * @param {Map<string, object>} items the batch's items by upload UUID
 * @returns {boolean}
 */
function holdsClip(group, items) {
  return group.items.some((uuid) => {
    const item = items.get(uuid);
    return item && item.status === "held" && !item.dropped && item.media_type.startsWith("video/");
  });
}

/**
 * The body site (a list to pick from; optional unless the group holds a clip) and, for a
 * paired site, its side, of a group about to be confirmed. What is entered survives redraws
 * (`handlers.details`).
 * @param {object} group
 * @param {Handlers} handlers
 * @param {boolean} required whether the group holds a clip, which needs a body site
 * @returns {{element: HTMLElement, body: () => object|string}} the controls, and what they add
 *   to the confirmation (`body_site`, `laterality`), or why it cannot be sent
 */
function siteControls(group, handlers, required) {
  const entered = handlers.details.get(group.id) || { site: "", side: "" };
  handlers.details.set(group.id, entered);
  const siteOf = () => handlers.sites.find((s) => s.meaning === entered.site.trim()) || null;
  const input = h("input", { class: "site", list: "batch-sites", value: entered.site,
    placeholder: required ? "Body site (needed for the clip)" : "Body site (optional)",
    "aria-label": `Body site, ${groupTitle(group)}`, required,
    autocomplete: "off", "data-focus": `site:${group.id}` });
  const sides = h("fieldset", { class: "sides", hidden: !(siteOf() && siteOf().paired) },
    h("legend", {}, "Side"), ...SIDES.map(([value, text]) => {
      const radio = h("input", { type: "radio", name: `side-${group.id}`, value,
        checked: entered.side === value, "data-focus": `side:${group.id}:${value}` });
      radio.addEventListener("change", () => { entered.side = value; });
      return h("label", { class: "option" }, radio, ` ${text}`);
    }));
  input.addEventListener("input", () => {
    entered.site = input.value;
    const site = siteOf();
    sides.hidden = !(site && site.paired);
  });
  return {
    element: h("div", { class: "batch-site" }, input, sides),
    body() {
      const site = siteOf();
      if (!site) {
        return entered.site.trim() ? "Choose the body site from the list."
          : required ? "Choose the body site: a video clip needs one (or drop the clip)." : {};
      }
      if (!site.paired) return { body_site: site.code };
      return entered.side ? { body_site: site.code, laterality: entered.side }
        : "Choose the side (right, left or both).";
    },
  };
}

/**
 * A group's result line (focus key `result:<group id>`): nothing stored yet, or, once
 * confirmed, how many photos were stored for whom (name and MRN), followed by a link that
 * opens the study in the viewer (its UID in the path, nothing of the patient in the URL).
 * @param {object} group
 * @returns {HTMLElement[]}
 */
function groupResult(group) {
  const attributes = { class: "muted batch-result", tabindex: "-1",
    "data-focus": `result:${group.id}` };
  if (group.status !== "confirmed" || !group.patient) {
    return [h("p", attributes, "Not confirmed: nothing stored yet")];
  }
  const chosen = confirmedPatient(group);
  const stored = group.counts.stored;
  return [
    h("p", attributes, `Stored ${count(stored)} for ` +
      `${chosen ? nameAndMrn(chosen) : `MRN ${group.patient.id}`}.`),
    stored > 0 && group.study_instance_uid ? h("a", { class: "button secondary batch-open",
      href: `/studies/${group.study_instance_uid}` }, "Open in viewer") : null,
  ];
}

/**
 * Render the review of `batch` into `container`.
 * @param {HTMLElement} container
 * @param {object} batch the API's batch
 * @param {Map<string, {name: string, thumb?: ImageBitmap}>} local files on this device
 * @param {Handlers} handlers
 */
export function renderReview(container, batch, local, handlers) {
  const items = new Map(batch.items.map((i) => [i.upload_uuid, i]));
  const sections = [];
  for (const group of batch.groups) {
    if (!group.items.length) continue;
    sections.push(h("section", { class: `card batch-group ${group.status}`,
      "data-group-id": group.id, "aria-label": `Group ${groupTitle(group)}` },
    h("h3", {}, groupTitle(group)),
    ...groupResult(group),
    h("ul", { class: "batch-items" },
      ...group.items.map((uuid) => itemCard(items.get(uuid), batch, local, handlers))),
    problemAt(handlers.problems, `group:${group.id}`),
    confirmControls(group, items, handlers)));
  }
  if (batch.unsorted.length) {
    sections.push(h("section", { class: "card batch-group unsorted", "data-group-id": "unsorted" },
      h("h3", {}, "Unsorted"),
      h("p", { class: "muted" }, "No label before these photos: move each to a patient."),
      h("ul", { class: "batch-items" },
        ...batch.unsorted.map((uuid) => itemCard(items.get(uuid), batch, local, handlers)))));
  }
  sections.push(h("datalist", { id: "batch-sites" },
    ...handlers.sites.map((site) => h("option", { value: site.meaning }))));
  container.replaceChildren(...sections);
}
