"""Patient identification API: ``POST /api/v1/identify`` and ``POST /api/v1/patients/search``.

Identifiers travel in request bodies only (never in a URL); bodies are never logged; answers
are ``Cache-Control: no-store``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

from app.gateways.patients import PatientRecord
from app.web.auth import require
from app.web.errors import error_response
from app.web.launch import ONE_PATIENT
from app.web.limits import rate_limited
from app.web.uploads import photo_body, read_photo_body
from app.workflow import audit
from app.workflow.identification import (
    Identifier,
    IdentifyResult,
    LookupStatus,
    Match,
    build_identifier,
)
from app.workflow.intake import IdentificationMethod, InvalidRequest

bp = Blueprint("patients", __name__, url_prefix="/api/v1")
_EXTENSION = "ebiw.identifier"


def init_app(app: Flask) -> None:
    """Build the identifier service from the app's settings and register the routes."""
    svc = app.extensions["ebiw"]
    app.extensions[_EXTENSION] = build_identifier(svc.settings, svc.db)
    app.register_blueprint(bp)


def _identifier() -> Identifier:
    return current_app.extensions[_EXTENSION]


@bp.post("/identify")
@require("capture")
@rate_limited("identify")
@photo_body
def identify() -> tuple[Response, int]:
    """A wristband photo (raw body or multipart field ``photo``) or JSON ``{"barcode"}``.

    A multipart body carries exactly one file (more are refused before any is decoded).
    A session launched from the EMR for one patient is refused (403).
    """
    if g.caller.patient is not None:
        return error_response(403, "one_patient", ONE_PATIENT)
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object with barcode")
        result = _identifier().from_barcode(body.get("barcode"),
                                            method=body.get("method") or IdentificationMethod.TYPED,
                                            symbology=body.get("symbology"))
    elif request.mimetype == "multipart/form-data":
        if len(list(request.files.items(multi=True))) > 1:
            raise InvalidRequest("send one photo per request")
        upload = request.files.get("photo") or next(iter(request.files.values()), None)
        if upload is None:
            raise InvalidRequest("the multipart body needs a file field named photo")
        result = _identifier().from_photo(upload.read())
    else:
        result = _identifier().from_photo(read_photo_body())
    return _answer(result)


@bp.post("/patients/search")
@require("capture")
@rate_limited("identify")
def search() -> tuple[Response, int]:
    """Manual entry: JSON ``{"mrn", "issuer"?}`` looked up in the patient directories
    (refused, 403, to a session launched from the EMR for one patient)."""
    if g.caller.patient is not None:
        return error_response(403, "one_patient", ONE_PATIENT)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object with mrn (and issuer)")
    return _answer(_identifier().search(body.get("mrn"), body.get("issuer")))


def _answer(result: IdentifyResult) -> tuple[Response, int]:
    g.audit_entities = [audit.patient_ref(m.patient.mrn, m.patient.issuer)
                        for m in result.matches]
    g.audit_detail = {"method": result.method, "status": result.status}
    body = result_json(result)
    status = 200
    if result.status == LookupStatus.NOT_FOUND:
        body["error"] = {"code": "no_patient",
                         "message": "no patient matches this identifier: check it, or enter "
                                    "the patient manually"}
        status = 404
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response, status


def result_json(result: IdentifyResult) -> dict[str, Any]:
    """The answer: what was decoded, every candidate patient, and whether one must choose."""
    return {
        "status": result.status,
        "ambiguous": result.status == LookupStatus.AMBIGUOUS,
        "method": result.method,
        "identifiers": [{"mrn": r.identifier.mrn, "issuer": r.identifier.issuer,
                         "encounter": r.identifier.encounter, "rule": r.identifier.rule,
                         "symbology": r.symbology,
                         "payload": r.barcode.payload if r.barcode else None}
                        for r in result.readings],
        "patients": [_patient_json(m, result.method) for m in result.matches],
        "unavailable": result.unavailable,
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _patient_json(match: Match, method: str) -> dict[str, Any]:
    p: PatientRecord = match.patient
    on_band = match.reading.identifier.encounter if match.reading else None
    return {
        "mrn": p.mrn,
        "issuer": p.issuer,
        "name": {"family": p.family, "given": p.given, "dicom": p.dicom_name},
        "birth_date": _iso(p.birth_date),
        "sex": p.sex,
        "sources": list(p.sources),
        "encounters": [{"identifier": e.identifier, "status": e.status,
                        "department": e.department, "started": _iso(e.started),
                        "on_wristband": e.identifier == on_band} for e in p.encounters],
        "worklist": [{"study_instance_uid": w.study_uid, "accession_number": w.accession_number,
                      "requested_procedure_id": w.requested_procedure_id,
                      "requested_procedure_description": w.requested_procedure_description,
                      "scheduled_step_id": w.scheduled_step_id,
                      "scheduled_start": _iso(w.scheduled_start), "modality": w.modality,
                      "admission_id": w.admission_id} for w in p.worklist],
        "identification": {"method": method, "evidence": match.evidence},
    }
