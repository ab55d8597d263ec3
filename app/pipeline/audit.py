"""The audit trail's pure parts: record content and its hash chain, the event catalogue with
its DICOM audit codes, FHIR R4 AuditEvent JSON, and RFC 5424 syslog framing.

An audit record names what was touched by typed entity references (``patient:<issuer>|<id>``,
``study:<uid>``, ``instance:<uid>``, ``query:<name>``, ``user:<name>``, ``delivery:<id>``, …).
Its hash is the SHA-256 of a canonical JSON of every field plus the previous record's hash, so
changing, removing or reordering any record breaks the chain from that record on.

Codes follow DICOM PS3.15 A.5 / PS3.16 CID 400-403 (``DCM``), as IHE ATNA uses them, and FHIR
R4's AuditEvent bindings (outcome 0/4/8/12, action C/R/U/D/E, network type, entity type and
role from ``audit-entity-type`` and ``object-role``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from app.pipeline.fhir import DCM_SYSTEM, DICOM_UID_SYSTEM, identifier_system

SUCCESS = "success"
DENIED = "denied"  # not authenticated or not allowed
FAILED = "failed"  # refused for another reason (not found, bad request, not acceptable)
ERROR = "error"  # the server (or, for deliveries, the destination) failed for good
OUTCOMES = (SUCCESS, DENIED, FAILED, ERROR)

GENESIS = "0" * 64
"""The ``prev_hash`` of the first record."""

_FHIR_OUTCOME = {SUCCESS: "0", DENIED: "4", FAILED: "4", ERROR: "8"}
"""0 success, 4 minor failure (refused; the user may retry), 8 serious failure (the action was
terminated: a server error, a delivery given up). 12 (major failure) is not used."""

ENTITY_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/security-source-type"


# --- entity references ------------------------------------------------------------------------


def patient_ref(patient_id: str, issuer: str) -> str:
    """``patient:<issuer>|<id>`` (both percent-encoded, so any text round-trips)."""
    return f"patient:{quote(issuer, safe='')}|{quote(patient_id, safe='')}"


def study_ref(uid: str) -> str:
    return f"study:{uid}"


def instance_ref(uid: str) -> str:
    return f"instance:{uid}"


def parse_patient(ref: str) -> tuple[str, str]:
    """(patient id, issuer) of a :func:`patient_ref`."""
    issuer, _, patient_id = ref.removeprefix("patient:").partition("|")
    return unquote(patient_id), unquote(issuer)


# --- records and the chain --------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFacts:
    """One audit record as stored (``recorded_at`` in UTC)."""

    seq: int
    recorded_at: datetime
    actor: str
    role: str | None
    client: str | None
    node: str
    action: str
    entities: tuple[str, ...]
    outcome: str
    detail: Mapping[str, Any] = field(default_factory=dict)


def utc_text(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ``; a naive value is taken as UTC (SQLite returns those)."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(facts: AuditFacts, prev_hash: str) -> bytes:
    """The bytes a record's hash covers: sorted-key compact JSON of every field and the
    previous record's hash. Guarantees: equal records give equal bytes on any database."""
    body = {"seq": facts.seq, "recorded_at": utc_text(facts.recorded_at),
            "actor": facts.actor, "role": facts.role, "client": facts.client,
            "node": facts.node, "action": facts.action, "entities": list(facts.entities),
            "outcome": facts.outcome, "detail": dict(facts.detail), "prev": prev_hash}
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def chain_hash(facts: AuditFacts, prev_hash: str) -> str:
    """SHA-256 (hex) of :func:`canonical`."""
    return hashlib.sha256(canonical(facts, prev_hash)).hexdigest()


# --- the event catalogue ----------------------------------------------------------------------


@dataclass(frozen=True)
class EventCode:
    """How an action is coded: DICOM Audit Event ID, optional Event Type Code, action C/R/U/D/E."""

    event: tuple[str, str]
    action: str
    subtype: tuple[str, str] | None = None


_LOGIN = EventCode(("110114", "User Authentication"), "E", ("110122", "Login"))
_LOGOUT = EventCode(("110114", "User Authentication"), "E", ("110123", "Logout"))
_QUERY = EventCode(("110112", "Query"), "E")
_RECORD_CREATE = EventCode(("110110", "Patient Record"), "C")
_RECORD_READ = EventCode(("110110", "Patient Record"), "R")
_RECORD_UPDATE = EventCode(("110110", "Patient Record"), "U")
_INSTANCES_CREATED = EventCode(("110103", "DICOM Instances Accessed"), "C")
_INSTANCES_REJECTED = EventCode(("110103", "DICOM Instances Accessed"), "D")
_INSTANCES_CORRECTED = EventCode(("110103", "DICOM Instances Accessed"), "U")
_TRANSFERRED = EventCode(("110104", "DICOM Instances Transferred"), "R")
_EXPORT = EventCode(("110106", "Export"), "R")
_SECURITY_ATTRIBUTES = EventCode(("110113", "Security Alert"), "E",
                                 ("110137", "User Security Attributes Changed"))
_RESTRICTED = EventCode(("110113", "Security Alert"), "E", ("110132", "Use of Restricted Function"))
_AUDIT_LOG = EventCode(("110101", "Audit Log Used"), "R")

CATALOGUE: dict[str, EventCode] = {
    "user.login": _LOGIN,
    "user.logout": _LOGOUT,
    "user.launch": _LOGIN,  # a session opened by a launch from the EMR (SMART)
    "launch.context": _RECORD_READ,
    "patient.identify": _QUERY,
    "patient.search": _QUERY,
    "session.open": _RECORD_CREATE,
    "session.read": _RECORD_READ,
    "session.complete": _RECORD_UPDATE,
    "session.verify": _RECORD_UPDATE,  # the patient of an unverified session confirmed
    "photo.store": _INSTANCES_CREATED,
    "measurement.store": _INSTANCES_CREATED,  # a wound measurement SR (ebiw measure --instance)
    "measurement.read": _RECORD_READ,  # a study's stored measurements, for the viewer
    "measurement.withdraw": _INSTANCES_REJECTED,  # a stored report withdrawn (IOCM rejection)
    "outline.read": _RECORD_READ,  # a wound outline proposed on a photo's pixels
    "correction.reject": _INSTANCES_REJECTED,  # IOCM rejection note (app/workflow/corrections)
    "correction.patient": _INSTANCES_CORRECTED,  # a study moved to the right patient
    "correction.notice": _INSTANCES_CORRECTED,  # the capturing clinician's notice of it
    "correction.preview": _RECORD_READ,  # the patients a correction concerns, to confirm it
    "retention.read": _RECORD_READ,  # the retention page: the patients of the studies due
    "retention.preview": _RECORD_READ,  # the hold a release concerns, to confirm it
    "retention.purge": _INSTANCES_REJECTED,  # a study's files deleted (app/workflow/retention)
    "retention.hold": _RECORD_UPDATE,  # a legal hold set on a study or a patient
    "retention.release": _RECORD_UPDATE,  # ... and released
    "patient.merge": _RECORD_UPDATE,  # a merged patient's studies moved (app/workflow/merge)
    "dicom.receive": _INSTANCES_CREATED,  # an object from another device (STOW-RS, C-STORE)
    "prior.read": _TRANSFERRED,  # the prior photo rendered for the camera overlay (issue 16)
    "wound.read": _RECORD_READ,  # a wound's healing trajectory page (issue 17)
    "wound.export": _EXPORT,  # ... and its CSV
    "batch.open": _RECORD_CREATE,  # batch import (app/workflow/batch/)
    "batch.read": _RECORD_READ,
    "batch.hold": _RECORD_CREATE,
    "batch.update": _RECORD_UPDATE,
    "batch.group": _QUERY,
    "batch.discard": _RECORD_UPDATE,
    "batch.purge": _RECORD_UPDATE,  # held photos of an idle batch discarded (ebiw batch purge)
    "batch.confirm": _INSTANCES_CREATED,
    "batch.import": _INSTANCES_CREATED,
    "delivery.sent": _TRANSFERRED,
    "delivery.dead": _TRANSFERRED,
    "notice.sent": _EXPORT,
    "notice.dead": _EXPORT,
    "reencode.stored": _INSTANCES_CREATED,  # a staged clip re-encoded and stored by the worker
    "reencode.dead": _INSTANCES_CREATED,  # ... or given up (it cannot be re-encoded)
    "export.deid": _EXPORT,
    "export.download": _EXPORT,  # a finished de-identified export fetched as a zip (admin page)
    "token.create": _SECURITY_ATTRIBUTES,
    "token.revoke": _SECURITY_ATTRIBUTES,
    "user.create": _SECURITY_ATTRIBUTES,
    "user.disable": _SECURITY_ATTRIBUTES,
    "user.enable": _SECURITY_ATTRIBUTES,
    "user.password": _SECURITY_ATTRIBUTES,
    "user.unlock": _SECURITY_ATTRIBUTES,
    "audit.read": _AUDIT_LOG,
    "audit.verify": _AUDIT_LOG,
}
"""Every action with a fixed name. Families named by endpoint: ``dicomweb.search_*`` (Query),
``dicomweb.retrieve_*`` (Instances Transferred, read), ``dicomweb.store_*`` (STOW-RS:
Instances Accessed, create), ``fhir.read_*`` (Patient Record, read),
``fhir.search_*`` (Query) and ``admin.*`` (Security Alert: Use of Restricted Function)."""


def event_code(action: str) -> EventCode:
    """The codes of an action (see :data:`CATALOGUE`); unknown actions raise KeyError."""
    if action in CATALOGUE:
        return CATALOGUE[action]
    family, _, name = action.partition(".")
    if family in ("dicomweb", "fhir") and name.startswith("search"):
        return _QUERY
    if family == "dicomweb" and name.startswith("retrieve"):
        return _TRANSFERRED
    if family == "dicomweb" and name.startswith("store"):
        return _INSTANCES_CREATED
    if family == "fhir" and name.startswith("read"):
        return _RECORD_READ
    if family == "admin":
        return _RESTRICTED
    raise KeyError(action)


def is_known_action(action: str) -> bool:
    """Whether :func:`event_code` can code ``action``."""
    try:
        event_code(action)
    except KeyError:
        return False
    return True


# --- FHIR R4 AuditEvent -----------------------------------------------------------------------


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def _entity(ref: str, systems: Mapping[str, str]) -> dict[str, Any]:
    """One entity: patients are Person/Patient by MRN and issuer; studies and instances
    System Object/Report by DICOM UID; the rest System Objects by their local name."""
    kind, _, value = ref.partition(":")
    if kind == "patient":
        patient_id, issuer = parse_patient(ref)
        return {"what": {"identifier": {"system": identifier_system(issuer, systems),
                                        "value": patient_id}},
                "type": _coding(ENTITY_TYPE_SYSTEM, "1", "Person"),
                "role": _coding(OBJECT_ROLE_SYSTEM, "1", "Patient")}
    if kind in ("study", "series", "instance"):
        label = {"study": ("110180", "Study Instance UID"), "series": (None, "Series Instance UID"),
                 "instance": (None, "SOP Instance UID")}[kind]
        id_type: dict[str, Any] = {"text": label[1]}
        if label[0]:
            id_type["coding"] = [_coding(DCM_SYSTEM, label[0], label[1])]
        return {"what": {"identifier": {"type": id_type, "system": DICOM_UID_SYSTEM,
                                        "value": f"urn:oid:{value}"}},
                "type": _coding(ENTITY_TYPE_SYSTEM, "2", "System Object"),
                "role": _coding(OBJECT_ROLE_SYSTEM, "3", "Report")}
    role = {"query": ("24", "Query"), "user": ("6", "User"), "delivery": ("20", "Job"),
            "token": ("13", "Security Resource")}.get(kind, ("4", "Domain Resource"))
    entity_type = ("1", "Person") if kind == "user" else ("2", "System Object")
    return {"what": {"display": ref}, "type": _coding(ENTITY_TYPE_SYSTEM, *entity_type),
            "role": _coding(OBJECT_ROLE_SYSTEM, *role), "name": value or kind}


def audit_event_json(facts: AuditFacts, *, systems: Mapping[str, str],
                     application: str = "ebiw-capture") -> dict[str, Any]:
    """The record as a FHIR R4 AuditEvent (JSON). ``systems`` maps Issuers of Patient ID to
    identifier systems (``EBIW_EMR_ISSUER_SYSTEMS``). Guarantees: ``id`` is the chain
    position, so a receiver can drop duplicates; ``source.observer`` is this node."""
    code = event_code(facts.action)
    requestor: dict[str, Any] = {
        "who": {"identifier": {"value": facts.actor}, "display": facts.actor},
        "name": facts.actor, "requestor": True}
    if facts.role:
        requestor["role"] = [{"text": facts.role}]
    if facts.client:
        requestor["network"] = {"address": facts.client, "type": "2"}
    agents = [requestor]
    destination = facts.detail.get("destination")
    if destination:
        agents.append({"type": {"coding": [_coding(DCM_SYSTEM, "110152", "Destination Role ID")]},
                       "who": {"display": str(destination)}, "requestor": False})
    description = f"{facts.action} ({facts.outcome})"
    reason = facts.detail.get("reason")
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(facts.seq),
        "type": _coding(DCM_SYSTEM, *code.event),
        **({"subtype": [_coding(DCM_SYSTEM, *code.subtype)]} if code.subtype else {}),
        "action": code.action,
        "recorded": utc_text(facts.recorded_at),
        "outcome": _FHIR_OUTCOME[facts.outcome],
        "outcomeDesc": f"{description}: {reason}" if reason else description,
        "agent": agents,
        "source": {"site": facts.node,
                   "observer": {"display": f"{application}@{facts.node}"},
                   "type": [_coding(SOURCE_TYPE_SYSTEM, "4", "Application Server")]},
    }
    entities = [_entity(ref, systems) for ref in facts.entities]
    if entities:
        event["entity"] = entities
    return event


def bundle_json(events: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``collection`` Bundle of AuditEvents, in chain order."""
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": event} for event in events]}


# --- RFC 5424 syslog --------------------------------------------------------------------------

SYSLOG_PRI = 10 * 8 + 5
"""Facility 10 (security/authorization), severity 5 (notice), as IHE ATNA asks."""


def syslog_message(payload: bytes, *, timestamp: datetime, hostname: str, app_name: str,
                   msgid: str = "AuditEvent") -> bytes:
    """One RFC 5424 message (no structured data, MSG = BOM + UTF-8 payload), framed by octet
    counting (RFC 5425 / RFC 6587 ``LEN SP MSG``) for TCP and TLS transports."""

    def token(text: str, limit: int) -> str:
        clean = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
        return clean or "-"

    header = (f"<{SYSLOG_PRI}>1 {utc_text(timestamp)} {token(hostname, 255)} "
              f"{token(app_name, 48)} - {token(msgid, 32)} - ").encode()
    message = header + b"\xef\xbb\xbf" + payload
    return str(len(message)).encode() + b" " + message
