"""A remote EMR's FHIR R4 server: find the Patient and Encounter, create or update the
ImagingStudy and the Observations of the study's measured wound values.

Searches go as ``POST [type]/_search`` with a form body, so no identifier of a patient ever
appears in a URL (or in the server's access log). The ImagingStudy carries its DICOMweb
Endpoint and its viewer's (IHE IID) as contained resources: one write, nothing to clean up if it
fails.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import requests
from fhir.resources.R4B.reference import Reference
from sqlalchemy.orm import Session

from app.gateways.emr.study import StudyRecord, load_study
from app.gateways.errors import PermanentError, TransientError
from app.gateways.oauth import ClientCredentials, TokenError
from app.pipeline.fhir import (
    dicomweb_endpoint,
    identifier_system,
    imaging_study,
    study_token,
    to_json,
    viewer_endpoint,
    viewer_url,
)
from app.pipeline.fhir_observation import observation_token, wound_observation
from app.settings import Settings

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
ENDPOINT_ID = "dicomweb"
VIEWER_ID = "viewer"
# Retrying helps: request timeout, conflicts with a concurrent writer, rate limits, outages.
_TRANSIENT_4XX = frozenset({408, 409, 412, 423, 425, 429})
# On a conditional create, 412 means several ImagingStudies already match: retrying cannot help.
_CREATE_TRANSIENT = _TRANSIENT_4XX - {412}
_ISSUE_CODE = re.compile(r"[a-z][a-z-]{0,31}")  # OperationOutcome.issue.code (IssueType)


class RemoteFhirNotifier:
    """Keeps one ImagingStudy per study on a remote FHIR R4 server (``EBIW_EMR_FHIR_URL``)."""

    name = "fhir"

    def __init__(self, settings: Settings, http: requests.Session | None = None) -> None:
        self.settings = settings
        self.base = settings.emr_fhir_url.rstrip("/")
        self.http = http or requests.Session()
        self.credentials = ClientCredentials(
            settings.emr_token_url, settings.emr_client_id,
            client_secret=settings.emr_client_secret, scope=settings.emr_scope,
            timeout=settings.emr_timeout_seconds) if settings.emr_token_url else None

    def notify(self, db: Session, study_uid: str) -> None:
        """Create the study's ImagingStudy and one Observation per measured value, or update
        them when the database knows more.

        Guarantees (each resource, see :meth:`_upsert`): a retry finds what an earlier attempt
        created instead of making a second one, so a crash or a failure after some of the
        study's Observations were written leaves exactly one per value once a later call
        succeeds. Connection failures, timeouts, 5xx, 408/409/429 and a lost If-Match race
        (412) raise TransientError; other refusals (including 412 on create: several
        resources match) PermanentError, naming only the HTTP status and the
        OperationOutcome's issue codes.
        """
        record = load_study(db, study_uid)
        subject = Reference(reference=self._patient(record))
        encounter = self._encounter(record, str(subject.reference))
        resource = to_json(imaging_study(
            record.facts, subject, encounter,
            [dicomweb_endpoint(self.settings.public_url.rstrip("/") + "/dicomweb", ENDPOINT_ID),
             viewer_endpoint(viewer_url(self.settings.public_url, study_uid), VIEWER_ID)],
            contain_endpoint=True))
        study_id = self._upsert("ImagingStudy", resource, study_token(study_uid))
        study_ref = Reference(reference=f"ImagingStudy/{study_id}")
        for value in record.measurements:
            self._upsert("Observation", to_json(wound_observation(
                value, subject, encounter, study_ref, body_site=record.facts.body_site,
                laterality=record.facts.laterality)), observation_token(value))

    def _upsert(self, resource_type: str, resource: dict[str, Any], token: str) -> str:
        """Make the server hold ``resource``, whose identifier is ``token``; its logical id.

        ``POST`` with ``If-None-Exist: identifier=<token>``, so a retry finds the first one
        instead of making a second; an existing one is replaced by ``PUT`` with ``If-Match``
        on the version read, and only when its content differs (elements we do not manage
        are kept).
        """
        system, _, value = token.partition("|")
        created = self._request("POST", resource_type, json=resource,
                                headers={"If-None-Exist": f"identifier={token}",
                                         "Prefer": "return=representation"},
                                what=f"creating the {resource_type}", transient=_CREATE_TRANSIENT)
        existing = self._body(created)
        if existing.get("resourceType") != resource_type or not existing.get("id") or \
                not _has_identifier(existing, system, value):
            existing = self._only(self._search(
                resource_type, {"identifier": token},
                lambda r: _has_identifier(r, system, value)), resource_type)
        if created.status_code == 201:
            return str(existing["id"])
        merged = {**existing, **resource, "id": existing["id"]}
        merged.pop("meta", None)
        if merged != {k: v for k, v in existing.items() if k != "meta"}:
            version = (existing.get("meta") or {}).get("versionId")
            headers = {"If-Match": f'W/"{version}"'} if version else {}
            self._request("PUT", f"{resource_type}/{existing['id']}", json=merged,
                          headers=headers, what=f"updating the {resource_type}")
        return str(existing["id"])

    # --- context -----------------------------------------------------------------------------

    def _patient(self, record: StudyRecord) -> str:
        """``Patient/<id>`` of the one EMR patient with the study's MRN under its issuer."""
        system = identifier_system(record.issuer, self.settings.issuer_systems)
        matches = self._search("Patient", {"identifier": f"{system}|{record.mrn}"},
                               lambda r: _has_identifier(r, system, record.mrn))
        return f"Patient/{self._only(matches, 'Patient')['id']}"

    def _encounter(self, record: StudyRecord, subject: str) -> Reference | None:
        """The patient's encounter whose identifier is the Admission ID, if the EMR has it.

        Searched by identifier first; else among the patient's in-progress encounters.
        None (the ImagingStudy goes without) when there is no Admission ID or no single match.
        """
        admission = record.encounter
        if not admission:
            return None
        system = self.settings.emr_encounter_system or None
        token = f"{system}|{admission}" if system else admission

        def wanted(encounter: dict[str, Any]) -> bool:
            return (encounter.get("subject") or {}).get("reference") == subject and \
                _has_identifier(encounter, system, admission)

        matches = self._search("Encounter", {"patient": subject, "identifier": token}, wanted)
        if not matches:
            matches = self._search("Encounter", {"patient": subject, "status": "in-progress"},
                                   lambda e: e.get("status") == "in-progress" and wanted(e))
        if len(matches) != 1:
            log.info("encounter of a study not found in the EMR (%d matches); sent without",
                     len(matches))
            return None
        return Reference(reference=f"Encounter/{matches[0]['id']}")

    # --- HTTP ----------------------------------------------------------------------------------

    def _search(self, resource_type: str, params: dict[str, str],
                keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """The matches of a ``POST [type]/_search`` (first page) that ``keep`` accepts.

        Checking the matches ourselves matters: a server ignores search parameters it does not
        support (FHIR's lenient handling) and would otherwise hand us every resource.
        """
        response = self._request("POST", f"{resource_type}/_search", data=params,
                                 what=f"searching {resource_type}")
        bundle = self._body(response)
        return [e["resource"] for e in bundle.get("entry", [])
                if (e.get("search") or {}).get("mode", "match") == "match"
                and (e.get("resource") or {}).get("resourceType") == resource_type
                and keep(e["resource"])]

    @staticmethod
    def _only(matches: list[dict[str, Any]], resource_type: str) -> dict[str, Any]:
        if len(matches) != 1:
            raise PermanentError(f"the EMR has {len(matches)} {resource_type} resources for "
                                 f"this study's identifier (expected 1)")
        return matches[0]

    def _request(self, method: str, path: str, *, what: str, json: Any = None,
                 data: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                 transient: frozenset[int] = _TRANSIENT_4XX) -> requests.Response:
        """One request with a timeout and a bearer token; a refused token is renewed once."""
        for attempt in (1, 2):
            all_headers = {"Accept": FHIR_JSON, **(headers or {})}
            if json is not None:
                all_headers["Content-Type"] = FHIR_JSON
            if self.credentials is not None:
                all_headers["Authorization"] = _bearer(self.credentials, renew=attempt == 2)
            try:
                response = self.http.request(method, f"{self.base}/{path}", json=json,
                                             data=data, headers=all_headers,
                                             timeout=self.settings.emr_timeout_seconds)
            except requests.RequestException as exc:
                raise TransientError(f"EMR FHIR server unreachable while {what} "
                                     f"({type(exc).__name__})") from exc
            if response.status_code == 401 and self.credentials is not None and attempt == 1:
                continue
            break
        status = response.status_code
        if status < 300:
            return response
        reason = f"EMR FHIR server answered {status} while {what}{_issue_codes(response)}"
        if status >= 500 or status in transient:
            raise TransientError(reason)
        raise PermanentError(reason)

    @staticmethod
    def _body(response: requests.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}


def _bearer(credentials: ClientCredentials, *, renew: bool) -> str:
    """The ``Authorization`` value of the EMR's token (a new one when ``renew``). A token
    endpoint that cannot be reached, or answers 5xx or a retryable 4xx, is a TransientError;
    any other refusal, or an answer without a token, a PermanentError."""
    try:
        return credentials.authorization(renew=renew)
    except TokenError as exc:
        status = exc.status
        if status is None:
            raise TransientError(f"EMR token endpoint unreachable ({exc})") from None
        if status >= 500 or status in _TRANSIENT_4XX:
            raise TransientError(f"EMR token endpoint answered {status}") from None
        if status != 200:
            raise PermanentError("EMR token endpoint refused our client credentials "
                                 f"({status})") from None
        raise PermanentError("EMR token endpoint sent no access_token") from None


def _has_identifier(resource: dict[str, Any], system: str | None, value: str) -> bool:
    """Whether the resource carries the identifier (under any system when ``system`` is None)."""
    return any(isinstance(i, dict) and i.get("value") == value
               and (system is None or i.get("system") == system)
               for i in resource.get("identifier") or [])


def _issue_codes(response: requests.Response) -> str:
    """`` (issues: invalid, required)`` from an OperationOutcome: codes only, never texts."""
    try:
        body = response.json()
        codes = sorted({str(i.get("code")) for i in body.get("issue", [])
                        if isinstance(i, dict) and _ISSUE_CODE.fullmatch(str(i.get("code")))})
    except (ValueError, AttributeError):
        return ""
    return f" (issues: {', '.join(codes)})" if codes else ""
