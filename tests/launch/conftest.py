"""An EMR that launches the app by SMART on FHIR (App Launch IG, STU 2), stubbed on loopback,
and the archive the launched sessions look at.

The stub serves ``{iss}/.well-known/smart-configuration``, an authorization endpoint that
approves at once and redirects back with ``code`` and ``state`` (after checking the client, the
redirect URI, ``aud``, the ``launch`` it issued and the PKCE challenge), a token endpoint that
checks the client's Basic authentication, the code, the redirect URI and the PKCE verifier
against the challenge before answering with the launch context (``patient``, ``encounter``,
``fhirContext``) and an RS256 ``id_token`` (``fhirUser``, ``nonce``), its JWK Set, and FHIR reads
of Patient, Encounter and ImagingStudy that need the access token and stay in its patient's
compartment. Each test can make it misbehave.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from jwt.algorithms import RSAAlgorithm
from PIL import Image

from tests.conftest import StubHandler, served, services, serving

CLIENT_ID, CLIENT_SECRET = "ebiw-capture", "stub-client-secret"
ISSUER, SYSTEM = "HOSP-A", "urn:oid:1.2.3.4.5.6"  # Issuer of Patient ID and its FHIR system
MRN, FAMILY, GIVEN, BIRTH = "40770021", "VASQUELLO", "MIRANDINE", "1958-09-30"
ENCOUNTER, DEPARTMENT = "ENC-5501", "Wound care"
OTHER_MRN, OTHER_FAMILY = "40770099", "TREBOUXAN"
PHI = (MRN, FAMILY, GIVEN, BIRTH, BIRTH.replace("-", ""), OTHER_MRN, OTHER_FAMILY, ENCOUNTER)
"""Synthetic PHI of both patients: searched for in error pages, URLs and logs."""
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64url_sha256(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


@dataclass
class Emr:
    """The stub's state, what it was asked, and switches to make it misbehave."""

    base: str = ""
    redirect_uri: str = ""  # the app's registered redirect URI
    launches: dict[str, dict[str, Any]] = field(default_factory=dict)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # access token -> patient id
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    token_answers: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    scope: str | None = None  # grant this scope instead of the one asked for
    sign_with: rsa.RSAPrivateKey | None = None  # a key not in the JWKS: a forged ID token
    nonce: str | None = None  # another nonce: a token of another launch
    fhir_user: str = "Practitioner/prac-7"

    @property
    def iss(self) -> str:
        return f"{self.base}/fhir"

    @property
    def issuer(self) -> str:
        """The OpenID Connect issuer (the authorization server, not the FHIR base)."""
        return f"{self.base}/auth"

    def new_launch(self, **context: Any) -> str:
        """A launch id for the EMR's current patient (``context`` adds or overrides)."""
        launch = secrets.token_urlsafe(12)
        self.launches[launch] = {"patient": "pat-1", "encounter": "enc-1", **context}
        return launch

    def id_token(self, nonce: str) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": "prac-7-subject", "aud": CLIENT_ID, "iat": now,
                  "exp": now + 300, "nonce": self.nonce or nonce, "fhirUser": self.fhir_user,
                  "preferred_username": "dr.okafor"}
        return jwt.encode(claims, self.sign_with or KEY, algorithm="RS256",
                          headers={"kid": "emr-key-1"})


def _resources(study_uid: str | None = None) -> dict[str, dict[str, Any]]:
    found = {
        "Patient/pat-1": {
            "resourceType": "Patient", "id": "pat-1", "active": True,
            "identifier": [
                {"system": "http://emr.example.org/visit-number", "value": "V-1"},
                {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                      "code": "MR"}]}, "system": SYSTEM, "value": MRN}],
            "name": [{"use": "official", "family": FAMILY, "given": [GIVEN]}],
            "gender": "female", "birthDate": BIRTH},
        "Encounter/enc-1": {
            "resourceType": "Encounter", "id": "enc-1", "status": "in-progress",
            "identifier": [{"system": "http://emr.example.org/encounter", "value": ENCOUNTER}],
            "subject": {"reference": "Patient/pat-1"},
            "serviceProvider": {"display": DEPARTMENT}},
    }
    if study_uid:
        found["ImagingStudy/is-1"] = {
            "resourceType": "ImagingStudy", "id": "is-1", "status": "available",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
            "subject": {"reference": "Patient/pat-1"}}
    return found


def _handler(emr: Emr) -> type[BaseHTTPRequestHandler]:
    class Handler(StubHandler):
        def _json(self, body: dict[str, Any], status: int = 200) -> None:
            self.send_json(body, status, {"Cache-Control": "no-store"})

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            emr.paths.append(url.path)
            if url.path == "/fhir/.well-known/smart-configuration":
                self._json({
                    "issuer": emr.issuer, "jwks_uri": f"{emr.issuer}/jwks",
                    "authorization_endpoint": f"{emr.issuer}/authorize",
                    "token_endpoint": f"{emr.issuer}/token",
                    "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                    "grant_types_supported": ["authorization_code"],
                    "scopes_supported": ["openid", "fhirUser", "launch", "launch/patient",
                                         "patient/*.read", "patient/*.rs"],
                    "response_types_supported": ["code"],
                    "code_challenge_methods_supported": ["S256"],
                    "capabilities": ["launch-ehr", "client-public",
                                     "client-confidential-symmetric", "context-ehr-patient",
                                     "context-ehr-encounter", "sso-openid-connect",
                                     "permission-patient", "permission-user", "permission-v1"]})
            elif url.path == "/auth/jwks":
                jwk = json.loads(RSAAlgorithm.to_jwk(KEY.public_key()))
                self._json({"keys": [{**jwk, "kid": "emr-key-1", "use": "sig",
                                      "alg": "RS256"}]})
            elif url.path == "/auth/authorize":
                self._authorize({k: v[0] for k, v in parse_qs(url.query).items()})
            elif url.path.startswith("/fhir/"):
                self._read(url.path.removeprefix("/fhir/"))
            else:
                self._json({"error": "not_found"}, 404)

        def _authorize(self, query: dict[str, str]) -> None:
            emr.authorize_requests.append(query)
            if (query.get("response_type") != "code" or query.get("client_id") != CLIENT_ID
                    or query.get("redirect_uri") != emr.redirect_uri
                    or query.get("aud") != emr.iss or query.get("launch") not in emr.launches
                    or "launch" not in query.get("scope", "").split()
                    or query.get("code_challenge_method") != "S256"
                    or not query.get("code_challenge") or not query.get("state")):
                self._json({"error": "invalid_request"}, 400)
                return
            self.grant_code(emr.codes, query)

        def _read(self, reference: str) -> None:
            auth = self.headers.get("Authorization", "")
            patient = emr.tokens.get(auth.removeprefix("Bearer "))
            resource = emr.resources.get(reference)
            if patient is None:
                self._json({"resourceType": "OperationOutcome"}, 401)
            elif resource is None:
                self._json({"resourceType": "OperationOutcome"}, 404)
            elif reference != f"Patient/{patient}" and \
                    (resource.get("subject") or {}).get("reference") != f"Patient/{patient}":
                self._json({"resourceType": "OperationOutcome"}, 403)
            else:
                self._json(resource)

        def do_POST(self) -> None:
            emr.paths.append(urlsplit(self.path).path)
            length = int(self.headers.get("Content-Length", 0))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            auth = self.headers.get("Authorization", "")
            emr.token_requests.append({**form, "authorization": auth})
            basic = base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ") else ""
            asked = emr.codes.pop(form.get("code", ""), None)
            if basic != f"{CLIENT_ID}:{CLIENT_SECRET}":
                self._token_error("invalid_client", 401)
            elif asked is None or form.get("grant_type") != "authorization_code" \
                    or form.get("redirect_uri") != asked["redirect_uri"] \
                    or _b64url_sha256(form.get("code_verifier", "")) != asked["code_challenge"]:
                self._token_error("invalid_grant", 400)
            else:
                context = emr.launches[asked["launch"]]
                access = secrets.token_urlsafe(24)
                emr.tokens[access] = context["patient"]
                emr.token_answers.append(200)
                self._json({"access_token": access, "token_type": "Bearer", "expires_in": 300,
                            "scope": asked["scope"] if emr.scope is None else emr.scope,
                            "id_token": emr.id_token(asked.get("nonce", "")),
                            "need_patient_banner": False, **context})

        def _token_error(self, error: str, status: int) -> None:
            emr.token_answers.append(status)
            self._json({"error": error}, status)

    return Handler


@pytest.fixture
def emr() -> Iterator[Emr]:
    """The stub EMR on a free loopback port, named ``localhost``: for the browser another site
    than the app at ``127.0.0.1``, as an EMR is (SameSite cookies behave as in production)."""
    state = Emr(resources=_resources())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base = f"http://localhost:{server.server_port}"  # another site than the app's
    with serving(server):
        yield state


@pytest.fixture
def app_overrides(emr: Emr) -> dict[str, object]:
    """The stub EMR allowed to launch us (confidential client, capture role); its MRN system
    mapped to our Issuer of Patient ID; no colour step (tests store plain photos)."""
    return {"smart_issuers": json.dumps({emr.iss: {"client_id": CLIENT_ID,
                                                   "client_secret": CLIENT_SECRET}}),
            "emr_issuer_systems": json.dumps({ISSUER: SYSTEM}),
            "color_normalization": False}


@pytest.fixture
def registered(app: Flask, emr: Emr) -> Flask:
    """The app with its redirect URI registered at the EMR."""
    emr.redirect_uri = services(app).settings.public_url.rstrip("/") + "/launch/callback"
    return app


def jpeg(seed: int) -> bytes:
    """A small photo-like JPEG (a gradient, different per seed)."""
    image = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
    image = Image.merge("RGB", [band.point(lambda v, s=seed, i=i: (v + 40 * s * i) % 256)
                                for i, band in enumerate(image.split())])
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


@dataclass(frozen=True)
class Stored:
    """A capture session of one photo in the archive."""

    session_id: str
    study_uid: str


def store(client: FlaskClient, headers: dict[str, str], mrn: str, family: str,
          seed: int) -> Stored:
    """Open a session for a patient of :data:`ISSUER`, upload one photo, complete it."""
    body = {"patient": {"id": mrn, "issuer": ISSUER, "name": f"{family}^ANNE",
                        "birth_date": "1950-01-01", "sex": "F"},
            "encounter": "ENC-1", "body_site": "14975008", "laterality": "L"}
    opened = client.post("/api/v1/sessions", json=body, headers=headers)
    assert opened.status_code == 201, opened.get_json()
    session = opened.get_json()
    put = client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                     data=jpeg(seed), headers={**headers, "Content-Type": "image/jpeg"})
    assert put.status_code == 201, put.get_json()
    done = client.post(f"/api/v1/sessions/{session['id']}/complete", headers=headers)
    assert done.status_code == 200
    return Stored(session["id"], session["study_instance_uid"])


@pytest.fixture
def studies(registered: Flask, emr: Emr, auth: dict[str, dict[str, str]]) -> dict[str, Stored]:
    """A study of the launch patient and one of another patient; the EMR knows the first as
    ImagingStudy/is-1."""
    client = registered.test_client()
    found = {"own": store(client, auth["capture"], MRN, FAMILY, 1),
             "other": store(client, auth["capture"], OTHER_MRN, OTHER_FAMILY, 2)}
    emr.resources.update(_resources(found["own"].study_uid))
    return found


def launch(client: FlaskClient, emr: Emr, launch_id: str | None = None,
           **params: str) -> Any:
    """The whole launch with a test client as the browser: ``/launch`` → the EMR's authorize
    endpoint (which approves at once) → ``/launch/callback``; the callback's answer."""
    started = client.get("/launch", query_string={"iss": emr.iss,
                                                  "launch": launch_id or emr.new_launch(),
                                                  **params})
    assert started.status_code == 302, started.get_data(as_text=True)
    approved = requests.get(started.headers["Location"], allow_redirects=False, timeout=10)
    assert approved.status_code == 302, approved.text
    back = urlsplit(approved.headers["Location"])
    return client.get(f"{back.path}?{back.query}")


@pytest.fixture
def live_url(registered: Flask, emr: Emr) -> Iterator[str]:
    """The app on a free loopback port, its public URL (and so its redirect URI) set to it."""
    with served(registered, public_url=True) as url:
        emr.redirect_uri = f"{url}/launch/callback"
        yield url
