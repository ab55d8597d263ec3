"""Wound measurements of a study over the JSON API (``/api/v1``, in ``openapi.json``).

- ``POST /studies/<study>/measurements``: lines (a wound's length or width) and polygons drawn
  on one photo of the study are measured on the chart's plane (``app.pipeline.geometry``) and
  stored as a TID 1500 SR in the study, with a presentation state drawing them
  (``app.workflow.measurements.store_report``); the
  answer holds the server's values with their uncertainties and warnings. Any bad input is
  refused with a 4xx whose message starts with the field at fault, and nothing is stored.
- ``GET /studies/<study>/measurements``: what the study's SRs hold, for the viewer to draw.
- ``DELETE /studies/<study>/measurements/<sr>``: withdraw a stored report (an IHE IOCM
  rejection for quality reasons, ``app.workflow.corrections.withdraw_report``).
- ``POST /outline``: the proposed outline of the wound under a tap (``app.pipeline.outline``).

The caller needs a role that opens studies (``view`` or ``capture``) and must see the study's
patient (a session launched from the EMR sees one patient). The patient is never in a URL.
"""

from __future__ import annotations

import math
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy import func, select

from app.db.models import Instance
from app.pipeline.dicom.sr import DEFAULT_WOUND_LABEL, LINE_QUANTITIES, MeasuredPolygon
from app.pipeline.geometry import GeometryError, Measurement, Point, check_polygon
from app.pipeline.outline import SeedOutsideImageError
from app.web import services
from app.web.auth import require
from app.web.dicomweb import study_visible
from app.web.errors import error_response
from app.web.launch import OTHER_PATIENT
from app.workflow import audit, corrections
from app.workflow.intake import InvalidRequest, NotFound
from app.workflow.measurements import (
    ArchivedPhoto,
    LineInput,
    MeasurementError,
    RegionError,
    archived_photo,
    calibrate_archived,
    measure_regions,
    outline_archived,
    store_report,
    study_measurements,
)

bp = Blueprint("measurements", __name__, url_prefix="/api/v1")

MAX_REGIONS = 50  # lines or polygons in one request
MAX_VERTICES = 2000  # of one polygon (an assisted outline has a few hundred at most)


class NoChart(InvalidRequest):
    code = "no_chart"


def _number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise InvalidRequest(f"{field}: expected a finite number")
    return float(value)


def _point(value: object, field: str) -> Point:
    if not isinstance(value, list) or len(value) != 2:
        raise InvalidRequest(f"{field}: expected a point [x, y] in image pixels")
    return _number(value[0], f"{field}[0]"), _number(value[1], f"{field}[1]")


def _items(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name, [])
    if not isinstance(value, list) or len(value) > MAX_REGIONS:
        raise InvalidRequest(f"{name}: expected a list of at most {MAX_REGIONS} items")
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("points"), list):
            raise InvalidRequest(f"{name}[{i}].points: expected a list of points")
    return value


def _lines(body: dict[str, Any]) -> list[LineInput]:
    lines = []
    for i, item in enumerate(_items(body, "lines")):
        kind = item.get("kind", "length")
        if kind not in LINE_QUANTITIES:
            raise InvalidRequest(f"lines[{i}].kind: one of {', '.join(LINE_QUANTITIES)}")
        points = item["points"]
        if len(points) != 2:
            raise InvalidRequest(f"lines[{i}].points: a line has two points")
        start, end = (_point(p, f"lines[{i}].points[{n}]") for n, p in enumerate(points))
        if start == end:
            raise InvalidRequest(f"lines[{i}].points: the two ends are the same point")
        lines.append(LineInput(start, end, kind))
    return lines


def _polygons(body: dict[str, Any]) -> list[list[Point]]:
    polygons = []
    for i, item in enumerate(_items(body, "polygons")):
        if len(item["points"]) > MAX_VERTICES:
            raise InvalidRequest(f"polygons[{i}].points: at most {MAX_VERTICES} vertices")
        points = [_point(p, f"polygons[{i}].points[{n}]") for n, p in enumerate(item["points"])]
        try:
            check_polygon(points)
        except GeometryError as exc:
            raise InvalidRequest(f"polygons[{i}].points: {exc}") from None
        polygons.append(points)
    return polygons


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{name}: expected a non-empty string")
    return value


def _study_photo(study_uid: str, sop_uid: str) -> ArchivedPhoto | tuple[Response, int]:
    """The archived photo ``sop_uid`` of ``study_uid``, or the error answer: 404 for a study
    with no instance or an unknown photo, 403 for a patient the caller may not see, 422 for a
    photo of another study."""
    g.audit_entities = [audit.study_ref(study_uid), audit.instance_ref(sop_uid)]
    with services().db.session() as db:
        known = db.scalar(select(func.count()).select_from(Instance)
                          .where(Instance.study_uid == study_uid))
    if not known:
        raise NotFound("study: no such study")
    if not study_visible(study_uid, g.caller):
        return error_response(403, "other_patient", OTHER_PATIENT)
    try:
        photo = archived_photo(services(), sop_uid)
    except MeasurementError as exc:
        raise NotFound(f"instance: {exc}") from None
    if photo.header.StudyInstanceUID != study_uid:
        raise InvalidRequest("instance: this photo is not one of the study named in the URL")
    return photo


def _value(m: Measurement, unit: str) -> dict[str, object]:
    return {"value": round(m.value, 2), "uncertainty": round(m.uncertainty, 2), "unit": unit,
            "warnings": list(m.warnings)}


def _polygon_json(poly: MeasuredPolygon) -> dict[str, object]:
    return {"points": [list(p) for p in poly.points], "area": _value(poly.area, "mm2"),
            "perimeter": _value(poly.perimeter, "mm")}


@bp.post("/studies/<study_uid>/measurements")
@require("capture", "view")
def save_measurements(study_uid: str) -> tuple[Response, int]:
    """Measure the lines and polygons drawn on one photo of the study on the chart's plane
    and store them as an SR; 201 with the values, uncertainties, warnings and the SR's UIDs.
    Refusals (audited as ``measurement.store``) store nothing."""
    g.audit_action = "measurement.store"
    body = _json_body()
    sop_uid = _text(body, "instance")
    wound = _text(body, "wound", DEFAULT_WOUND_LABEL)
    lines, polygons = _lines(body), _polygons(body)
    if not (lines or polygons):
        raise InvalidRequest("lines: give at least one line or polygon")
    found = _study_photo(study_uid, sop_uid)
    if not isinstance(found, ArchivedPhoto):
        return found
    svc = services()
    try:
        calibration = calibrate_archived(svc, found)
    except GeometryError as exc:
        raise NoChart(f"instance: {exc}") from None
    try:
        measured = measure_regions(calibration, lines, polygons)
    except RegionError as exc:
        raise InvalidRequest(f"{exc.field}.points: {exc}") from None
    try:
        stored = store_report(svc, found, measured.lines, measured.polygons,
                              calibration=calibration, wound_label=wound,
                              observer=g.caller.user, actor=g.caller.user)
    except ValueError as exc:  # the builder's refusal of the label
        raise InvalidRequest(f"wound: {exc}") from None
    del g.audit_action  # store_report audited the write in its own transaction
    return jsonify({
        "study_instance_uid": stored.study_uid, "instance": sop_uid, "wound": wound.strip(),
        "tracking_uid": stored.tracking_uid, "sr_sop_instance_uid": stored.sop_uid,
        "sr_series_instance_uid": stored.series_uid,
        "pr_sop_instance_uid": stored.presentation_sop_uid,
        "calibration": calibration.as_json(),
        "lines": [{"kind": line.quantity, "points": [list(p) for p in line.points],
                   "length": _value(line.length, "mm")} for line in measured.lines],
        "polygons": [_polygon_json(poly) for poly in measured.polygons],
        "warnings": measured.warnings,
    }), 201


@bp.get("/studies/<study_uid>/measurements")
@require("capture", "view")
def list_measurements(study_uid: str) -> Response | tuple[Response, int]:
    """The measurements stored in the study (``study_measurements``); audited as
    ``measurement.read``."""
    g.audit_action = "measurement.read"
    g.audit_entities = [audit.study_ref(study_uid)]
    if not study_visible(study_uid, g.caller):
        return error_response(403, "other_patient", OTHER_PATIENT)
    response = jsonify({"measurements": study_measurements(services(), study_uid)})
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.delete("/studies/<study_uid>/measurements/<sop_uid>")
@require("capture", "view")
def withdraw_measurements(study_uid: str, sop_uid: str) -> tuple[Response, int]:
    """Withdraw one stored measurement report: 200 with the rejection note's UID; 404 for no
    such report in the study, 409 when withdrawn already, 403 for another user's report (an
    admin may withdraw any). The rejection is audited (``correction.reject``)."""
    g.audit_action = "measurement.withdraw"
    g.audit_entities = [audit.study_ref(study_uid), audit.instance_ref(sop_uid)]
    if not study_visible(study_uid, g.caller):
        return error_response(403, "other_patient", OTHER_PATIENT)
    try:
        rejection = corrections.withdraw_report(services(), study_uid, sop_uid,
                                                actor=g.caller.user,
                                                admin=g.caller.role == "admin")
    except corrections.UnknownInstance as exc:
        return error_response(404, "not_found", str(exc))
    except corrections.NotAllowed as exc:
        return error_response(403, "not_allowed", str(exc))
    except corrections.CorrectionError as exc:
        return error_response(409, "withdrawn", str(exc))
    return jsonify({"study_instance_uid": study_uid, "withdrawn": list(rejection.rejected),
                    "kos_sop_instance_uid": rejection.kos_sop_uid}), 200


@bp.post("/outline")
@require("capture", "view")
def propose_outline() -> Response | tuple[Response, int]:
    """The proposed outline of the wound under ``seed`` on one photo of ``study``, in that
    photo's pixels; found on its colour-normalized version when it has one. Audited as
    ``outline.read``; nothing is stored."""
    g.audit_action = "outline.read"
    body = _json_body()
    study_uid, sop_uid = _text(body, "study"), _text(body, "instance")
    seed = _point(body.get("seed"), "seed")
    found = _study_photo(study_uid, sop_uid)
    if not isinstance(found, ArchivedPhoto):
        return found
    try:
        polygon = outline_archived(services(), found, seed)
    except SeedOutsideImageError as exc:
        raise InvalidRequest(f"seed: {exc}") from None
    except MeasurementError as exc:
        raise NotFound(f"instance: {exc}") from None
    response = jsonify({"polygon": [list(p) for p in polygon]})
    response.headers["Cache-Control"] = "no-store"
    return response
