"""JSON API v1: the contract of the capture app and batch tools (``openapi.json`` beside it)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy import func, select

from app.db.models import CaptureSession, DeliveryKind, Photo, StagedClip, as_utc
from app.pipeline.decode import UnreadablePhotoError, sniff
from app.pipeline.dicom.codes import body_site, body_sites
from app.pipeline.fhir import viewer_url
from app.pipeline.quality import FRAME_TYPES, MAX_FRAME_BYTES, assess_frame
from app.web import services
from app.web.auth import current_login, login_json, require
from app.web.errors import error_response
from app.web.launch import OTHER_PATIENT
from app.web.limits import rate_limited
from app.web.studies import wounds
from app.web.timing import SHOW
from app.web.uploads import (
    UnsupportedMediaType,
    photo_body,
    read_media_body,
    read_photo_body,
)
from app.workflow import audit, corrections
from app.workflow.delivery import (
    DeliveryState,
    ShownState,
    deliveries_by_study,
    instance_deliveries,
    study_deliveries,
)
from app.workflow.intake import InvalidRequest, SessionRequest, UnreadablePhoto
from app.workflow.prior import PriorRequest, find_prior, render_prior

bp = Blueprint("api", __name__, url_prefix="/api/v1")

RECENT_HOURS = 24  # GET /sessions/recent: the caller's sessions opened this long ago at most
RECENT_LIMIT = 100  # ... the newest this many


def _iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with its offset, as the OpenAPI date-time format requires."""
    return as_utc(value).isoformat() if value is not None else None


def photo_json(photo: Photo, deliveries: Sequence[DeliveryState] = ()) -> dict[str, Any]:
    """What a client learns about one upload (no PHI); ``deliveries`` may be the whole
    study's: the photo's own are shown, one per PACS destination (live state)."""
    return {
        "upload_uuid": photo.upload_uuid,
        "sop_instance_uid": photo.sop_uid,
        "series_instance_uid": photo.instance.series_uid,
        "instance_number": photo.instance_number,
        "sha256": photo.sha256,
        "size": photo.size,
        "media_type": photo.media_type,
        "passthrough": photo.passthrough,
        "width": photo.width,
        "height": photo.height,
        "dicom_sha256": photo.instance.sha256,
        "status": "stored",
        "color": photo.color,
        "pixel_spacing_mm": photo.pixel_spacing_mm,
        "quality": photo.quality,
        "normalized_sop_instance_uid": photo.normalized_sop_uid,
        "viewer_url": viewer_url(services().settings.public_url, photo.instance.study_uid),
        "deliveries": [d.status_json() for d in deliveries if d.kind == DeliveryKind.PACS
                       and d.sop_uid in (photo.sop_uid, photo.normalized_sop_uid)],
    }


def staged_json(clip: StagedClip) -> dict[str, Any]:
    """What a client learns about a clip waiting for its re-encode (no PHI): ``status``
    ``processing``, or ``failed`` with the ``reason`` (it will not be stored unless an admin
    retries its job). Once stored, the upload is shown as a photo (:func:`photo_json`)."""
    return {
        "upload_uuid": clip.upload_uuid,
        "sop_instance_uid": clip.sop_uid,
        "instance_number": clip.instance_number,
        "sha256": clip.sha256,
        "size": clip.size,
        "media_type": clip.media_type,
        "width": clip.width,
        "height": clip.height,
        "status": "failed" if clip.failure else "processing",
        "reason": clip.failure,
    }


def _audit_session(session: CaptureSession, *instances: str) -> None:
    """Name the session's patient, study and the given instances in this request's audit."""
    g.audit_entities = [audit.patient_ref(session.patient_id, session.issuer),
                        audit.study_ref(session.study_uid),
                        *(audit.instance_ref(uid) for uid in instances if uid)]


def session_json(session: CaptureSession, *, photos: bool = True) -> dict[str, Any]:
    """The session summary: identifiers, coded context and the state of every photo."""
    site = body_site(session.body_site) if session.body_site else None
    body: dict[str, Any] = {
        "id": session.id,
        "study_instance_uid": session.study_uid,
        "status": session.status,
        "patient": {"id": session.patient_id, "issuer": session.issuer},
        "encounter": session.encounter,
        "body_site": {"code": site.code, "meaning": site.meaning} if site else None,
        "laterality": session.laterality,
        "department": session.department,
        "source": session.source,
        "consent": session.consent,
        "sensitive": session.sensitive,
        "patient_verified": session.patient_verified,
        "description": session.description,
        "created_at": _iso(session.created_at),
        "completed_at": _iso(session.completed_at),
        "viewer_url": viewer_url(services().settings.public_url, session.study_uid),
    }
    if photos:
        deliveries = study_deliveries(services().db, session.study_uid)
        uploads: list[Photo | StagedClip] = sorted([*session.photos, *session.staged_clips],
                                                   key=lambda u: u.instance_number)
        body["photos"] = [photo_json(u, deliveries) if isinstance(u, Photo) else staged_json(u)
                          for u in uploads]
        body["photo_count"] = len(uploads)
        body["notifications"] = [d.status_json() for d in deliveries if d.kind == DeliveryKind.EMR]
    return body


def study_progress(photos: int, deliveries: Sequence[DeliveryState]) -> dict[str, Any]:
    """Where a study's photos have got to, for the user who took them.

    ``state``: ``failed`` (a delivery, or a clip's re-encode, failed for good),
    ``processing`` (no photo stored yet, or a clip is waiting for its re-encode),
    ``in_emr`` (every delivery done and the EMR notified), ``in_pacs`` (every PACS delivery
    done, the EMR not notified yet or not configured), else ``stored`` (in the archive).
    ``reason`` (free of PHI): why a delivery failed for good, else why one is being retried,
    else None. ``pacs`` and ``emr`` count the deliveries of each kind: sent, and all but the
    cancelled ones (of instances rejected before they were sent).
    """
    pacs, emr = DeliveryKind.PACS, DeliveryKind.EMR
    deliveries = [d for d in deliveries if d.state != ShownState.CANCELLED]
    counts = {kind: {"sent": sum(d.state == ShownState.SENT for d in deliveries
                                 if d.kind == kind),
                     "total": sum(d.kind == kind for d in deliveries)} for kind in (pacs, emr)}
    done = {kind: c["total"] > 0 and c["sent"] == c["total"] for kind, c in counts.items()}
    dead = [d for d in deliveries if d.state == ShownState.DEAD]
    trouble = dead or [d for d in deliveries if d.state == ShownState.FAILED]
    reencoding = any(d.kind == DeliveryKind.VIDEO and d.state != ShownState.SENT
                     for d in deliveries)
    if dead:
        state = "failed"
    elif photos == 0 or reencoding:
        state = "processing"
    elif done[emr] and (done[pacs] or counts[pacs]["total"] == 0):
        state = "in_emr"
    elif done[pacs]:
        state = "in_pacs"
    else:
        state = "stored"
    return {"state": state, "reason": trouble[0].reason if trouble else None,
            "pacs": counts[pacs], "emr": counts[emr]}


def _launched_for_other(session_id: str) -> bool:
    """Whether the caller is a session launched from the EMR for one patient and the capture
    session is another patient's (only then is the capture session looked up)."""
    if g.caller.patient is None:
        return False
    session = services().intake.get_session(session_id, photos=False)
    return not g.caller.sees(session.patient_id, session.issuer)


@bp.post("/sessions")
@require("capture")
def open_session() -> tuple[Response, int]:
    svc = services()
    req = SessionRequest.from_json(request.get_json(silent=True), svc.settings.default_issuer)
    if not g.caller.sees(req.patient_id, req.issuer):
        return error_response(403, "other_patient", OTHER_PATIENT)
    department = g.caller.department
    if department is not None:  # an account limited to one department (OIDC) captures there
        if req.department not in (None, department):
            return error_response(403, "department", "your account may capture only for "
                                                     "its own department")
        req = replace(req, department=department)
    session, created = svc.intake.open_session(req, g.caller.user)
    _audit_session(session)
    return jsonify(session_json(session, photos=False)), 201 if created else 200


@bp.get("/sessions/recent")
@require("capture")
def recent_sessions() -> Response:
    """The caller's own capture sessions of the last :data:`RECENT_HOURS` hours, newest first
    (at most :data:`RECENT_LIMIT`), each with where its photos have got to
    (:func:`study_progress`), its photos rejected by a correction, and its viewer link. The
    patient's name is in the answer (the user's own captures) and never in a log; the
    request has no query string. Audited as ``session.read`` of every patient and study
    listed."""
    svc = services()
    since = datetime.now(UTC) - timedelta(hours=RECENT_HOURS)
    with svc.db.session() as db:
        sessions = [s for s in db.scalars(
            select(CaptureSession).where(CaptureSession.created_by == g.caller.user,
                                         CaptureSession.created_at >= since)
            .order_by(CaptureSession.created_at.desc(), CaptureSession.id)
            .limit(RECENT_LIMIT)) if g.caller.sees(s.patient_id, s.issuer)]
        photos = dict(db.execute(
            select(Photo.session_id, func.count()).where(
                Photo.session_id.in_([s.id for s in sessions])).group_by(Photo.session_id)
        ).all())
        rejected = corrections.rejected_photos(db, [s.study_uid for s in sessions])
    deliveries = deliveries_by_study(svc.db, [s.study_uid for s in sessions])
    g.audit_action = "session.read"  # it names patients: every answer is audited
    g.audit_entities = list(dict.fromkeys(
        ref for s in sessions for ref in (audit.patient_ref(s.patient_id, s.issuer),
                                          audit.study_ref(s.study_uid))))
    body = []
    for session in sessions:
        item = session_json(session, photos=False)
        item["patient"]["name"] = session.patient_name
        count = photos.get(session.id, 0)
        body.append({**item, "photo_count": count,
                     "rejected": rejected.get(session.study_uid, []),
                     **study_progress(count, deliveries.get(session.study_uid, []))})
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/sessions/<session_id>")
@require("capture", "view")
def get_session(session_id: str) -> Response | tuple[Response, int]:
    session = services().intake.get_session(session_id)
    _audit_session(session)
    if not g.caller.sees(session.patient_id, session.issuer):
        return error_response(403, "other_patient", OTHER_PATIENT)
    return jsonify(session_json(session))


@bp.put("/sessions/<session_id>/photos/<upload_uuid>")
@require("capture")
@rate_limited("upload")
@photo_body
def put_photo(session_id: str, upload_uuid: str) -> tuple[Response, int]:
    if _launched_for_other(session_id):
        return error_response(403, "other_patient", OTHER_PATIENT)
    video, data = read_media_body()
    svc = services()
    accept = svc.intake.accept_video if video else svc.intake.accept_photo
    photo, created = accept(session_id, upload_uuid, data)
    if isinstance(photo, StagedClip):  # re-encoded and stored later by the worker
        _audit_session(svc.intake.get_session(photo.session_id, photos=False), photo.sop_uid)
        return jsonify(staged_json(photo)), 202
    _audit_session(svc.intake.get_session(photo.session_id, photos=False), photo.sop_uid,
                   photo.normalized_sop_uid or "")
    deliveries = instance_deliveries(
        svc.db, [d.name for d in svc.registry.destinations], photo.instance.study_uid,
        [uid for uid in (photo.sop_uid, photo.normalized_sop_uid) if uid])
    return jsonify(photo_json(photo, deliveries)), 201 if created else 200


@bp.post("/guidance")
@require("capture")
@rate_limited("guidance")
@photo_body
def guidance() -> Response:
    """Live guidance on one preview frame (``app.pipeline.quality.assess_frame``): the six
    checks and one line of advice. The frame is read, judged and dropped: nothing is stored,
    logged or audited, and the answer is not cached. ``Server-Timing`` is always sent (the
    app backs off when the server is slow)."""
    request.environ[SHOW] = True
    request.max_content_length = MAX_FRAME_BYTES
    photo_width = request.args.get("photo_width", type=int)
    if "photo_width" in request.args and not (photo_width and 0 < photo_width <= 100_000):
        raise InvalidRequest("photo_width must be a whole number of pixels")
    data = read_photo_body()
    try:
        media_type: str | None = sniff(data)
    except UnreadablePhotoError:
        media_type = None
    if media_type not in FRAME_TYPES:
        raise UnsupportedMediaType("a guidance frame must be sent as image/jpeg or image/png")
    try:
        quality = assess_frame(data, photo_width=photo_width)
    except UnreadablePhotoError as exc:
        raise UnreadablePhoto(str(exc)) from exc
    response = jsonify(quality.as_json())
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/sessions/<session_id>/complete")
@require("capture")
def complete_session(session_id: str) -> Response | tuple[Response, int]:
    if _launched_for_other(session_id):
        return error_response(403, "other_patient", OTHER_PATIENT)
    session = services().intake.complete(session_id)
    _audit_session(session)
    return jsonify(session_json(session))


@bp.post("/sessions/<session_id>/verify-patient")
@require("capture")
def verify_patient(session_id: str) -> Response | tuple[Response, int]:
    """Confirm the patient of a session opened unverified (``EBIW_UNKNOWN_PATIENTS=hold``)
    once a directory knows them: its photos' deliveries are queued then (409 while unknown)."""
    if _launched_for_other(session_id):
        return error_response(403, "other_patient", OTHER_PATIENT)
    session = services().intake.verify_patient(session_id)
    _audit_session(session)
    return jsonify(session_json(session))


@bp.post("/prior")
@require("capture")
def prior_photo() -> Response | tuple[Response, int]:
    """The latest earlier photo of the patient's body site (``app.workflow.prior``) as a JPEG
    for the camera overlay, its metadata in ``X-Prior-*`` headers; 204 when there is none.
    The patient is named in the JSON body only. Never cached; audited as ``prior.read`` of
    the patient (and of the study and instance shown)."""
    svc = services()
    req = PriorRequest.from_json(request.get_json(silent=True), svc.settings.default_issuer)
    g.audit_entities = [audit.patient_ref(req.patient_id, req.issuer)]
    if not g.caller.sees(req.patient_id, req.issuer):
        return error_response(403, "other_patient", OTHER_PATIENT)
    prior = find_prior(svc.db, req)
    if prior is None:
        response = Response(status=204)
    else:
        g.audit_entities += [audit.study_ref(prior.study_uid),
                             audit.instance_ref(prior.instance.sop_uid)]
        image = render_prior(svc.archive, prior, max_pixels=svc.settings.max_pixels)
        response = Response(image.jpeg, content_type="image/jpeg")
        meta = {"X-Prior-Taken": prior.taken_at.isoformat(),
                "X-Prior-Px-Per-Mm": None if image.px_per_mm is None
                else f"{image.px_per_mm:.4f}",
                "X-Prior-Body-Site": req.body_site, "X-Prior-Laterality": req.laterality,
                "X-Prior-Normalized": "true" if prior.normalized else "false"}
        response.headers.update({k: v for k, v in meta.items() if v is not None})
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/wounds/<tracking_uid>/trajectory.csv")
@require(*wounds.ROLES)
def wound_trajectory_csv(tracking_uid: str) -> Response | tuple[Response, int]:
    """A wound's healing trajectory as CSV (``app.web.studies.wounds``)."""
    return wounds.trajectory_csv_response(tracking_uid)


@bp.get("/body-sites")
@require("capture", "view")
def list_body_sites() -> Response:
    return jsonify([{"code": s.code, "meaning": s.meaning, "sensitive": s.sensitive,
                     "paired": s.paired} for s in body_sites().values()])


@bp.get("/me")
@require("capture", "view")
def me() -> Response:
    """Who is logged in; for the session cookie also its CSRF token and lifetime."""
    login = current_login()
    body = login_json(login) if login is not None and "Authorization" not in request.headers \
        else {"user": g.caller.user, "role": g.caller.role, "csrf_token": None,
              "expires_at": None, "idle_timeout_seconds": None}
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


@cache
def _openapi() -> str:
    return json.dumps(json.loads(resources.files(__package__).joinpath("openapi.json")
                                 .read_text()))


@bp.get("/openapi.json")
def openapi() -> Response:
    return Response(_openapi(), mimetype="application/json")
