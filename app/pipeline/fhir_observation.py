"""FHIR R4 Observations of wound measurements: one per value a measurement SR holds.

Pure: facts in, ``fhir.resources`` R4B models out (Observation and BodyStructure are unchanged
from R4). What the tests check with the FHIR peer's validator:

- ``code``: LOINC where LOINC has the wound quantity (Length of Wound 39126-8, Width of Wound
  39125-0, Area of wound 89260-4 — the codes of HL7's skin wound assessment guide), plus the
  SNOMED CT concept our SR uses for it; LOINC has no wound perimeter, so perimeter carries the
  SNOMED CT concept alone (131191004 *Perimeter*, as in the SR);
- ``valueQuantity`` in UCUM (``mm``, ``mm2``, to 0.01) with the standard uncertainty in the
  core extension ``iso21090-uncertainty`` (R4 has no element for it);
- ``bodySite``: the session's SNOMED CT site, and (core extension ``bodySite``) a contained
  BodyStructure that carries the laterality (``locationQualifier``) and the wound's DICOM
  Tracking UID and label as identifiers, so the same wound is followed across visits;
- ``identifier``: ``urn:ietf:rfc:3986`` | ``urn:oid:2.25.<n>``, derived from (SR SOP Instance
  UID, region, quantity): the same value always has the same identifier, which the notifiers
  use for conditional creates (exactly once);
- ``note``: one Annotation per warning the value carries (``app.pipeline.geometry.WARNINGS``:
  measured far from the colour chart, chart seen at an extreme tilt), its text the warning's
  message: R4 has no coded element for a caveat on how a value was measured (``interpretation``
  is about the value against a reference range), and the SR has the same warnings coded;
- ``status``: ``final``, or ``entered-in-error`` once the SR or the measured photo was rejected
  (IHE IOCM: a rejected photo, or a study moved to another patient, whose copies are new SRs
  with new identifiers).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from fhir.resources.R4B.annotation import Annotation
from fhir.resources.R4B.bodystructure import BodyStructure
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.extension import Extension
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference

from app.pipeline.dicom.codes import LATERALITY_SNOMED, SNOMED_FHIR_SYSTEM, BodySite
from app.pipeline.dicom.uids import uid_from_uuid
from app.pipeline.fhir import DCM_SYSTEM, DICOM_UID_SYSTEM, URI_SYSTEM
from app.pipeline.geometry import WARNINGS

LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
UNCERTAINTY_EXTENSION = "http://hl7.org/fhir/StructureDefinition/iso21090-uncertainty"
BODY_SITE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/bodySite"
WOUND_ID = "wound"  # the contained BodyStructure
TRACKING_UID_TYPE = ("112040", "Tracking Unique Identifier")  # DCM
TRACKING_ID_TYPE = ("112039", "Tracking Identifier")  # DCM
SR_DISPLAY = "DICOM SR measurement report"
FINAL = "final"
ENTERED_IN_ERROR = "entered-in-error"  # the SR or the measured photo was rejected
_NAMESPACE = uuid.UUID("6f0e3a8c-2b1d-5c47-9e80-4a2f7d91b356")
"""UUID-5 namespace of Observation identifiers (drawn once for this purpose)."""


@dataclass(frozen=True)
class QuantityCode:
    """How one measured quantity is coded: LOINC (None where LOINC has no code) and SNOMED CT."""

    loinc: tuple[str, str] | None
    snomed: tuple[str, str]
    text: str


QUANTITY_CODES: dict[str, QuantityCode] = {
    "length": QuantityCode(("39126-8", "Length of Wound"), ("410668003", "Length"),
                           "Wound length"),
    "width": QuantityCode(("39125-0", "Width of Wound"), ("103355008", "Width"),
                          "Wound width"),
    "area": QuantityCode(("89260-4", "Area of wound"), ("42798000", "Area"), "Wound area"),
    "perimeter": QuantityCode(None, ("131191004", "Perimeter"), "Wound perimeter"),
}
"""By ``wound_measurement.quantity``."""


@dataclass(frozen=True)
class MeasuredValue:
    """One value of a measurement SR (a ``wound_measurement`` row) as the EMR is told it."""

    report_uid: str  # the SR's SOP Instance UID
    region: int
    quantity: str  # a key of QUANTITY_CODES
    value: float
    uncertainty: float
    unit: str  # UCUM: mm or mm2
    taken_at: datetime  # the photo's time, with its offset
    measured_at: datetime
    tracking_uid: str
    wound_label: str
    status: str = FINAL  # or ENTERED_IN_ERROR
    warnings: tuple[str, ...] = ()  # codes of app.pipeline.geometry.WARNINGS


def _value_uuid(report_uid: str, region: int, quantity: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{report_uid}/{region}/{quantity}")


def observation_uid(report_uid: str, region: int, quantity: str) -> str:
    """The UID naming one value of one SR: the same for the same (SR, region, quantity)."""
    return uid_from_uuid(_value_uuid(report_uid, region, quantity))


def observation_identifier(value: MeasuredValue) -> Identifier:
    """The Observation's business identifier (``urn:ietf:rfc:3986`` | ``urn:oid:<uid>``)."""
    return Identifier(system=URI_SYSTEM, value="urn:oid:" + observation_uid(
        value.report_uid, value.region, value.quantity))


def value_token(report_uid: str, region: int, quantity: str) -> str:
    """The search token (``system|value`` of its identifier) of the Observation of one value."""
    return f"{URI_SYSTEM}|urn:oid:{observation_uid(report_uid, region, quantity)}"


def observation_token(value: MeasuredValue) -> str:
    """The search token of the value's Observation (see :func:`value_token`)."""
    return value_token(value.report_uid, value.region, value.quantity)


def observation_id(value: MeasuredValue) -> str:
    """A logical id for stores that let us choose it: the identifier's UUID (36 characters)."""
    return str(_value_uuid(value.report_uid, value.region, value.quantity))


def wound_observation(value: MeasuredValue, subject: Reference, encounter: Reference | None,
                      imaging_study: Reference, *, body_site: BodySite | None,
                      laterality: str | None, resource_id: str | None = None) -> Observation:
    """The ``exam`` Observation of ``value`` (status ``value.status``: final, or
    entered-in-error), derived from the study's ImagingStudy and (by identifier) the SR;
    ``effectiveDateTime`` is the photo's time, ``issued`` when it was measured, ``note`` its
    warnings' messages. Raises KeyError for a quantity or warning code that is not known."""
    coded = QUANTITY_CODES[value.quantity]
    codings = [Coding(system=LOINC_SYSTEM, code=coded.loinc[0], display=coded.loinc[1])] \
        if coded.loinc else []
    codings.append(Coding(system=SNOMED_FHIR_SYSTEM, code=coded.snomed[0],
                          display=coded.snomed[1]))
    quantity = Quantity(
        value=Decimal(f"{value.value:.2f}"), unit=value.unit, system=UCUM_SYSTEM,
        code=value.unit,
        extension=[Extension(url=UNCERTAINTY_EXTENSION,
                             valueDecimal=Decimal(f"{value.uncertainty:.3f}"))])
    return Observation(
        id=resource_id,
        contained=[_wound(value, subject, body_site, laterality)],
        identifier=[observation_identifier(value)], status=value.status,
        category=[CodeableConcept(coding=[Coding(system=CATEGORY_SYSTEM, code="exam",
                                                 display="Exam")])],
        code=CodeableConcept(coding=codings, text=coded.text),
        subject=subject, encounter=encounter,
        effectiveDateTime=value.taken_at.replace(microsecond=0),
        issued=value.measured_at.replace(microsecond=0),
        valueQuantity=quantity,
        note=[Annotation(text=WARNINGS[code]) for code in value.warnings] or None,
        bodySite=CodeableConcept(
            extension=[Extension(url=BODY_SITE_EXTENSION,
                                 valueReference=Reference(reference=f"#{WOUND_ID}"))],
            coding=[_snomed(body_site.code, body_site.meaning)] if body_site else None,
            text=_site_text(body_site, laterality) or value.wound_label),
        derivedFrom=[imaging_study, Reference(
            identifier=Identifier(system=DICOM_UID_SYSTEM, value="urn:oid:" + value.report_uid),
            display=SR_DISPLAY)])


def _wound(value: MeasuredValue, patient: Reference, body_site: BodySite | None,
           laterality: str | None) -> BodyStructure:
    """The measured wound: its site and side, and its DICOM tracking identifiers."""
    side = LATERALITY_SNOMED.get(laterality or "")
    return BodyStructure(
        id=WOUND_ID,
        identifier=[
            Identifier(type=_dcm(*TRACKING_UID_TYPE), system=DICOM_UID_SYSTEM,
                       value="urn:oid:" + value.tracking_uid),
            Identifier(type=_dcm(*TRACKING_ID_TYPE), value=value.wound_label)],
        description=value.wound_label,
        location=CodeableConcept(coding=[_snomed(body_site.code, body_site.meaning)])
        if body_site else None,
        locationQualifier=[CodeableConcept(coding=[_snomed(*side)])] if side else None,
        patient=patient)


def _site_text(body_site: BodySite | None, laterality: str | None) -> str:
    side = LATERALITY_SNOMED.get(laterality or "")
    if body_site is None:
        return ""
    return f"{body_site.meaning}, {side[1].lower()}" if side else body_site.meaning


def _snomed(code: str, display: str) -> Coding:
    return Coding(system=SNOMED_FHIR_SYSTEM, code=code, display=display)


def _dcm(code: str, display: str) -> CodeableConcept:
    return CodeableConcept(coding=[Coding(system=DCM_SYSTEM, code=code, display=display)])
