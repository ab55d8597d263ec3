"""The FHIR patient directory against the FHIR R4 peer; EMR down, EMR slow; OAuth2 tokens."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.gateways.patients import Directories, DirectoryRejected, DirectoryUnavailable
from app.gateways.patients.fhir import FhirDirectory, TokenSource
from tests.conftest import FhirPeer, StubHandler, serving
from tests.patients.conftest import PATIENT_SYSTEM

SYSTEMS = {"HOSP-A": PATIENT_SYSTEM}


def directory_at(url: str, *, timeout: float, **kwargs: Any) -> FhirDirectory:
    """The FHIR directory at ``url`` with HOSP-A's MRN system; default issuer LOCAL."""
    return FhirDirectory(url, issuer_systems=SYSTEMS, default_issuer="LOCAL", timeout=timeout,
                         **kwargs)


def recording_session(sent: list[tuple[str, str, str]]) -> requests.Session:
    """A requests session that records (method, URL, body) of every request it sends."""
    http = requests.Session()
    http.hooks["response"].append(lambda r, *_a, **_k: sent.append(
        (r.request.method, r.request.url, unquote(r.request.body or ""))))
    return http


def test_patient_then_open_encounters(fhir_peer: FhirPeer) -> None:
    sent: list[tuple[str, str, str]] = []
    directory = directory_at(fhir_peer.url, timeout=5,
                              http=recording_session(sent))
    before = len(fhir_peer.log())
    [alice] = directory.find("MRN0001", "HOSP-A")
    assert (alice.mrn, alice.issuer, alice.family, alice.given, alice.sex) == (
        "MRN0001", "HOSP-A", "TEST", "ALICE", "F")
    assert str(alice.birth_date) == "1970-01-01" and alice.sources == ("fhir",)
    [encounter] = alice.encounters
    assert (encounter.identifier, encounter.status) == ("ENC-42", "in-progress")
    assert encounter.started == datetime(2024, 5, 1, 6, 0, tzinfo=UTC)

    # What the EMR received: Patient?identifier=system|value, then Encounter?patient=&status=,
    # both as POST _search with a form body, so no MRN appears in a URL or access log.
    log = fhir_peer.log()[before:]
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("POST", "/fhir/Patient/_search", 200), ("POST", "/fhir/Encounter/_search", 200)]
    assert all(e["query"] == "" and e["contentType"].startswith(
        "application/x-www-form-urlencoded") for e in log)
    assert [(m, u.removeprefix(fhir_peer.url)) for m, u, _ in sent] == [
        ("POST", "/Patient/_search"), ("POST", "/Encounter/_search")]
    assert parse_qs(sent[0][2]) == {"identifier": [f"{PATIENT_SYSTEM}|MRN0001"]}
    assert parse_qs(sent[1][2]) == {"patient": ["Patient/p1"],
                                    "status": ["in-progress,arrived,planned"]}


def test_other_patients_and_issuers(fhir_peer: FhirPeer) -> None:
    directory = directory_at(fhir_peer.url, timeout=5)
    # No issuer: every configured system. The peer ignores the parameters of POST _search
    # and answers every Patient and Encounter: the directory's own checks keep Bob's record
    # free of Alice's identity and encounter.
    [bob] = directory.find("MRN0002", None)
    assert (bob.given, bob.issuer, bob.sex, bob.encounters) == ("BOB", "HOSP-A", "M", ())
    before = len(fhir_peer.log())
    assert directory.find("MRN0003", "HOSP-A") == []
    assert [e["path"] for e in fhir_peer.log()[before:]] == ["/fhir/Patient/_search"]
    assert directory.find("MRN0001", "HOSP-Z") == []  # MRN0001 is HOSP-A's, not HOSP-Z's
    # Unmapped issuers get the EMR notifier's systems: an OID issuer is urn:oid:<issuer>.
    unmapped = FhirDirectory(fhir_peer.url, issuer_systems={}, default_issuer="LOCAL",
                             timeout=5)
    [alice] = unmapped.find("MRN0001", "1.2.3.4.5.6")
    assert (alice.given, alice.issuer, len(alice.encounters)) == ("ALICE", "1.2.3.4.5.6", 1)
    assert unmapped.find("MRN0001", None) == []  # LOCAL's system is not the EMR's


def test_emr_down_is_a_clear_quick_error(closed_port: int) -> None:
    directory = FhirDirectory(f"http://127.0.0.1:{closed_port}/fhir", issuer_systems=SYSTEMS,
                              default_issuer="LOCAL", timeout=2)
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailable) as caught:
        directory.find("MRN0001", "HOSP-A")
    assert time.monotonic() - started < 1.5
    assert str(caught.value) == "the EMR (FHIR) cannot be reached"


def test_emr_timeout_is_a_clear_quick_error(slow_server: str) -> None:
    directory = directory_at(slow_server, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailable) as caught:
        directory.find("MRN0001", "HOSP-A")
    assert time.monotonic() - started < 2
    assert str(caught.value) == "the EMR (FHIR) did not answer within 0.5 s"


def test_a_down_directory_does_not_hide_the_others(fhir_peer: FhirPeer,
                                                   closed_port: int) -> None:
    down = FhirDirectory(f"http://127.0.0.1:{closed_port}/fhir", issuer_systems=SYSTEMS,
                         default_issuer="LOCAL", timeout=1)
    down.name = "fhir-backup"
    up = directory_at(fhir_peer.url, timeout=5)
    lookup = Directories([down, up]).find("MRN0001", "HOSP-A")
    assert [p.given for p in lookup.patients] == ["ALICE"]
    assert lookup.unavailable == {"fhir-backup": "the EMR (FHIR) cannot be reached"}


# --- OAuth2: client credentials with a secret, SMART Backend Services with a key ---------------


class _AuthServer(StubHandler):
    """``/token`` issues tok-1, tok-2, …; ``/fhir/Patient/_search`` refuses tok-1 (revoked)."""

    tokens: list[dict[str, Any]]
    public_key: Any = None

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        if self.path == "/token":
            record = {"form": form, "authorization": self.headers.get("Authorization")}
            if "client_assertion" in form:
                record["claims"] = jwt.decode(form["client_assertion"][0], self.public_key,
                                              algorithms=["ES384"],
                                              audience=self._url("/token"))
                record["header"] = jwt.get_unverified_header(form["client_assertion"][0])
            self.tokens.append(record)
            self.send_json({"access_token": f"tok-{len(self.tokens)}", "expires_in": 3600})
        elif not self.path.startswith("/fhir/"):
            self.send_json({}, 404)
        elif self.headers.get("Authorization") == "Bearer tok-1" and len(self.tokens) < 2:
            self.send_json({}, 401)
        else:
            self.send_json({"resourceType": "Bundle", "type": "searchset", "entry": []})

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture
def auth_server() -> Iterator[tuple[str, type[_AuthServer]]]:
    handler = type("Handler", (_AuthServer,), {"tokens": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    with serving(server):
        yield f"http://127.0.0.1:{server.server_address[1]}", handler


def test_client_credentials_token_is_reused_and_renewed_on_401(fhir_peer: FhirPeer,
                                                               auth_server: Any) -> None:
    base, handler = auth_server
    token = TokenSource(f"{base}/token", "ebiw", client_secret="s3cret", scope="system/*.read",
                        timeout=5)
    # Against the FHIR peer: one token for two lookups.
    directory = directory_at(fhir_peer.url, timeout=5, token=token)
    assert directory.find("MRN0001", "HOSP-A") and directory.find("MRN0002", "HOSP-A")
    assert len(handler.tokens) == 1
    first = handler.tokens[0]
    assert first["form"] == {"grant_type": ["client_credentials"], "scope": ["system/*.read"]}
    assert first["authorization"].startswith("Basic ")
    # A server that refuses the cached token (401): one new token, then the search goes on.
    refusing = directory_at(f"{base}/fhir", timeout=5, token=token)
    assert refusing.find("MRN0001", "HOSP-A") == []
    assert len(handler.tokens) == 2


def test_smart_backend_services_signed_assertion(auth_server: Any) -> None:
    base, handler = auth_server
    key = ec.generate_private_key(ec.SECP384R1())
    handler.public_key = key.public_key()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    token = TokenSource(f"{base}/token", "ebiw-client", private_key_pem=pem, key_id="k1",
                        timeout=5)
    assert token.authorization() == "Bearer tok-1"
    [request] = handler.tokens
    assert request["authorization"] is None  # the signed assertion replaces the secret
    assert request["form"]["client_assertion_type"] == [
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
    claims = request["claims"]  # signature and audience verified by the server above
    assert claims["iss"] == claims["sub"] == "ebiw-client"
    assert 0 < claims["exp"] - time.time() <= 300 and claims["jti"]
    assert request["header"] == {"alg": "ES384", "kid": "k1", "typ": "JWT"}


def test_refused_credentials_are_a_permanent_error(auth_server: Any) -> None:
    base, _ = auth_server
    token = TokenSource(f"{base}/nowhere", "ebiw", client_secret="x", timeout=5)
    with pytest.raises(DirectoryRejected, match=r"refused our client credentials \(HTTP 404\)"):
        token.authorization()


def _put_patient(peer: FhirPeer, patient: dict[str, Any]) -> None:
    response = requests.put(f"{peer.url}/Patient/{patient['id']}", json=patient, timeout=5,
                            headers={"Content-Type": "application/fhir+json"})
    assert response.status_code in (200, 201), response.text


def _replaced_by(peer: FhirPeer, replaced: str, reference: str) -> None:
    """Mark the peer's Patient ``replaced`` merged: inactive, ``link`` replaced-by."""
    patient = requests.get(f"{peer.url}/Patient/{replaced}", timeout=5).json()
    patient.pop("meta", None)
    _put_patient(peer, {**patient, "active": False,
                        "link": [{"other": {"reference": reference}, "type": "replaced-by"}]})


def test_replaced_by_links_are_followed_to_the_surviving_patient(fhir_peer: FhirPeer) -> None:
    _put_patient(fhir_peer, {"resourceType": "Patient", "id": "p3", "name": [{"family": "NEW"}],
                             "identifier": [{"system": PATIENT_SYSTEM, "value": "MRN0003"}]})
    _replaced_by(fhir_peer, "p1", "Patient/p2")
    _replaced_by(fhir_peer, "p2", f"{fhir_peer.url}/Patient/p3/_history/1")  # absolute
    directory = directory_at(fhir_peer.url, timeout=5)
    [survivor] = directory.find("MRN0001", "HOSP-A")
    assert (survivor.mrn, survivor.issuer, survivor.family) == ("MRN0003", "HOSP-A", "NEW")
    assert survivor.replaces == (("HOSP-A", "MRN0001"), ("HOSP-A", "MRN0002"))
    assert survivor.encounters == ()  # the survivor's own: Alice's encounter stays hers
    [same] = directory.find("MRN0003", "HOSP-A")
    assert same.replaces == () and same.key == survivor.key
    # Both lookups merged by (issuer, MRN), the links kept.
    merged = Directories([directory, directory]).find("MRN0001", "HOSP-A").patients
    assert [p.replaces for p in merged] == [survivor.replaces]


def test_a_dangling_replaced_by_link_is_a_refusal(fhir_peer: FhirPeer) -> None:
    # The peer refuses a link to no Patient: link to one, then delete it.
    _put_patient(fhir_peer, {"resourceType": "Patient", "id": "gone"})
    _replaced_by(fhir_peer, "p1", "Patient/gone")
    requests.delete(f"{fhir_peer.url}/Patient/gone", timeout=5).raise_for_status()
    with pytest.raises(DirectoryRejected, match="leads to no Patient"):
        directory_at(fhir_peer.url, timeout=5).find("MRN0001", "HOSP-A")
    # An inactive patient with no link is left out, as before.
    patient = requests.get(f"{fhir_peer.url}/Patient/p2", timeout=5).json()
    patient.pop("meta", None)
    _put_patient(fhir_peer, {**patient, "active": False})
    assert directory_at(fhir_peer.url, timeout=5).find("MRN0002", "HOSP-A") == []
