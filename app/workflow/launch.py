"""Launch from the EMR (SMART on FHIR EHR launch): from ``iss`` + ``launch`` to a web session
that sees one patient only.

1. :func:`begin` — the EMR (``iss``) must be in ``EBIW_SMART_ISSUERS``; its SMART configuration
   is discovered; the answer is the authorization URL (``response_type=code``, ``client_id``,
   ``redirect_uri``, ``launch``, ``scope``, ``state``, ``aud=iss``, ``nonce``, PKCE ``S256``)
   and the :class:`PendingLaunch` the browser keeps until the EMR sends it back.
2. :func:`complete` — ``state`` must be the pending launch's; the code is exchanged with the
   PKCE verifier; the ID token is validated; the granted scope must let the app read the
   patient and the token response must name the patient; the user (``fhirUser``) must be a
   Practitioner or PractitionerRole; the Patient (and the Encounter and ImagingStudy of the
   launch context, when given) are read with the access token, which is then dropped; the
   patient's Patient ID and Issuer of Patient ID come from an identifier whose system maps to
   an issuer (``EBIW_EMR_ISSUER_SYSTEMS``, ``urn:oid:``); a web session limited to that patient
   is opened (:func:`app.workflow.accounts.launch_login`).

Every refusal is a :class:`LaunchError` with an HTTP status and a fixed, PHI-free message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from app.db.models import LaunchContext
from app.db.session import Database
from app.gateways.patients.fhir import encounter_record, patient_record
from app.gateways.smart import (
    SmartConfiguration,
    SmartGateway,
    SmartRefused,
    SmartUnavailable,
    fhir_reference,
)
from app.pipeline.fhir import DICOM_UID_SYSTEM, IDENTIFIER_TYPE_SYSTEM, issuer_for_system
from app.settings import Settings, SmartClient
from app.workflow import accounts
from app.workflow.accounts import AccountError, WebLogin

log = logging.getLogger(__name__)

TARGETS = ("viewer", "capture")
"""Where a launch ends: the patient's studies (or the study in context), or the capture app."""
PENDING_SECONDS = 600
"""How long the browser may take between the launch and the EMR's answer."""
USER_TYPES = ("Practitioner", "PractitionerRole")
"""The ``fhirUser`` resource types allowed to launch the app (clinicians)."""
_SCOPE = re.compile(r"^patient/(\*|Patient)\.([a-z*]+)$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class LaunchError(Exception):
    """A launch refused with an HTTP status, an error code and a message without PHI."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _again(what: str) -> str:
    """A refusal's message with what the user can do about it."""
    return f"{what}: open the app again from the patient's chart in the EMR"


@dataclass(frozen=True)
class PendingLaunch:
    """A launch between the redirect to the EMR and its answer (kept by the browser, signed)."""

    iss: str
    state: str
    nonce: str
    verifier: str
    target: str

    def to_json(self) -> dict[str, str]:
        """The fields as a JSON object (:meth:`from_json` reads it back)."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> PendingLaunch | None:
        """The pending launch in ``value``, or None when it is not one."""
        if not isinstance(value, dict) or set(value) != {"iss", "state", "nonce", "verifier",
                                                          "target"}:
            return None
        if not all(isinstance(v, str) for v in value.values()):
            return None
        return cls(**value)


@dataclass(frozen=True)
class Launched:
    """A completed launch: the new session (cookie value and login) and its context."""

    session_id: str
    login: WebLogin
    context: LaunchContext


def _client(settings: Settings, iss: str) -> SmartClient:
    """Our client at an allowed EMR; :class:`LaunchError` (400) for any other ``iss``."""
    client = settings.smart_clients.get(iss)
    if client is None:
        raise LaunchError(400, "unknown_issuer", "this EMR is not allowed to launch the app")
    return client


def _discover(gateway: SmartGateway, iss: str) -> SmartConfiguration:
    """The EMR's SMART configuration; :class:`LaunchError` (502) when it cannot be used."""
    try:
        return gateway.discover(iss)
    except (SmartRefused, SmartUnavailable) as exc:
        log.warning("SMART launch: discovery failed: %s", exc)
        raise LaunchError(502, "emr_unavailable",
                          "the EMR's authorization server cannot be used right now") from None


def _challenge(verifier: str) -> str:
    """The PKCE ``S256`` code challenge of a verifier (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def begin(settings: Settings, gateway: SmartGateway, *, iss: str, launch: str, target: str,
          redirect_uri: str) -> tuple[str, PendingLaunch]:
    """Start an EHR launch: (the EMR's authorization URL, the pending launch to keep).

    Guarantees: ``iss`` is an allowed EMR and ``target`` one of :data:`TARGETS`, else
    :class:`LaunchError` (400); ``state`` and ``nonce`` are random (256 bits) and the PKCE
    verifier 512 bits, never sent before the code exchange.
    """
    aud = iss.strip()
    iss = aud.rstrip("/")
    if not iss or not launch or len(launch) > 4096:
        raise LaunchError(400, "launch_invalid", "the launch needs iss and launch")
    if target not in TARGETS:
        raise LaunchError(400, "launch_invalid", "target must be viewer or capture")
    client = _client(settings, iss)
    config = _discover(gateway, iss)
    pending = PendingLaunch(iss=iss, state=secrets.token_urlsafe(32),
                            nonce=secrets.token_urlsafe(32), verifier=secrets.token_urlsafe(64),
                            target=target)
    query = urlencode({"response_type": "code", "client_id": client.client_id,
                       "redirect_uri": redirect_uri, "launch": launch, "scope": client.scope,
                       "state": pending.state, "aud": aud, "nonce": pending.nonce,
                       "code_challenge": _challenge(pending.verifier),
                       "code_challenge_method": "S256"})
    separator = "&" if "?" in config.authorization_endpoint else "?"
    return f"{config.authorization_endpoint}{separator}{query}", pending


def reads_patient(scope: str) -> bool:
    """Whether one granted scope lets the app read the launch patient's record
    (``patient/*.read``, ``patient/Patient.read``, SMART v2 ``patient/Patient.rs`` …)."""
    match = _SCOPE.match(scope)
    if match is None:
        return False
    permission = match.group(2)
    return permission in ("read", "*") or ("r" in permission and set(permission) <= set("cruds"))


def complete(db: Database, settings: Settings, gateway: SmartGateway, pending: PendingLaunch, *,
             state: str, code: str, error: str, redirect_uri: str) -> Launched:
    """Finish an EHR launch and open the session (see the module doc for every check).

    Raises :class:`LaunchError`: 400 for a state that is not this browser's pending launch's,
    403 when the EMR or the checks refuse, 502 when the EMR cannot be reached.
    """
    if not hmac.compare_digest(state.encode(), pending.state.encode()):
        raise LaunchError(400, "launch_state", _again("this launch cannot be verified"))
    if error or not code:
        raise LaunchError(403, "launch_denied", _again("the EMR did not authorize the launch"))
    client = _client(settings, pending.iss)
    config = _discover(gateway, pending.iss)
    try:
        token = gateway.exchange(config, client, code=code, redirect_uri=redirect_uri,
                                 verifier=pending.verifier)
    except SmartUnavailable as exc:
        log.warning("SMART launch: %s", exc)
        raise LaunchError(502, "emr_unavailable", _again("the EMR cannot be reached")) from None
    except SmartRefused as exc:
        log.warning("SMART launch: %s", exc)
        raise LaunchError(403, "launch_refused",
                          _again("the EMR refused to complete the launch")) from None
    patient = token.get("patient")
    scopes = str(token.get("scope") or "").split()
    if not any(reads_patient(s) for s in scopes) or not isinstance(patient, str) \
            or fhir_reference(f"Patient/{patient}") is None:
        raise LaunchError(403, "launch_scope", "the EMR did not give this app access to a "
                                               "patient's record")
    claims = _identity(gateway, config, client, token, pending)
    access = token["access_token"]
    context = _context(settings, gateway, pending, access, patient, token)
    try:
        session_id, login = accounts.launch_login(
            db, settings, context, issuer=str(claims["iss"]), subject=str(claims["sub"]),
            username=_username(claims, pending.iss), role=client.role)
    except AccountError as exc:
        raise LaunchError(403, "launch_account", str(exc)) from None
    return Launched(session_id, login, context)


def _identity(gateway: SmartGateway, config: SmartConfiguration, client: SmartClient,
              token: dict[str, Any], pending: PendingLaunch) -> dict[str, Any]:
    """The validated ID token claims of a clinician (``fhirUser`` a Practitioner[Role])."""
    id_token = token.get("id_token")
    try:
        if not isinstance(id_token, str):
            raise SmartRefused("the EMR gave no ID token")
        claims = gateway.id_claims(config, client.client_id, id_token, pending.nonce)
    except (SmartRefused, SmartUnavailable) as exc:
        log.warning("SMART launch: %s", exc)
        raise LaunchError(403, "launch_identity",
                          _again("the EMR did not identify the user")) from None
    if _user_reference(claims, pending.iss) is None:
        raise LaunchError(403, "launch_user", "only clinicians can open this app from the EMR")
    return claims


def _user_reference(claims: dict[str, Any], iss: str) -> tuple[str, str] | None:
    """(type, id) of the ``fhirUser`` claim (relative, or absolute under ``iss``) when it is a
    clinician's, else None."""
    value = claims.get("fhirUser")
    if isinstance(value, str) and value.startswith(f"{iss}/"):
        value = value.removeprefix(f"{iss}/")
    reference = fhir_reference(value)
    return reference if reference is not None and reference[0] in USER_TYPES else None


def _username(claims: dict[str, Any], iss: str) -> str:
    """``<preferred_username, else type-id of fhirUser>@<the EMR's host>`` (a valid username)."""
    name = claims.get("preferred_username")
    if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name)):
        kind, fhir_id = _user_reference(claims, iss) or ("user", "unknown")
        name = f"{kind.lower()}-{fhir_id}"
    host = re.sub(r"[^A-Za-z0-9.-]", "-", urlsplit(iss).hostname or "emr")
    return f"{name}@{host}"[:128]


def _context(settings: Settings, gateway: SmartGateway, pending: PendingLaunch, access: str,
             patient: str, token: dict[str, Any]) -> LaunchContext:
    """The launch context: the patient (read from the EMR), its encounter and study."""
    try:
        resource = gateway.read(pending.iss, "Patient", patient, access)
    except (SmartRefused, SmartUnavailable) as exc:
        log.warning("SMART launch: %s", exc)
        raise LaunchError(502 if isinstance(exc, SmartUnavailable) else 403, "launch_patient",
                          _again("the EMR did not let the app read the patient")) from None
    identifiers = sorted((i for i in resource.get("identifier") or [] if isinstance(i, dict)),
                         key=lambda i: not _is_mrn(i))
    record = None
    for identifier in identifiers:
        system, value = identifier.get("system"), identifier.get("value")
        if not isinstance(system, str):
            continue
        issuer = issuer_for_system(system, settings.issuer_systems)
        if issuer and isinstance(value, str) and len(issuer) <= 64 and 0 < len(value) <= 64:
            record = patient_record(resource, {system: issuer}, mrn=value)
            break
    if record is None:
        raise LaunchError(403, "launch_patient", "the EMR's patient has no identifier this app "
                                                 "can file photos under")
    encounter, department = _encounter(gateway, pending.iss, access, patient, token)
    return LaunchContext(fhir_base=pending.iss, fhir_patient=patient, patient_id=record.mrn,
                         issuer=record.issuer, family=record.family[:128],
                         given=record.given[:128], birth_date=record.birth_date,
                         sex=record.sex, encounter=encounter, department=department,
                         study_uid=_study_uid(gateway, pending.iss, access, patient, token),
                         target=pending.target)


def _is_mrn(identifier: dict[str, Any]) -> bool:
    """Whether an identifier is typed MR (v2-0203 medical record number)."""
    codings = (identifier.get("type") or {}).get("coding") or []
    return any(isinstance(c, dict) and c.get("system") == IDENTIFIER_TYPE_SYSTEM
               and c.get("code") == "MR" for c in codings)


def _encounter(gateway: SmartGateway, iss: str, access: str, patient: str,
               token: dict[str, Any]) -> tuple[str | None, str | None]:
    """(Admission ID, department) of the launch's encounter of this patient, or (None, None)
    when the launch names none or the EMR does not let it be read."""
    encounter = token.get("encounter")
    if not isinstance(encounter, str):
        return None, None
    try:
        resource = gateway.read(iss, "Encounter", encounter, access)
    except (SmartRefused, SmartUnavailable) as exc:
        log.warning("SMART launch: encounter left out: %s", exc)
        return None, None
    if (resource.get("subject") or {}).get("reference") != f"Patient/{patient}":
        return None, None
    record = encounter_record(resource)
    return record.identifier[:64], (record.department or "")[:64] or None


def _study_uid(gateway: SmartGateway, iss: str, access: str, patient: str,
               token: dict[str, Any]) -> str | None:
    """The Study Instance UID of an ImagingStudy in the launch's ``fhirContext`` (a reference,
    read to check it is this patient's, or an identifier), or None."""
    for item in token.get("fhirContext") or []:
        entry = {"reference": item} if isinstance(item, str) else item
        if not isinstance(entry, dict):
            continue
        identifiers = [entry.get("identifier")]
        reference = fhir_reference(entry.get("reference"))
        if reference is not None and reference[0] == "ImagingStudy":
            try:
                resource = gateway.read(iss, "ImagingStudy", reference[1], access)
            except (SmartRefused, SmartUnavailable) as exc:
                log.warning("SMART launch: study context left out: %s", exc)
                continue
            if (resource.get("subject") or {}).get("reference") != f"Patient/{patient}":
                continue
            identifiers = resource.get("identifier") or []
        elif entry.get("type") != "ImagingStudy":
            continue
        for identifier in identifiers:
            if isinstance(identifier, dict) and identifier.get("system") == DICOM_UID_SYSTEM:
                uid = str(identifier.get("value", "")).removeprefix("urn:oid:")
                if len(uid) <= 64 and _UID.match(uid):
                    return uid
    return None
