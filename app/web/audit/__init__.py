"""The audit trail over HTTP: one record per request that touches PHI, and the admin views.

``init_app`` installs an app-wide ``after_request`` hook that records every request of the
audited endpoints (refusals included) with who (user, role), what (action, entities the view
named in ``g.audit_entities``, extra facts in ``g.audit_detail``; a view may also set
``g.audit_action`` and ``g.audit_actor``), where (client address, this node) and the outcome.
If the record cannot be written, the answer is withheld (503): no audit, no PHI. Endpoints not
listed here serve no PHI (health, the app shell, the viewer page shell).

Admin views (admin role): ``/admin/audit`` (HTML), ``/admin/api/audit`` (JSON),
``/admin/api/audit/fhir`` (FHIR R4 AuditEvent Bundle) with the same filters — ``actor``,
``action`` (exact, or a family such as ``dicomweb.``), ``outcome``, ``patient_id`` +
``issuer``, ``study``, ``entity``, ``since``/``until`` (ISO 8601), ``before`` (seq, paging),
``limit`` — and ``GET /admin/api/audit/verify`` (the hash chain check). Reading the trail is
itself audited (``audit.read``, ``audit.verify``).

Each takes its filters from the query of a GET or the form body of a POST (a cookie session's
POST carries the CSRF token). Patient IDs never go in a URL (proxy logs, browser history): the
page's forms (filter, older records, the FHIR export) all post, and a GET of the page or of
either API naming a patient (``patient_id``, ``issuer`` or a ``patient:`` entity) is refused
with 400 ``patient_in_url`` before anything is read; bearer-token clients POST those filters
in a form body. Filters naming no patient (dates, action, actor, ...) still work in a GET.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, render_template, request
from werkzeug.datastructures import MultiDict

from app.pipeline.audit import AuditFacts
from app.web import services
from app.web.auth import SAFE_METHODS, current_caller, current_login, require
from app.web.errors import error_response, fault_response
from app.workflow import audit

log = logging.getLogger(__name__)

bp = Blueprint("audit", __name__, url_prefix="/admin")

ACTIONS = {
    "auth.login": "user.login",
    "auth.logout": "user.logout",
    "oidc.callback": "user.login",
    "patients.identify": "patient.identify",
    "patients.search": "patient.search",
    "api.open_session": "session.open",
    "api.get_session": "session.read",
    "api.complete_session": "session.complete",
    "api.verify_patient": "session.verify",
    "api.put_photo": "photo.store",
    "api.prior_photo": "prior.read",
    "wounds.trajectory_page": "wound.read",
    "api.wound_trajectory_csv": "wound.export",
    "audit.audit_page": "audit.read",
    "audit.audit_json": "audit.read",
    "audit.audit_fhir": "audit.read",
    "audit.audit_verify": "audit.verify",
}
"""Endpoints audited under a fixed action. Also audited: every ``dicomweb.*`` and ``fhir.*``
endpoint (``<blueprint>.<endpoint>``), every state-changing ``admin.*`` request, and any view
that sets ``g.audit_action``."""

_VIEW_ARGS = (("study", "study"), ("series", "series"), ("sop", "instance"),
              ("delivery_id", "delivery"))


def init_app(app: Flask) -> None:
    """Register the admin views and the audit hook; with ``EBIW_AUDIT_SYSLOG`` (and
    ``EBIW_AUDIT_FORWARD_THREAD`` on) start forwarding the trail to the collector."""
    app.register_blueprint(bp)
    app.after_request(_audit_response)
    svc = app.extensions["ebiw"]
    forwarder = audit.syslog_forwarder(svc.db, svc.settings)
    if forwarder is not None and svc.settings.audit_forward_thread:
        app.extensions["ebiw.audit_forwarder"] = forwarder.start()


def _action() -> str | None:
    """The action this request is audited under, or None when it is not audited."""
    if "audit_action" in g:
        return g.audit_action
    endpoint = request.endpoint or ""
    if endpoint in ACTIONS:
        return ACTIONS[endpoint]
    blueprint, _, name = endpoint.partition(".")
    if blueprint in ("dicomweb", "fhir") or (blueprint == "admin"
                                             and request.method not in SAFE_METHODS):
        return f"{blueprint}.{name}"
    return None


def _actor() -> tuple[str, str | None]:
    """(user, role) of the request: ``g.audit_actor`` when the view set it (a sign-in that
    does not go through ``auth.login``), for a login the name it tried, else the caller."""
    if "audit_actor" in g:
        return g.audit_actor
    if request.endpoint == "auth.login":
        body = request.get_json(silent=True) if request.is_json else request.form.to_dict()
        name = body.get("username") if isinstance(body, dict) else None
        return (name if isinstance(name, str) and name else "anonymous"), None
    login = g.get("web_login")
    caller = g.get("caller") or (login.caller if login else None) or current_caller()
    return (caller.user, caller.role) if caller else ("anonymous", None)


def _audit_response(response: Response) -> Response:
    """Record the request if its endpoint is audited; fail closed if the record fails."""
    action = _action()
    if action is None:
        return response
    args = request.view_args or {}
    entities = g.get("audit_entities") or [
        f"{kind}:{args[key]}" for key, kind in _VIEW_ARGS if key in args]
    try:
        actor, role = _actor()
        with services().db.session() as db:
            audit.record(db, actor, action, *entities,
                         outcome=audit.outcome_of(response.status_code), role=role,
                         client=request.remote_addr, detail=g.get("audit_detail") or {},
                         node=services().settings.node)
    except Exception as exc:  # no audit, no PHI: the answer is withheld
        response.close()
        failed, status = fault_response(exc) or error_response(
            503, "audit_unavailable", "the access could not be audited; try again")
        failed.status_code = status
        failed.headers["Cache-Control"] = "no-store"
        log.error("audit write failed: %s", type(exc).__name__)
        return failed
    return response


# --- admin views ------------------------------------------------------------------------------


class _BadFilter(ValueError):
    code = "invalid_filter"


class _PatientInUrl(_BadFilter):
    code = "patient_in_url"


@bp.errorhandler(_BadFilter)
def _bad_filter(exc: _BadFilter) -> tuple[Response, int]:
    return error_response(400, exc.code, str(exc))


def _query() -> MultiDict[str, str]:
    """The request's filters: the body of a POST (a form, or a JSON object of strings), else
    the URL's query.

    Guarantees: a POST body the filters cannot be read from (another type, JSON that is not an
    object of strings) is refused with 400 ``invalid_filter``, never read as no filter, which
    would answer with the whole trail instead of the patient asked for.
    """
    if request.method != "POST":
        return request.args
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not all(
                isinstance(value, str) for value in body.values()):
            raise _BadFilter("the JSON body must be an object of strings")
        return MultiDict(body)
    if request.content_length and not request.form:
        raise _BadFilter("POST the filters as a form (application/x-www-form-urlencoded) "
                         "or a JSON object")
    return request.form


def _time(query: MultiDict[str, str], name: str) -> datetime | None:
    raw = query.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise _BadFilter(f"{name} must be an ISO 8601 date or date-time") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _int(query: MultiDict[str, str], name: str) -> int | None:
    raw = query.get(name)
    if not raw:
        return None
    if not raw.isdigit():
        raise _BadFilter(f"{name} must be a positive integer")
    return int(raw)


FILTERS = ("actor", "action", "outcome", "patient_id", "issuer", "study", "entity", "since",
           "until", "before", "limit")
"""The filter fields, in the order the page carries them."""
_PATIENT_FILTERS = ("patient_id", "issuer", "entity")
"""Filters that may name a patient: kept out of the audit record's detail (its entity names the
patient)."""


def _names_patient(query: MultiDict[str, str]) -> bool:
    """Whether ``query`` filters by a patient (``patient_id``, ``issuer``, a patient entity)."""
    return bool(query.get("patient_id") or query.get("issuer")
                or query.get("entity", "").startswith("patient:"))


def _filter_query(how_to_post: str) -> MultiDict[str, str]:
    """The request's filters (:func:`_query`).

    Guarantees: a GET whose query names a patient (:func:`_names_patient`) is refused with 400
    ``patient_in_url``, telling ``how_to_post`` the filters instead, before anything is read
    and before the filters reach the request's audit record.
    """
    query = _query()
    if request.method == "GET" and _names_patient(query):
        raise _PatientInUrl(f"a patient ID never goes in a URL: {how_to_post}")
    return query


def _filters(query: MultiDict[str, str]) -> audit.Filters:
    """The filters of ``query``; a patient is ``patient_id`` with ``issuer``. Sets the
    request's audit entity (the patient or study filtered on) and detail (the other filters,
    nothing else the request carried)."""
    entity = query.get("entity") or None
    if query.get("patient_id"):
        if not query.get("issuer"):
            raise _BadFilter("patient_id needs issuer")
        entity = audit.patient_ref(query["patient_id"], query["issuer"])
    elif query.get("study"):
        entity = audit.study_ref(query["study"])
    outcome = query.get("outcome") or None
    if outcome is not None and outcome not in (audit.SUCCESS, audit.DENIED, audit.FAILED,
                                                audit.ERROR):
        raise _BadFilter("outcome must be success, denied, failed or error")
    filters = audit.Filters(actor=query.get("actor") or None,
                            action=query.get("action") or None, outcome=outcome,
                            entity=entity, since=_time(query, "since"),
                            until=_time(query, "until"), before_seq=_int(query, "before"))
    g.audit_entities = [entity] if entity else []
    g.audit_detail = {k: query[k] for k in FILTERS
                      if query.get(k) and k not in _PATIENT_FILTERS}
    return filters


def _record_json(facts: AuditFacts) -> dict[str, Any]:
    return {"seq": facts.seq, "recorded_at": facts.recorded_at.isoformat(),
            "actor": facts.actor, "role": facts.role, "client": facts.client,
            "node": facts.node, "action": facts.action, "entities": list(facts.entities),
            "detail": dict(facts.detail), "outcome": facts.outcome}


def _page(query: MultiDict[str, str]) -> dict[str, Any]:
    filters = _filters(query)
    limit = _int(query, "limit") or 100
    records = audit.search(services().db, filters, limit)
    return {"records": [_record_json(r) for r in records],
            "next_before": records[-1].seq if len(records) == min(limit, audit.MAX_PAGE)
            else None}


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/audit", methods=["GET", "POST"])
@require("admin")
def audit_page() -> Response:
    """The audit trail, newest first, with the filter form; a POST answers the filtered page.

    Guarantees: no URL on the page holds a filter that may name a patient (its forms post
    them); a GET naming a patient is refused with 400, before anything is read.
    """
    query = _filter_query("filter by patient with the form of the audit page, which posts it")
    page = _page(query)
    login = current_login()
    return _no_store(Response(render_template(
        "audit/events.html", filters={k: query[k] for k in FILTERS if query.get(k)},
        csrf_token=login.csrf_token if login else "", **page)))


_POST_THE_PATIENT = ("POST the filters in the request body (a form: "
                     "application/x-www-form-urlencoded, or a JSON object), not in the query")
"""How an API client filters by patient instead of a GET's query."""


@bp.route("/api/audit", methods=["GET", "POST"])
@require("admin")
def audit_json() -> Response:
    """Matching records as JSON, newest first: ``{"records", "next_before"}`` (a GET naming a
    patient is refused, see :func:`_filter_query`)."""
    return _no_store(jsonify(_page(_filter_query(_POST_THE_PATIENT))))


@bp.route("/api/audit/fhir", methods=["GET", "POST"])
@require("admin")
def audit_fhir() -> Response:
    """Matching records as FHIR R4 AuditEvents (a ``collection`` Bundle, chain order; a GET
    naming a patient is refused, see :func:`_filter_query`)."""
    filters = _filters(_filter_query(_POST_THE_PATIENT))
    bundle = audit.fhir_bundle(services().db, filters,
                               systems=services().settings.issuer_systems)
    return _no_store(Response(json.dumps(bundle), mimetype="application/fhir+json"))


@bp.get("/api/audit/verify")
@require("admin")
def audit_verify() -> Response:
    """Check the hash chain: ``{"ok", "records", "broken_at": {seq, id, reason} | null}``."""
    result = audit.verify(services().db)
    g.audit_detail = {"ok": result.ok, "records": result.records}
    return _no_store(jsonify(result.as_json()))
