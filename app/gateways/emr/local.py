"""The embedded EMR: a local FHIR store in the app's database, served read-only at ``/fhir``.

It holds one ImagingStudy per study (logical id = the capture session id), the one Endpoint of
our DICOMweb service, per study the IHE IID Endpoint of its viewer page (logical id
``<session id>-viewer``) and one Observation per measured wound value (logical id from its
identifier, see `app.pipeline.fhir_observation`); Patients are rendered from the local patient
index.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.reference import Reference
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import FhirResource, WoundMeasurement
from app.db.models import Patient as PatientRow
from app.gateways.emr.study import StudyRecord, load_study
from app.gateways.errors import TransientError
from app.pipeline.fhir import (
    dicomweb_endpoint,
    identifier_system,
    imaging_study,
    issuer_for_system,
    patient,
    study_token,
    to_json,
    viewer_endpoint,
    viewer_url,
)
from app.pipeline.fhir_observation import (
    observation_id,
    observation_token,
    value_token,
    wound_observation,
)
from app.settings import Settings

ENDPOINT_ID = "dicomweb"
VIEWER_ID_SUFFIX = "-viewer"  # a study's viewer Endpoint: <session id>-viewer


class LocalFhirStore:
    """Writes ImagingStudy resources into the ``fhir_resource`` table and reads them back."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # --- the notifier ----------------------------------------------------------------------

    def notify(self, db: Session, study_uid: str) -> None:
        """Make the stored ImagingStudy (and its Endpoints) and the Observations of the study's
        measured values match the database.

        Guarantees: one ImagingStudy per study and one Observation per measured value; a
        version goes up only when its content changes, so repeated calls for the same state
        change nothing. Writes in ``db``'s transaction (the caller commits). A concurrent first
        write raises TransientError.
        """
        record = load_study(db, study_uid)
        endpoint = dicomweb_endpoint(self.dicomweb_base, ENDPOINT_ID)
        self._put(db, "Endpoint", ENDPOINT_ID, to_json(endpoint))
        viewer = viewer_endpoint(viewer_url(self.settings.public_url, study_uid),
                                 f"{record.session_id}{VIEWER_ID_SUFFIX}")
        self._put(db, "Endpoint", str(viewer.id), to_json(viewer))
        subject = self._subject(db, record)
        resource = imaging_study(record.facts, subject, self._encounter(record),
                                 [endpoint, viewer], contain_endpoint=False,
                                 resource_id=record.session_id)
        self._put(db, "ImagingStudy", record.session_id, to_json(resource),
                  identifier=study_token(study_uid), subject=subject.reference)
        study_ref = Reference(reference=f"ImagingStudy/{record.session_id}")
        for value in record.measurements:
            logical_id = observation_id(value)
            observation = wound_observation(
                value, subject, resource.encounter, study_ref,
                body_site=record.facts.body_site, laterality=record.facts.laterality,
                resource_id=logical_id)
            self._put(db, "Observation", logical_id, to_json(observation),
                      identifier=observation_token(value), subject=subject.reference)

    @property
    def dicomweb_base(self) -> str:
        return self.settings.public_url.rstrip("/") + "/dicomweb"

    def _subject(self, db: Session, record: StudyRecord) -> Reference:
        """``Patient/<id>`` when the local index knows the patient, else a logical reference."""
        row = db.scalar(select(PatientRow.id).where(PatientRow.issuer == record.issuer,
                                                    PatientRow.mrn == record.mrn))
        if row is not None:
            return Reference(reference=f"Patient/{row}")
        return Reference(identifier=Identifier(system=identifier_system(
            record.issuer, self.settings.issuer_systems), value=record.mrn))

    def _encounter(self, record: StudyRecord) -> Reference | None:
        """The Admission ID as a logical reference (the local store holds no Encounter)."""
        if not record.encounter:
            return None
        return Reference(identifier=Identifier(system=self.settings.emr_encounter_system or None,
                                               value=record.encounter))

    @staticmethod
    def _put(db: Session, resource_type: str, logical_id: str, body: dict[str, Any], *,
             identifier: str | None = None, subject: str | None = None) -> None:
        """Create the resource, or make a new version of it when ``body`` differs."""
        body = {k: v for k, v in body.items() if k != "meta"}
        row = db.scalar(select(FhirResource).where(FhirResource.resource_type == resource_type,
                                                   FhirResource.logical_id == logical_id))
        if row is None:
            try:
                with db.begin_nested():
                    db.add(FhirResource(resource_type=resource_type, logical_id=logical_id,
                                        identifier=identifier, subject=subject, body=body))
            except IntegrityError as exc:
                raise TransientError(f"{resource_type} was written concurrently") from exc
            return
        if row.body == body and row.subject == subject:
            return
        row.body, row.subject, row.identifier = body, subject, identifier
        row.version_id += 1
        row.last_updated = datetime.now(UTC)

    # --- reads for /fhir -------------------------------------------------------------------

    @staticmethod
    def render(row: FhirResource) -> dict[str, Any]:
        """The stored resource with its ``meta`` (versionId, lastUpdated)."""
        updated = row.last_updated
        updated = updated.replace(tzinfo=UTC) if updated.tzinfo is None else updated
        meta = {"versionId": str(row.version_id),
                "lastUpdated": updated.isoformat(timespec="milliseconds")}
        return {"resourceType": row.resource_type, "id": row.logical_id, "meta": meta,
                **{k: v for k, v in row.body.items() if k not in ("resourceType", "id")}}

    @staticmethod
    def read(db: Session, resource_type: str, logical_id: str) -> FhirResource | None:
        """The current version of a stored resource, or None."""
        return db.scalar(select(FhirResource).where(
            FhirResource.resource_type == resource_type, FhirResource.logical_id == logical_id))

    @staticmethod
    def search(db: Session, resource_type: str, *, identifier: str | None,
               patient_id: str | None, limit: int,
               any_identifier: Collection[str] | None = None) -> list[FhirResource]:
        """Resources of a type by identifier token (``[system|]value``; an ImagingStudy's is
        its Study UID), subject and/or one of ``any_identifier`` (full tokens), oldest first.

        A token without a system matches the value under any system.
        """
        query = select(FhirResource).where(FhirResource.resource_type == resource_type)
        if any_identifier is not None:
            query = query.where(FhirResource.identifier.in_(any_identifier))
        if identifier is not None:
            if "|" in identifier:
                query = query.where(FhirResource.identifier == identifier)
            else:
                query = query.where(FhirResource.identifier.endswith("|" + identifier))
        if patient_id is not None:
            query = query.where(FhirResource.subject == f"Patient/{patient_id}")
        return list(db.scalars(query.order_by(FhirResource.id).limit(limit)))

    @staticmethod
    def study_observation_tokens(db: Session, session_id: str) -> list[str]:
        """The identifier tokens of the Observations of a session's measured values (those of
        the resources derived from its ImagingStudy)."""
        return [value_token(report, region, quantity) for report, region, quantity in
                db.execute(select(WoundMeasurement.report_sop_uid, WoundMeasurement.region,
                                  WoundMeasurement.quantity)
                           .where(WoundMeasurement.session_id == session_id))]

    def patient_json(self, row: PatientRow) -> dict[str, Any]:
        """A row of the local patient index as a FHIR Patient (id = the row id)."""
        return to_json(patient(str(row.id), identifier_system(row.issuer,
                                                              self.settings.issuer_systems),
                               row.mrn, family=row.family, given=row.given,
                               birth_date=row.birth_date, sex=row.sex))

    def find_patients(self, db: Session, identifier: str, limit: int) -> list[PatientRow]:
        """Patients of the local index matching a ``[system|]value`` identifier token.

        A system that maps to no issuer (see ``EBIW_EMR_ISSUER_SYSTEMS``) matches nothing.
        """
        system, bar, value = identifier.rpartition("|")
        query = select(PatientRow).where(PatientRow.mrn == value)
        if bar and system:
            issuer = issuer_for_system(system, self.settings.issuer_systems)
            if issuer is None:
                return []
            query = query.where(PatientRow.issuer == issuer)
        return list(db.scalars(query.order_by(PatientRow.id).limit(limit)))
