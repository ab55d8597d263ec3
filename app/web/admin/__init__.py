"""Admin pages (admin role only): the delivery outbox, with JSON twins for scripts.

``GET /admin/deliveries`` (HTML) and ``GET /admin/api/deliveries`` (JSON) list deliveries per
destination and state (queued, failed, sent, dead) with the reason of failures (no PHI);
``POST …/deliveries/<id>/retry`` makes a dead or failed one due now and ``POST …/deliveries/retry``
does so for every dead one (optionally of one destination). The HTML forms post with the
session's CSRF token; the JSON endpoints take a bearer token or the cookie + ``X-CSRF-Token``.
A form's action carries the filters of the page it is on, and its answer redirects back to that
page with a status parameter (a count, never PHI) that the page turns into its status line.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, redirect, render_template, request
from werkzeug.wrappers import Response as BaseResponse

from app.db.models import DeliveryKind
from app.gateways.registry import Registry
from app.web import services
from app.web.auth import current_login, require
from app.web.errors import error_response
from app.workflow.delivery import (
    STATES,
    NotRetryable,
    ShownState,
    delivery_counts,
    list_deliveries,
    retry_dead,
    retry_delivery,
)

bp = Blueprint("admin", __name__, url_prefix="/admin")
PAGE_SIZE = 200


def _filters() -> tuple[str | None, str | None]:
    """The ``state`` and ``destination`` query parameters (an unknown state is ignored)."""
    state = request.args.get("state") or None
    return (state if state in STATES else None), (request.args.get("destination") or None)


def page_url(state: str | None = None, destination: str | None = None, path: str = "",
             **status: int | str) -> str:
    """The deliveries page showing ``state`` and ``destination`` (None: any), or its form
    under ``path`` posted from there, with ``status`` parameters (see :func:`_status_line`);
    its query holds only those names and numbers, never PHI."""
    query = {k: v for k, v in (("destination", destination), ("state", state)) if v}
    query |= {k: str(v) for k, v in status.items()}
    return f"/admin/deliveries{path}" + (f"?{urlencode(query)}" if query else "")


_NOT_RETRIED = {ShownState.SENT: "was already sent",
                ShownState.CANCELLED: "was cancelled (its instance was rejected)"}
"""Why a delivery was not retried, by its ``was`` status parameter."""


def _status_line() -> str | None:
    """What the page says of the retry that redirected to it, if any: its ``retried`` count,
    or the delivery it did not retry (``not_retried``, an id) and why (``was``)."""
    not_retried, was = request.args.get("not_retried", type=int), request.args.get("was")
    if not_retried is not None and was in _NOT_RETRIED:
        return f"Delivery {not_retried} {_NOT_RETRIED[ShownState(was)]}: nothing was done."
    retried = request.args.get("retried", type=int)
    if retried is None:
        return None
    if retried == 0:
        return "No delivery was dead: nothing was done."
    return f"{retried} {'delivery' if retried == 1 else 'deliveries'} queued again."


def _destinations() -> list[dict[str, Any]]:
    """The configured destinations and notifiers, as the page shows them (no secrets)."""
    registry: Registry = services().registry
    rows: list[dict[str, Any]] = [
        {"name": d.name, "kind": DeliveryKind.PACS, "type": type(d.pacs).__name__,
         "match": {k: sorted(v) for k, v in vars(d.route).items() if v is not None},
         "morph": [f"{r.operation} {r.keyword}" for r in d.morph.rules]}
        for d in registry.destinations]
    rows += [{"name": n.name, "kind": DeliveryKind.EMR, "type": type(n).__name__, "match": {},
              "morph": []} for n in registry.notifiers]
    return rows


def _overview() -> dict[str, Any]:
    state, destination = _filters()
    db = services().db
    return {"destinations": _destinations(), "counts": delivery_counts(db),
            "filter": {"state": state, "destination": destination},
            "deliveries": [d.as_json() for d in
                           list_deliveries(db, state, destination, PAGE_SIZE)]}


@bp.get("/deliveries")
@require("admin")
def deliveries_page() -> Response:
    login = current_login()
    response = Response(render_template(
        "admin/deliveries.html", states=STATES, page_url=page_url, status=_status_line(),
        csrf_token=login.csrf_token if login else "", **_overview()))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/api/deliveries")
@require("admin")
def deliveries_json() -> Response:
    response = jsonify(_overview())
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/api/deliveries/<int:delivery_id>/retry")
@require("admin")
def retry_json(delivery_id: int) -> tuple[Response, int]:
    try:
        state = retry_delivery(services().db, delivery_id)
    except NotRetryable as exc:
        return error_response(409, "conflict", str(exc))
    if state is None:
        return error_response(404, "not_found", "no such delivery")
    return jsonify(state.as_json()), 200


@bp.post("/api/deliveries/retry")
@require("admin")
def retry_all_json() -> Response:
    body = request.get_json(silent=True)
    destination = body.get("destination") if isinstance(body, dict) else None
    return jsonify({"retried": retry_dead(services().db, destination or None)})


@bp.post("/deliveries/<int:delivery_id>/retry")
@require("admin")
def retry_form(delivery_id: int) -> BaseResponse | tuple[Response, int]:
    """Back to the page posted from, saying what was done; a delivery already sent or
    cancelled (a stale page, another admin) is left as it is, and the page says so."""
    try:
        state = retry_delivery(services().db, delivery_id)
    except NotRetryable as exc:
        return redirect(page_url(*_filters(), not_retried=delivery_id, was=exc.state), 303)
    if state is None:
        return error_response(404, "not_found", "no such delivery")
    return redirect(page_url(*_filters(), retried=1), 303)


@bp.post("/deliveries/retry")
@require("admin")
def retry_all_form() -> BaseResponse:
    retried = retry_dead(services().db, request.form.get("destination") or None)
    return redirect(page_url(*_filters(), retried=retried), 303)
