"""FHIR R4 resources for the EMR: ImagingStudy, its DICOMweb and viewer (IHE IID) Endpoints,
Patient, search Bundles.

Pure: facts in, ``fhir.resources`` R4B models (ImagingStudy and Endpoint are unchanged from R4)
or their JSON out. Code bindings are not checked by ``fhir.resources``; the tests validate what
these functions build with the FHIR peer's validator.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import quote, unquote

from fhir.resources.R4B.bundle import Bundle, BundleEntry, BundleEntrySearch
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.humanname import HumanName
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.imagingstudy import (
    ImagingStudy,
    ImagingStudySeries,
    ImagingStudySeriesInstance,
)
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.resource import Resource

from app.pipeline.dicom.codes import LATERALITY_SNOMED, SNOMED_FHIR_SYSTEM, BodySite

DICOM_UID_SYSTEM = "urn:dicom:uid"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
URI_SYSTEM = "urn:ietf:rfc:3986"
CONNECTION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
IDENTIFIER_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"
ISSUER_SYSTEM_PREFIX = "urn:ebiw:issuer:"
_OID = "urn:oid:"
_GENDER = {"F": "female", "M": "male", "O": "other"}


@dataclass(frozen=True)
class InstanceFacts:
    """One SOP instance of a series."""

    uid: str
    sop_class_uid: str
    number: int


@dataclass(frozen=True)
class SeriesFacts:
    """One series: its instances in instance-number order."""

    uid: str
    number: int
    modality: str
    instances: tuple[InstanceFacts, ...]


@dataclass(frozen=True)
class StudyFacts:
    """What the EMR is told about one study (one capture session)."""

    uid: str
    started: datetime
    series: tuple[SeriesFacts, ...]
    body_site: BodySite | None = None
    laterality: str | None = None  # DICOM Image Laterality: R, L, B or U
    accession_number: str = ""
    status: str = "available"  # or "entered-in-error": every instance was rejected
    rejected_count: int = 0  # instances rejected (IHE IOCM), not in ``series``

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)

    @property
    def state(self) -> int:
        """A number that grows with every change the EMR must hear of: an instance added
        (+1) or rejected (-1 shown, +1 rejected: +1 in all)."""
        shown = 0 if self.status == "entered-in-error" else self.instance_count
        return shown + 2 * self.rejected_count


def study_token(study_uid: str) -> str:
    """The search token of a study's ImagingStudy: ``urn:dicom:uid|urn:oid:<uid>``."""
    return f"{DICOM_UID_SYSTEM}|{_OID}{study_uid}"


def identifier_system(issuer: str, systems: Mapping[str, str]) -> str:
    """The FHIR identifier system of a DICOM Issuer of Patient ID.

    ``systems`` (``EBIW_EMR_ISSUER_SYSTEMS``) wins; otherwise an issuer that is an OID becomes
    ``urn:oid:<issuer>`` and any other ``urn:ebiw:issuer:<issuer, percent-encoded>``.
    """
    if issuer in systems:
        return systems[issuer]
    if _is_oid(issuer):
        return _OID + issuer
    return ISSUER_SYSTEM_PREFIX + quote(issuer, safe="")


def issuer_for_system(system: str, systems: Mapping[str, str]) -> str | None:
    """The inverse of :func:`identifier_system`; None when no issuer maps to ``system``."""
    for issuer, mapped in systems.items():
        if mapped == system:
            return issuer
    if system.startswith(ISSUER_SYSTEM_PREFIX):
        return unquote(system.removeprefix(ISSUER_SYSTEM_PREFIX)) or None
    if system.startswith(_OID) and _is_oid(system.removeprefix(_OID)):
        return system.removeprefix(_OID)
    return None


def _is_oid(value: str) -> bool:
    parts = value.split(".")
    return len(parts) > 1 and all(p.isdigit() and (p == "0" or not p.startswith("0"))
                                  for p in parts)


def _endpoint(endpoint_id: str, address: str, connection: str, name: str, payload: str,
              mime: str) -> Endpoint:
    """An active Endpoint of ``connection`` type (endpoint-connection-type code) at ``address``."""
    return Endpoint(
        id=endpoint_id, status="active",
        connectionType=Coding(system=CONNECTION_TYPE_SYSTEM, code=connection),
        name=name, payloadType=[CodeableConcept(text=payload)], payloadMimeType=[mime],
        address=address)


def dicomweb_endpoint(address: str, endpoint_id: str) -> Endpoint:
    """The DICOMweb (WADO-RS) Endpoint a viewer opens the study from; ``address`` is the base."""
    return _endpoint(endpoint_id, address, "dicom-wado-rs", "ebiw-capture DICOMweb",
                     "DICOM WADO-RS", "application/dicom")


def viewer_url(public_url: str, study_uid: str) -> str:
    """The absolute URL of the study's page in our web viewer (``/studies/<StudyUID>``)."""
    return f"{public_url.rstrip('/')}/studies/{study_uid}"


def viewer_endpoint(address: str, endpoint_id: str) -> Endpoint:
    """The IHE Invoke Image Display (IID) Endpoint of one study: ``address`` (see
    :func:`viewer_url`) shows the study in a browser, so an EMR can link to it."""
    return _endpoint(endpoint_id, address, "ihe-iid", "ebiw-capture viewer", "DICOM IID",
                     "text/html")


def imaging_study(study: StudyFacts, subject: Reference, encounter: Reference | None,
                  endpoints: Sequence[Endpoint], *, contain_endpoint: bool,
                  resource_id: str | None = None) -> ImagingStudy:
    """The ImagingStudy of ``study``: its status (available, or entered-in-error), modality
    and counts from its series, ``endpoints`` (each with an id) referenced in their order.

    With ``contain_endpoint`` the Endpoints travel inside the ImagingStudy (``#<id>``), so one
    write carries everything; otherwise each is referenced as ``Endpoint/<id>``.
    """
    if not study.series:
        raise ValueError("an ImagingStudy needs at least one series")
    if not endpoints or any(not e.id for e in endpoints):
        raise ValueError("an ImagingStudy needs its Endpoints, each with an id")
    identifiers = [Identifier(system=DICOM_UID_SYSTEM, value=_OID + study.uid)]
    if study.accession_number:
        identifiers.append(Identifier(type=CodeableConcept(coding=[Coding(
            system=IDENTIFIER_TYPE_SYSTEM, code="ACSN")]), value=study.accession_number))
    modalities = list(dict.fromkeys(s.modality for s in study.series))
    body_site = Coding(system=SNOMED_FHIR_SYSTEM, code=study.body_site.code,
                       display=study.body_site.meaning) if study.body_site else None
    side = LATERALITY_SNOMED.get(study.laterality or "")
    laterality = Coding(system=SNOMED_FHIR_SYSTEM, code=side[0], display=side[1]) \
        if side else None
    series = [ImagingStudySeries(
        uid=s.uid, number=s.number, modality=Coding(system=DCM_SYSTEM, code=s.modality),
        numberOfInstances=len(s.instances), bodySite=body_site, laterality=laterality,
        instance=[ImagingStudySeriesInstance(
            uid=i.uid, number=i.number,
            sopClass=Coding(system=URI_SYSTEM, code=_OID + i.sop_class_uid))
            for i in s.instances])
        for s in study.series]
    return ImagingStudy(
        id=resource_id,
        contained=list(endpoints) if contain_endpoint else None,
        identifier=identifiers, status=study.status,
        modality=[Coding(system=DCM_SYSTEM, code=m) for m in modalities],
        subject=subject, encounter=encounter,
        started=study.started.replace(microsecond=0),
        endpoint=[Reference(reference=f"#{e.id}" if contain_endpoint else f"Endpoint/{e.id}")
                  for e in endpoints],
        numberOfSeries=len(series), numberOfInstances=study.instance_count,
        series=series)


def patient(resource_id: str, system: str, mrn: str, *, family: str = "", given: str = "",
            birth_date: date | None = None, sex: str | None = None) -> Patient:
    """A Patient with its medical record number (identifier type MR) and demographics."""
    name = HumanName(family=family or None, given=[given] if given else None) \
        if family or given else None
    return Patient(
        id=resource_id,
        identifier=[Identifier(use="usual", system=system, value=mrn, type=CodeableConcept(
            coding=[Coding(system=IDENTIFIER_TYPE_SYSTEM, code="MR")]))],
        name=[name] if name else None, birthDate=birth_date,
        gender=_GENDER.get(sex or "", "unknown"))


def searchset(entries: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """A ``searchset`` Bundle of (full URL, resource JSON) matches, with its total."""
    # fhir.resources validates resource JSON into its model by resourceType; its signature
    # names only the model.
    items = [BundleEntry(fullUrl=url, resource=resource,  # type: ignore[arg-type]
                         search=BundleEntrySearch(mode="match")) for url, resource in entries]
    return to_json(Bundle(type="searchset", total=len(items), entry=items or None))


def to_json(resource: Resource) -> dict[str, Any]:
    """The resource as FHIR JSON (absent elements left out)."""
    resource_json: dict[str, Any] = json.loads(resource.model_dump_json())
    return resource_json
