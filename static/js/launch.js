// The studies of the patient the EMR launched the app for (/launch/patient): the patient banner
// from /launch/context, the studies from a QIDO-RS search (the server answers a launched session
// with its patient's studies only, so no identifier goes in the URL), a thumbnail per study.

import { AuthError, DicomWeb, query } from "./viewer-api.js";
import { first, isoDate, sexLabel } from "./viewer-dicom.js";

const body = document.body;
const api = new DicomWeb(body.dataset.dicomweb);
const $ = (id) => document.getElementById(id);
const STUDY_DATE = "00080020";
const STUDY_DESCRIPTION = "00081030";
const STUDY_UID = "0020000D";
const INSTANCES = "00201208";

function message(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = false;
}

async function launchContext() {
  const response = await fetch(body.dataset.context, {
    headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store",
  });
  if (response.status === 401) throw new AuthError();
  if (!response.ok) throw new Error("this page opens from a patient's chart in the EMR");
  return response.json();
}

function renderBanner({ mrn, issuer, name, birth_date: birthDate, sex }) {
  const given = name.given ? `, ${name.given}` : "";
  $("patient-name").textContent = `${name.family.toUpperCase()}${given}` || "Name not recorded";
  $("patient-id").textContent = issuer ? `${mrn} (${issuer})` : mrn;
  $("patient-birth").textContent = birthDate || "–";
  $("patient-sex").textContent = sexLabel(sex) || "–";
}

function studyItem(ds) {
  const uid = first(ds, STUDY_UID);
  const count = first(ds, INSTANCES) || 0;
  const date = isoDate(first(ds, STUDY_DATE));
  const caption = [date, first(ds, STUDY_DESCRIPTION), `${count} photo${count === 1 ? "" : "s"}`]
    .filter(Boolean).join(" · ");
  const img = document.createElement("img");
  img.alt = `Study of ${date}`;
  img.className = "missing";
  api.image(`/studies/${uid}/thumbnail`, { queued: true }).then((url) => {
    img.src = url;
    img.classList.remove("missing");
  }, () => {});
  const text = document.createElement("span");
  text.textContent = caption;
  const link = document.createElement("a");
  link.className = "thumb";
  link.href = `/studies/${uid}`;
  link.dataset.study = uid;
  link.append(img, text);
  const item = document.createElement("li");
  item.append(link);
  return item;
}

async function main() {
  let context = null;
  try {
    context = await launchContext();
    renderBanner(context.patient);
    document.title = `${$("patient-name").textContent} · ebiw-capture`;
    const studies = await api.json(`/studies?${query({ includefield: STUDY_DESCRIPTION })}`);
    $("studies").replaceChildren(...studies.map(studyItem));
    $("empty").hidden = studies.length > 0;
    api.setQueueLimit(3);
  } catch (error) {
    if (!context) {  // no patient: no empty banner, list of studies or link to photograph them
      $("patient-name").textContent = "No patient open";
      for (const part of document.querySelectorAll(".banner dl, .studies-page")) part.hidden = true;
    }
    message(error instanceof AuthError ? "Your session has ended: open the app again from " +
      "the patient's chart in the EMR." : `The studies could not be loaded: ${error.message}.`);
  }
}

main();
