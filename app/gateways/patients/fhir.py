"""Patients from an EMR's FHIR R4 API, and FHIR Bundles for the local index's import.

Lookup: ``Patient?identifier=<system>|<mrn>`` (one system per Issuer of Patient ID, from
``EBIW_EMR_ISSUER_SYSTEMS``), then for each patient
``Encounter?patient=Patient/<id>&status=in-progress,arrived,planned``. Both searches are sent as
``POST [type]/_search`` with a form body (FHIR R4 §3.1.1 search), so no patient identifier ever
appears in a URL, and so in no access log.

Authentication, when a token URL is configured: OAuth 2.0 client credentials (RFC 6749 §4.4)
with a client secret (HTTP Basic), or SMART Backend Services with a private key (a signed JWT
client assertion, RFC 7523; RS384 or ES384). The token is reused until shortly before it expires
and fetched again once when the EMR answers 401.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import requests

from app.gateways.oauth import ClientCredentials, TokenError
from app.gateways.patients import (
    OPEN_ENCOUNTER_STATUSES,
    DirectoryRejected,
    DirectoryUnavailable,
    EncounterRecord,
    ImportFormatError,
    PatientRecord,
    sort_encounters,
)
from app.pipeline.fhir import identifier_system, issuer_for_system

_GENDERS = {"female": "F", "male": "M", "other": "O"}
_PATIENT_REFERENCE = re.compile(r"(?:^|/)Patient/([A-Za-z0-9.-]{1,64})(?:/_history/[^/]*)?$")
MAX_LINK_HOPS = 5
"""Patient ``replaced-by`` links followed at most in one lookup (a merge of a merge...)."""


class TokenSource(ClientCredentials):
    """Bearer tokens for the patient directory (see :class:`~app.gateways.oauth.ClientCredentials`
    for the arguments), whose failures are the directory's: :class:`DirectoryUnavailable` when
    the token endpoint cannot be reached in time, :class:`DirectoryRejected` when it refuses the
    client or answers without a token."""

    def authorization(self, *, renew: bool = False) -> str:
        """An ``Authorization`` header value; a cached token unless ``renew`` or expiring."""
        try:
            return super().authorization(renew=renew)
        except TokenError as exc:
            raise self._directory_error(exc) from None

    def _directory_error(self, error: TokenError) -> DirectoryUnavailable | DirectoryRejected:
        what = "the EMR's token endpoint"
        if error.timed_out:
            return DirectoryUnavailable(f"{what} did not answer within {self.timeout:g} s")
        if error.status is None:
            return DirectoryUnavailable(f"{what} cannot be reached")
        if error.status != 200:
            return DirectoryRejected(f"{what} refused our client credentials "
                                     f"(HTTP {error.status})")
        return DirectoryRejected(f"{what} gave no access_token")


class FhirDirectory:
    """The :class:`~app.gateways.patients.PatientDirectory` of a FHIR R4 server."""

    name = "fhir"

    def __init__(self, base_url: str, *, issuer_systems: Mapping[str, str], default_issuer: str,
                 timeout: float, token: TokenSource | None = None,
                 http: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.issuer_systems = dict(issuer_systems)
        self.default_issuer = default_issuer
        self.timeout = timeout
        self.token = token
        self.http = http or requests.Session()

    def find(self, mrn: str, issuer: str | None) -> list[PatientRecord]:
        """One Patient search, then one Encounter search per patient found; inactive patients
        are left out. The issuer's identifier system is the EMR notifier's
        (:func:`~app.pipeline.fhir.identifier_system`); with no issuer, the systems of the
        default issuer and of every issuer in ``EBIW_EMR_ISSUER_SYSTEMS`` are searched.

        A Patient whose ``link`` says ``replaced-by`` (merged in the EMR) is followed, at most
        :data:`MAX_LINK_HOPS` links, to the Patient that replaced it: that one is returned,
        with its own MRN (in the searched system if it has one there, else in any known
        system) and the replaced patients' (issuer, MRN) in ``replaces``. A loop, a dangling
        link or a longer chain raises :class:`DirectoryRejected`.

        Guarantees: every record's MRN equals ``mrn`` in a searched system (or is the MRN of the
        patient that replaced it), its issuer is that system's, and its encounters are open and
        reference it — checked here, since a server may ignore search parameters it does not
        support and return everything.
        """
        known = [issuer] if issuer is not None else [self.default_issuer, *self.issuer_systems]
        systems = {name: identifier_system(name, self.issuer_systems) for name in known}
        token = ",".join(f"{system}|{_escape(mrn)}" for system in systems.values())
        issuers = {system: name for name, system in systems.items()}
        found = []
        for resource in self._search("Patient", {"identifier": token}):
            record = patient_record(resource, issuers, mrn=mrn)
            if record is None:
                continue
            resource, replaced = self._replacement(resource, record, issuers)
            if resource.get("active") is False:
                continue
            if replaced:
                record = self._survivor_record(resource, issuers)
                if record is None:
                    continue
                record = replace(record, replaces=replaced)
            subject = f"Patient/{resource.get('id')}"
            encounters = self._search("Encounter", {
                "patient": subject, "status": ",".join(OPEN_ENCOUNTER_STATUSES)})
            found.append(replace(record, encounters=sort_encounters(
                [encounter_record(e) for e in encounters
                 if e.get("status") in OPEN_ENCOUNTER_STATUSES
                 and (e.get("subject") or {}).get("reference") == subject])))
        return found

    def _replacement(self, resource: dict[str, Any], record: PatientRecord,
                     issuers: Mapping[str, str]
                     ) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
        """The Patient at the end of ``resource``'s ``replaced-by`` links (``resource`` itself
        and no keys when it has none) and the keys of the patients replaced on the way,
        ``record``'s first."""
        replaced = [record.key]
        seen = {str(resource.get("id"))}
        current = resource
        while (target := _replaced_by(current)) is not None:
            if target in seen:
                raise DirectoryRejected("the EMR's Patient replaced-by links form a loop")
            if len(seen) > MAX_LINK_HOPS:
                raise DirectoryRejected("the EMR's Patient replaced-by links go on for more "
                                        f"than {MAX_LINK_HOPS} patients")
            seen.add(target)
            matches = [r for r in self._search("Patient", {"_id": target})
                       if r.get("id") == target]
            if len(matches) != 1:
                raise DirectoryRejected("a Patient replaced-by link leads to no Patient")
            current = matches[0]
            passed = self._survivor_record(current, issuers) \
                if _replaced_by(current) is not None else None
            if passed is not None and passed.key not in replaced:
                replaced.append(passed.key)
        return current, tuple(replaced) if current is not resource else ()

    def _survivor_record(self, resource: Mapping[str, Any], issuers: Mapping[str, str]
                         ) -> PatientRecord | None:
        """The record of a Patient reached by a link: its MRN in a searched system, else in
        the system of any issuer we know."""
        every = {identifier_system(name, self.issuer_systems): name
                 for name in (self.default_issuer, *self.issuer_systems)}
        return patient_record(resource, issuers) or patient_record(resource, every)

    def _search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """The resources of that type in the first searchset page (``POST _search``)."""
        url = f"{self.base_url}/{resource_type}/_search"
        response = self._post(url, params)
        if response.status_code == 401 and self.token is not None:
            response = self._post(url, params, renew=True)
        status = response.status_code
        if status == 429 or status >= 500:
            raise DirectoryUnavailable(f"the EMR (FHIR) answered HTTP {status}")
        if status in (401, 403):
            raise DirectoryRejected(f"the EMR (FHIR) refused our credentials (HTTP {status})")
        if status != 200:
            raise DirectoryRejected(f"the EMR (FHIR) rejected the {resource_type} search "
                                    f"(HTTP {status})")
        try:
            bundle = response.json()
            entries = bundle.get("entry", []) if bundle.get("resourceType") == "Bundle" else None
        except (ValueError, AttributeError):
            entries = None
        if not isinstance(entries, list):
            raise DirectoryRejected("the EMR (FHIR) did not answer with a Bundle")
        return [e["resource"] for e in entries if isinstance(e, dict)
                and isinstance(e.get("resource"), dict)
                and (e.get("search") or {}).get("mode", "match") == "match"
                and e["resource"].get("resourceType") == resource_type]

    def _post(self, url: str, form: dict[str, str], *, renew: bool = False) -> requests.Response:
        headers = {"Accept": "application/fhir+json"}
        if self.token is not None:
            headers["Authorization"] = self.token.authorization(renew=renew)
        return _send(self.http, "POST", url, "the EMR (FHIR)", self.timeout, data=form,
                     headers=headers)


def _send(http: requests.Session, method: str, url: str, what: str, timeout: float,
          **kwargs: Any) -> requests.Response:
    """One HTTP call; network failures become :class:`DirectoryUnavailable` without PHI
    (the exception's text would hold the URL, and so the MRN)."""
    try:
        return http.request(method, url, timeout=(timeout, timeout), allow_redirects=False,
                            **kwargs)
    except requests.Timeout:
        raise DirectoryUnavailable(f"{what} did not answer within {timeout:g} s") from None
    except requests.RequestException:
        raise DirectoryUnavailable(f"{what} cannot be reached") from None


def _replaced_by(resource: Mapping[str, Any]) -> str | None:
    """The logical id of the Patient that replaced ``resource`` (``link`` of type
    ``replaced-by``, a relative or absolute ``Patient/<id>`` reference), else None."""
    for link in resource.get("link") or []:
        if not isinstance(link, dict) or link.get("type") != "replaced-by":
            continue
        found = _PATIENT_REFERENCE.search(str((link.get("other") or {}).get("reference") or ""))
        if found:
            return found.group(1)
    return None


def _escape(value: str) -> str:
    """Escape a FHIR search token value (``\\``, ``,``, ``|``, ``$``)."""
    for char in ("\\", ",", "|", "$"):
        value = value.replace(char, "\\" + char)
    return value


# --- resources -> records ------------------------------------------------------------------------

def patient_record(resource: Mapping[str, Any], issuers: Mapping[str, str], *,
                   mrn: str | None = None) -> PatientRecord | None:
    """A record from a Patient resource, or None when it has no identifier in a known system
    (``issuers``: system → Issuer of Patient ID) with value ``mrn`` (any value when None).

    Names: the ``official`` name, else the first; given names joined by spaces. A partial
    birth date (year only) gives None.
    """
    for identifier in resource.get("identifier") or []:
        system, value = identifier.get("system"), identifier.get("value")
        if system in issuers and isinstance(value, str) and (mrn is None or value == mrn):
            return _with_demographics(resource, value, issuers[system])
    return None


def _with_demographics(resource: Mapping[str, Any], mrn: str, issuer: str) -> PatientRecord:
    names = [n for n in resource.get("name") or [] if isinstance(n, dict)]
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    return PatientRecord(mrn=mrn, issuer=issuer, family=str(name.get("family") or ""),
                         given=" ".join(str(g) for g in name.get("given") or []),
                         birth_date=_birth_date(resource.get("birthDate")),
                         sex=_GENDERS.get(str(resource.get("gender"))), sources=("fhir",))


def encounter_record(resource: Mapping[str, Any]) -> EncounterRecord:
    """A record from an Encounter: its first identifier's value (else its id) as the Admission
    ID, its status, ``serviceProvider.display`` as the department, ``period.start``."""
    identifiers = [i.get("value") for i in resource.get("identifier") or []
                   if isinstance(i, dict) and i.get("value")]
    provider = resource.get("serviceProvider") or {}
    return EncounterRecord(identifier=str(identifiers[0] if identifiers else resource.get("id")),
                           status=resource.get("status"),
                           department=provider.get("display") if isinstance(provider, dict)
                           else None,
                           started=_instant((resource.get("period") or {}).get("start")))


def _birth_date(value: Any) -> date | None:
    try:
        return date.fromisoformat(value) if isinstance(value, str) and len(value) == 10 else None
    except ValueError:
        return None


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_bundle(bundle: Any, *, issuer_systems: Mapping[str, str],
                 default_issuer: str) -> list[PatientRecord]:
    """The patients of a FHIR R4 Bundle (any type) with the Encounters that reference them.

    The MRN is the identifier in a system of ``issuer_systems`` (its issuer), else the one
    typed ``MR`` (v2-0203), else the only identifier; those two take the issuer their system
    names (``urn:oid:<issuer>``, see :func:`~app.pipeline.fhir.issuer_for_system`), else
    ``default_issuer``.
    Encounters reference their patient as ``Patient/<id>`` or by the entry's ``fullUrl``.
    Raises :class:`ImportFormatError` naming the entry at fault.
    """
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ImportFormatError("the JSON is not a FHIR Bundle")
    issuers = {system: issuer for issuer, system in issuer_systems.items()}
    records: dict[tuple[str, str], PatientRecord] = {}  # in Bundle order
    by_reference: dict[str, tuple[str, str]] = {}
    encounters: list[tuple[int, Mapping[str, Any]]] = []
    for number, entry in enumerate(bundle.get("entry") or [], start=1):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            raise ImportFormatError(f"entry {number} has no resource")
        if resource.get("resourceType") == "Encounter":
            encounters.append((number, resource))
        if resource.get("resourceType") != "Patient":
            continue
        record = patient_record(resource, issuers) or _fallback(resource, issuer_systems,
                                                                default_issuer)
        if record is None:
            raise ImportFormatError(f"entry {number}: the Patient has no usable MRN identifier")
        if record.key in records:
            raise ImportFormatError(f"entry {number}: a second Patient with the same MRN")
        records[record.key] = record
        for ref in (f"Patient/{resource['id']}" if resource.get("id") else None,
                    entry.get("fullUrl")):
            if ref:
                by_reference[ref] = record.key
    attached: dict[tuple[str, str], list[EncounterRecord]] = {}
    for number, resource in encounters:
        subject = (resource.get("subject") or {}).get("reference")
        key = by_reference.get(subject) if isinstance(subject, str) else None
        if key is None:
            raise ImportFormatError(f"entry {number}: the Encounter's subject is not a Patient "
                                    "of this Bundle")
        attached.setdefault(key, []).append(encounter_record(resource))
    return [replace(r, sources=("local",), encounters=tuple(attached.get(key, [])))
            for key, r in records.items()]


def _fallback(resource: Mapping[str, Any], issuer_systems: Mapping[str, str],
              default_issuer: str) -> PatientRecord | None:
    identifiers = [i for i in resource.get("identifier") or []
                   if isinstance(i, dict) and isinstance(i.get("value"), str)]
    typed = [i for i in identifiers
             if any(c.get("code") == "MR" for c in (i.get("type") or {}).get("coding") or [])]
    chosen = typed[0] if typed else identifiers[0] if len(identifiers) == 1 else None
    if chosen is None:
        return None
    issuer = issuer_for_system(str(chosen.get("system") or ""), issuer_systems)
    return _with_demographics(resource, chosen["value"], issuer or default_issuer)
