"""Batch upload: the page at ``/batch`` and its API under ``/api/v1/batches``.

The page (``templates/batch/index.html``, ``static/js/batch*.js``) sends many files in parallel
with the idempotent item API, then shows the groups the slip-sheet sorting made for review and
confirmation (see :mod:`app.workflow.batch`). A user sees only the batches they opened (an
admin sees all). Identifiers travel in bodies only, never in a URL; answers naming patients are
``Cache-Control: no-store``; every route is audited (``batch.*`` actions).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, render_template, request

from app.web.auth import require
from app.web.uploads import photo_body, read_media_body
from app.workflow import audit
from app.workflow.batch import Batches, BatchView, GroupView, build_batches
from app.workflow.intake import InvalidRequest

page = Blueprint("batch", __name__)
api = Blueprint("batch_api", __name__, url_prefix="/api/v1/batches")
_EXTENSION = "ebiw.batches"


def init_app(app: Flask) -> None:
    """Build the batch service from the app's services and register the page and the API."""
    svc = app.extensions["ebiw"]
    app.extensions[_EXTENSION] = build_batches(svc.db, svc.settings, svc.intake)
    app.register_blueprint(page)
    app.register_blueprint(api)


def _batches() -> Batches:
    return current_app.extensions[_EXTENSION]


def _owner() -> str | None:
    """Whose batches the caller may use: their own, or any for an admin."""
    return None if g.caller.role == "admin" else g.caller.user


def _audit(action: str, batch_id: str, view: BatchView | None = None,
           group: GroupView | None = None) -> None:
    """Name the batch and the patients and studies the answer reveals in the audit record."""
    g.audit_action = action
    entities = [f"batch:{batch_id}"]
    groups = [group] if group is not None else list(view.groups) if view is not None else []
    for item in groups:
        if item.session is not None:
            entities += [audit.patient_ref(item.session.patient_id, item.session.issuer),
                         audit.study_ref(item.session.study_uid)]
        for patient in (item.row.lookup or {}).get("patients", []):
            entities.append(audit.patient_ref(patient["mrn"], patient["issuer"]))
    g.audit_entities = list(dict.fromkeys(entities))


def _no_store(body: dict[str, Any], status: int = 200) -> tuple[Response, int]:
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response, status


@page.get("/batch")
def batch_page() -> Response:
    """The batch page (no PHI: everything comes from the API after login). Not a shell page:
    its header names the user and holds the session's CSRF token, so it gets the default
    ``Cache-Control: no-store`` (:func:`app.web.security.harden`)."""
    return Response(render_template("batch/index.html"))


@api.post("")
@require("capture")
def open_batch() -> tuple[Response, int]:
    """Open a batch (``{"id"?, "department"?}``); the same id again returns it."""
    g.audit_action = "batch.open"
    body = request.get_json(silent=True)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    department = g.caller.department or body.get("department")
    batch, created = _batches().open_batch(body.get("id"), g.caller.user,
                                           department=department)
    _audit("batch.open", batch.id)
    view = _batches().view(batch.id, owner=g.caller.user, lookup=False)
    return _no_store(view.as_json(), 201 if created else 200)


@api.get("/<batch_id>")
@require("capture")
def get_batch(batch_id: str) -> tuple[Response, int]:
    """The batch: its photos in capture order, its groups with the directory's answer."""
    g.audit_action = "batch.read"
    view = _batches().view(batch_id, owner=_owner())
    _audit("batch.read", view.batch.id, view)
    return _no_store(view.as_json())


@api.delete("/<batch_id>")
@require("capture")
def discard_batch(batch_id: str) -> tuple[Response, int]:
    """Discard the photos still held (stored ones stay in their studies)."""
    g.audit_action = "batch.discard"
    count = _batches().discard(batch_id, owner=_owner())
    _audit("batch.discard", batch_id)
    return _no_store({"discarded": count})


@api.put("/<batch_id>/items/<upload_uuid>")
@require("capture")
@photo_body
def put_item(batch_id: str, upload_uuid: str) -> tuple[Response, int]:
    """Hold one photo or video clip (the raw body) at its place ``order`` in file order
    (query)."""
    g.audit_action = "batch.hold"
    try:
        order = int(request.args.get("order", "0"))
    except ValueError as exc:
        raise InvalidRequest("order must be a whole number from 0") from exc
    _, data = read_media_body()
    item, created = _batches().add_item(batch_id, upload_uuid, data, order, owner=_owner())
    _audit("batch.hold", item.batch_id)
    return _no_store(_item_json(item), 201 if created else 200)


def _item_json(item: Any) -> dict[str, Any]:
    return {"upload_uuid": item.upload_uuid, "sha256": item.sha256, "size": item.size,
            "media_type": item.media_type, "role": item.role, "barcode": bool(item.identity),
            "status": item.status}


@api.patch("/<batch_id>/items/<upload_uuid>")
@require("capture")
def patch_item(batch_id: str, upload_uuid: str) -> tuple[Response, int]:
    """Move a held photo (``group_id``, ``auto``), drop it (``dropped``) or change its
    ``role``; answers with the whole batch as it is now sorted."""
    g.audit_action = "batch.update"
    item = _batches().update_item(batch_id, upload_uuid, request.get_json(silent=True),
                                  owner=_owner())
    view = _batches().view(item.batch_id, owner=_owner(), lookup=False)
    _audit("batch.update", view.batch.id, view)
    return _no_store(view.as_json())


@api.post("/<batch_id>/groups")
@require("capture")
def add_group(batch_id: str) -> tuple[Response, int]:
    """A group for a patient entered by hand (``{"mrn", "issuer"?}``), looked up in the
    patient directories; answers with the whole batch."""
    g.audit_action = "batch.group"
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object with mrn (and issuer)")
    group_id = _batches().add_group(batch_id, body.get("mrn"), body.get("issuer"),
                                    owner=_owner())
    view = _batches().view(batch_id, owner=_owner())
    _audit("batch.group", view.batch.id, group=view.group(group_id))
    return _no_store({**view.as_json(), "group_id": group_id}, 201)


@api.post("/<batch_id>/groups/<group_id>/confirm")
@require("capture")
def confirm_group(batch_id: str, group_id: str) -> tuple[Response, int]:
    """Confirm the group's patient: one capture session (study) is made and its held photos
    are stored and queued for delivery. Confirming again adds photos moved in since."""
    g.audit_action = "batch.confirm"
    group = _batches().confirm(batch_id, group_id, request.get_json(silent=True),
                               user=g.caller.user, owner=_owner())
    _audit("batch.confirm", batch_id, group=group)
    return _no_store(group.as_json())
