"""``/fhir``: the local FHIR store, read-only (FHIR R4 JSON, ``application/fhir+json``).

Reads: ``ImagingStudy/{id}``, ``Observation/{id}``, ``Patient/{id}``, ``Endpoint/{id}``.
Searches (GET, or POST ``{type}/_search`` with a form body so identifiers stay out of URLs)
return ``searchset`` Bundles: ``ImagingStudy?identifier=urn:dicom:uid|urn:oid:<uid>``,
``ImagingStudy?patient=<id>``, ``Observation?patient=<id>`` (or ``subject=Patient/<id>``),
``Observation?derived-from=ImagingStudy/<id>``, ``Observation?identifier=<system>|<value>``,
``Patient?identifier=<system>|<mrn>``; ``_count`` caps the matches. Callers need the view role;
sessions launched from the EMR for one patient are refused.
Every request is audited by ``app.web.audit`` with the studies and patients it returned.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, g, request
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from app.db.models import CaptureSession
from app.db.models import Patient as PatientRow
from app.gateways.emr.local import LocalFhirStore
from app.pipeline.fhir import searchset
from app.web import services
from app.web.auth import current_login, require
from app.workflow import audit

bp = Blueprint("fhir", __name__, url_prefix="/fhir")

FHIR_JSON = "application/fhir+json"
DEFAULT_COUNT, MAX_COUNT = 100, 1000
_ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
                405: "not-supported"}


def _fhir(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
          ) -> Response:
    response = Response(json.dumps(body), status=status, mimetype=FHIR_JSON,
                        headers=headers or {})
    response.headers["Cache-Control"] = "no-store"
    return response


def _outcome(status: int, text: str) -> Response:
    body = {"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": _ISSUE_CODES.get(status, "processing"),
        "diagnostics": text}]}
    headers = {"WWW-Authenticate": 'Bearer realm="ebiw"'} if status == 401 else None
    return _fhir(body, status, headers)


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    """Errors under /fhir are OperationOutcomes (no PHI: fixed texts only)."""
    return _outcome(exc.code or 500, exc.name or "error")


@bp.before_request
def _whole_store_only() -> Response | None:
    """A session launched from the EMR for one patient may not use this store (403)."""
    login = current_login() if "Authorization" not in request.headers else None
    if login is not None and login.caller.patient is not None:
        return _outcome(403, "a session opened from the EMR for one patient cannot use this "
                             "store")
    return None


class _BadSearch(Exception):
    pass


@bp.errorhandler(_BadSearch)
def bad_search(exc: _BadSearch) -> Response:
    return _outcome(400, str(exc))


def _store() -> LocalFhirStore:
    return LocalFhirStore(services().settings)


def _base() -> str:
    return services().settings.public_url.rstrip("/") + "/fhir"


def _params(allowed: tuple[str, ...]) -> tuple[dict[str, str], int]:
    """The search parameters (query or form) and ``_count``; unknown ones are refused."""
    values = request.form if request.method == "POST" else request.args
    unknown = set(values) - {*allowed, "_count"}
    if unknown:
        raise _BadSearch(f"supported search parameters: {', '.join(allowed)}, _count")
    params = {k: values[k] for k in allowed if values.get(k)}
    if not params:
        raise _BadSearch(f"give at least one of: {', '.join(allowed)}")
    try:
        count = int(values.get("_count", DEFAULT_COUNT))
    except ValueError as exc:
        raise _BadSearch("_count must be an integer") from exc
    return params, max(0, min(count, MAX_COUNT))


def _audit_studies(db: Session, bodies: list[dict[str, Any]]) -> None:
    """Name the studies of ImagingStudy resources, and their patients, in this request's
    audit record."""
    uids = [i["value"].removeprefix("urn:oid:") for body in bodies
            for i in body.get("identifier", []) if i.get("system") == "urn:dicom:uid"]
    sessions = db.scalars(select(CaptureSession).where(CaptureSession.study_uid.in_(uids)))
    patients = dict.fromkeys(audit.patient_ref(s.patient_id, s.issuer) for s in sessions)
    g.audit_entities = [*g.get("audit_entities", []), *(audit.study_ref(u) for u in uids),
                        *patients]


def _audit_observations(db: Session, bodies: list[dict[str, Any]]) -> None:
    """Name the studies the Observations were derived from (their ImagingStudy), and their
    patients, in this request's audit record."""
    ids = {ref["reference"].removeprefix("ImagingStudy/") for body in bodies
           for ref in body.get("derivedFrom", [])
           if str(ref.get("reference", "")).startswith("ImagingStudy/")}
    sessions = list(db.scalars(select(CaptureSession).where(CaptureSession.id.in_(ids))))
    patients = dict.fromkeys(audit.patient_ref(s.patient_id, s.issuer) for s in sessions)
    g.audit_entities = [*g.get("audit_entities", []),
                        *(audit.study_ref(s.study_uid) for s in sessions), *patients]


def _audit_patients(rows: list[PatientRow]) -> None:
    g.audit_entities = [*g.get("audit_entities", []),
                        *(audit.patient_ref(r.mrn, r.issuer) for r in rows)]


def _read(resource_type: str, logical_id: str) -> Response:
    with services().db.session() as db:
        row = LocalFhirStore.read(db, resource_type, logical_id)
        if row is None:
            return _outcome(404, f"{resource_type}/{logical_id} is not in this store")
        body = LocalFhirStore.render(row)
        if resource_type == "ImagingStudy":
            _audit_studies(db, [body])
        elif resource_type == "Observation":
            _audit_observations(db, [body])
    return _fhir(body, headers={"ETag": f'W/"{body["meta"]["versionId"]}"'})


@bp.get("/ImagingStudy/<logical_id>")
@require("view")
def read_imaging_study(logical_id: str) -> Response:
    return _read("ImagingStudy", logical_id)


@bp.get("/Endpoint/<logical_id>")
@require("view")
def read_endpoint(logical_id: str) -> Response:
    return _read("Endpoint", logical_id)


@bp.route("/ImagingStudy", methods=["GET"])
@bp.route("/ImagingStudy/_search", methods=["POST"])
@require("view")
def search_imaging_studies() -> Response:
    params, count = _params(("identifier", "patient"))
    patient = params.get("patient")
    with services().db.session() as db:
        rows = LocalFhirStore.search(
            db, "ImagingStudy", identifier=params.get("identifier"),
            patient_id=patient.rsplit("Patient/", 1)[-1] if patient else None, limit=count)
        entries = [(f"{_base()}/ImagingStudy/{r.logical_id}", LocalFhirStore.render(r))
                   for r in rows]
        _audit_studies(db, [body for _, body in entries])
    return _fhir(searchset(entries))


@bp.get("/Observation/<logical_id>")
@require("view")
def read_observation(logical_id: str) -> Response:
    return _read("Observation", logical_id)


@bp.route("/Observation", methods=["GET"])
@bp.route("/Observation/_search", methods=["POST"])
@require("view")
def search_observations() -> Response:
    """Observations of measured wound values by identifier, patient (``patient=<id>`` or
    ``subject=Patient/<id>``) and/or ``derived-from=ImagingStudy/<id>`` (a study's values)."""
    params, count = _params(("identifier", "patient", "subject", "derived-from"))
    patient = params.get("patient") or params.get("subject")
    derived = params.get("derived-from")
    with services().db.session() as db:
        tokens = LocalFhirStore.study_observation_tokens(
            db, derived.rsplit("ImagingStudy/", 1)[-1]) if derived else None
        rows = LocalFhirStore.search(
            db, "Observation", identifier=params.get("identifier"),
            patient_id=patient.rsplit("Patient/", 1)[-1] if patient else None, limit=count,
            any_identifier=tokens)
        entries = [(f"{_base()}/Observation/{r.logical_id}", LocalFhirStore.render(r))
                   for r in rows]
        _audit_observations(db, [body for _, body in entries])
    return _fhir(searchset(entries))


@bp.get("/Patient/<logical_id>")
@require("view")
def read_patient(logical_id: str) -> Response:
    if not logical_id.isdigit():
        return _outcome(404, "Patient is not in this store")
    with services().db.session() as db:
        row = db.get(PatientRow, int(logical_id))
        if row is None:
            return _outcome(404, "Patient is not in this store")
        _audit_patients([row])
        return _fhir(_store().patient_json(row))


@bp.route("/Patient", methods=["GET"])
@bp.route("/Patient/_search", methods=["POST"])
@require("view")
def search_patients() -> Response:
    params, count = _params(("identifier",))
    store = _store()
    with services().db.session() as db:
        rows = list(store.find_patients(db, params["identifier"], count))
        _audit_patients(rows)
        entries = [(f"{_base()}/Patient/{row.id}", store.patient_json(row)) for row in rows]
    return _fhir(searchset(entries))
