"""The remote FHIR notifier against the Medplum FHIR peer on loopback (through a fault proxy)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from app.gateways.emr import build_notifiers
from app.gateways.emr.remote import RemoteFhirNotifier
from app.gateways.errors import PermanentError, TransientError
from app.settings import Settings
from tests.conftest import FhirPeer, services
from tests.emr.conftest import (
    ENCOUNTER_SYSTEM,
    FaultProxy,
    add_photo,
    fhir_validate,
    make_study,
    notify,
)

CREATE = "POST /fhir/ImagingStudy"


def _notifier(app: Flask, base: str, **settings: Any) -> RemoteFhirNotifier:
    """The ``fhir`` notifier as build_notifiers makes it from settings."""
    configured = replace(services(app).settings, emr_notifiers="fhir",
                         emr_fhir_url=f"{base}/fhir", emr_timeout_seconds=1,
                         emr_encounter_system=ENCOUNTER_SYSTEM, **settings).checked()
    [notifier] = build_notifiers(configured)
    assert isinstance(notifier, RemoteFhirNotifier)
    return notifier


def _history(peer: FhirPeer, study: dict[str, Any]) -> list[dict[str, Any]]:
    """The versions of a resource in the peer, newest first (the peer's own order flips from
    one call to the next: its MemoryRepository reverses its history list in place)."""
    entries = requests.get(f"{peer.url}/ImagingStudy/{study['id']}/_history",
                           timeout=5).json()["entry"]
    return sorted(entries, key=lambda e: e["resource"]["meta"]["lastUpdated"], reverse=True)


def test_create_retry_and_update(app: Flask, fhir_peer: FhirPeer, proxy: FaultProxy,
                                 tmp_path: Path) -> None:
    notifier = _notifier(app, proxy.url)
    session_id, uid = make_study(app)
    notify(app, notifier, uid)
    notify(app, notifier, uid)  # a retry (worker crashed before marking it done)
    [study] = fhir_peer.studies(uid)
    assert study["subject"] == {"reference": "Patient/p1"}
    assert study["encounter"] == {"reference": "Encounter/e1"}
    assert study["endpoint"] == [{"reference": "#dicomweb"}, {"reference": "#viewer"}]
    assert study["contained"][0]["address"] == "http://127.0.0.1:8000/dicomweb"
    assert (study["contained"][1]["connectionType"]["code"], study["contained"][1]["address"]) \
        == ("ihe-iid", f"http://127.0.0.1:8000/studies/{uid}")
    creates = fhir_peer.log("POST", "/fhir/ImagingStudy")
    assert [(e["status"], e["ifNoneExist"]) for e in creates] == [
        (201, f"identifier=urn:dicom:uid|urn:oid:{uid}"),
        (200, f"identifier=urn:dicom:uid|urn:oid:{uid}")]
    assert fhir_peer.log("PUT") == []  # nothing changed: no new version
    # No identifier of the patient ever went into a URL.
    assert all("MRN" not in e["query"] and "ENC" not in e["query"] for e in fhir_peer.log())

    # A photo is added: one update, conditional on the version we read.
    add_photo(app, session_id, 1)
    notify(app, notifier, uid)
    notify(app, notifier, uid)
    [updated] = fhir_peer.studies(uid)
    assert updated["id"] == study["id"] and updated["numberOfInstances"] == 2
    puts = [s for s in proxy.seen if s["key"].startswith("PUT ")]
    assert len(puts) == 1
    assert puts[0]["headers"]["If-Match"] == f'W/"{study["meta"]["versionId"]}"'
    assert [e["resource"]["numberOfInstances"] for e in _history(fhir_peer, study)] == [2, 1]

    # Another photo, and someone edits the study in the EMR just before our update: the
    # If-Match fails (412, retry later); the retry keeps their edit.
    add_photo(app, session_id, 0)
    proxy.plan[f"PUT /fhir/ImagingStudy/{study['id']}"] = ["race"]
    with pytest.raises(TransientError, match="answered 412 while updating"):
        notify(app, notifier, uid)
    notify(app, notifier, uid)
    assert [(e["resource"]["numberOfInstances"], e["resource"].get("description"))
            for e in _history(fhir_peer, study)] == [
        (3, "edited in the EMR"), (2, "edited in the EMR"), (2, None), (1, None)]
    assert len(fhir_peer.studies(uid)) == 1

    sent = [s["body"] for s in proxy.seen if s["key"] in (CREATE, puts[0]["key"])]
    assert len(sent) == 9  # each of the 6 notifications POSTs; 3 of them then PUT
    reports = fhir_validate(tmp_path, sent)
    assert [r["errors"] for r in reports] == [[]] * len(sent), reports


def test_failures_then_recovery_leave_exactly_one_study(app: Flask, fhir_peer: FhirPeer,
                                                        proxy: FaultProxy) -> None:
    notifier = _notifier(app, proxy.url)
    _, uid = make_study(app, encounter=None)
    proxy.plan[CREATE] = ["503", "late", "502"]
    proxy.plan["POST /fhir/Patient/_search"] = ["500"]
    outcomes = []
    for _ in range(5):
        try:
            notify(app, notifier, uid)
            outcomes.append("ok")
        except TransientError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == "EMR FHIR server answered 500 while searching Patient (issues: invalid)"
    assert outcomes[1].startswith("EMR FHIR server answered 503 while creating the ImagingStudy")
    assert outcomes[2] == "EMR FHIR server unreachable while creating the ImagingStudy " \
                          "(ReadTimeout)"
    assert outcomes[3].startswith("EMR FHIR server answered 502")
    assert outcomes[4] == "ok"
    assert all("MRN0001" not in o and "ALICE" not in o for o in outcomes)
    [study] = fhir_peer.studies(uid)
    assert "encounter" not in study
    # The "late" create reached the server (201, answer lost); the next one found it (200).
    assert [e["status"] for e in fhir_peer.log("POST", "/fhir/ImagingStudy")] == [201, 200]


def test_unreachable_server_is_transient(app: Flask) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    _, uid = make_study(app)
    with pytest.raises(TransientError, match=r"unreachable .*\(ConnectionError\)"):
        notify(app, _notifier(app, f"http://127.0.0.1:{port}"), uid)


@pytest.mark.parametrize(("status", "error"), [
    ("429", TransientError), ("408", TransientError), ("400", PermanentError),
    ("403", PermanentError), ("404", PermanentError), ("422", PermanentError)])
def test_status_codes_map_to_retry_or_dead_letter(app: Flask, proxy: FaultProxy, status: str,
                                                  error: type[Exception]) -> None:
    _, uid = make_study(app)
    proxy.plan[CREATE] = [status]
    with pytest.raises(error) as caught:
        notify(app, _notifier(app, proxy.url), uid)
    message = str(caught.value)
    assert f"answered {status} while creating the ImagingStudy (issues: invalid)" in message
    assert "MRN0001" not in message and "ALICE" not in message  # diagnostics never repeated


def test_unknown_patient_is_permanent(app: Flask, fhir_peer: FhirPeer) -> None:
    _, uid = make_study(app, mrn="MRN9999")
    with pytest.raises(PermanentError, match="0 Patient resources") as caught:
        notify(app, _notifier(app, fhir_peer.root), uid)
    assert "MRN9999" not in str(caught.value)
    assert fhir_peer.studies(uid) == []


def test_issuer_map_and_oauth_token_cache(app: Flask, fhir_peer: FhirPeer,
                                          proxy: FaultProxy) -> None:
    proxy.require_token = True
    notifier = _notifier(app, proxy.url, emr_token_url=f"{proxy.url}/token",
                         emr_client_id="ebiw", emr_client_secret="s3cret",
                         emr_issuer_systems=json.dumps({"HOSP-A": "urn:oid:1.2.3.4.5.6"}))
    studies = [make_study(app, issuer="HOSP-A")[1] for _ in range(2)]
    for uid in studies:
        notify(app, notifier, uid)
    assert proxy.token_requests == 1  # cached across requests and notifications
    assert all(s["headers"]["Authorization"] == "Bearer tok-1" for s in proxy.seen)
    proxy.valid_tokens.clear()  # the EMR revoked it before it expired
    notify(app, notifier, studies[0])
    assert proxy.token_requests == 2
    assert all(len(fhir_peer.studies(uid)) == 1 for uid in studies)


def test_settings_refuse_incomplete_emr_configuration() -> None:
    from app.settings import SettingsError

    base = Settings(env="test", secret_key="k" * 40)
    for bad in ({"emr_notifiers": "local,xds"}, {"emr_notifiers": "fhir"},
                {"emr_token_url": "https://idp/token"}, {"emr_notifiers": "hl7v2"},
                {"emr_notifiers": "hl7v2", "emr_mllp_address": "emr:port"},
                {"emr_issuer_systems": "[1]"}, {"emr_issuer_systems": "{"},
                {"emr_timeout_seconds": 0}):
        with pytest.raises(SettingsError, match="EBIW_EMR_"):
            replace(base, **bad).checked()
