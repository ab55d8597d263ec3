"""OpenID Connect sign-in against a tiny provider stub on loopback.

The stub serves discovery, a JWKS, an authorization endpoint that approves at once, and a token
endpoint that checks the client, the code, the redirect URI and the PKCE verifier before
returning an RS256-signed ID token. Each test can make it misbehave.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from jwt.algorithms import RSAAlgorithm

from app.factory import create_app
from app.workflow import audit
from app.workflow.accounts import create_user, list_users, set_disabled
from tests.auth.test_login_next import ATTACKS
from tests.conftest import StubHandler, services, serving

CLIENT_ID, CLIENT_SECRET = "ebiw-capture", "stub-client-secret"
ROLE_MAP = {"wound-nurses": "capture@Wound care", "ebiw-viewers": "view",
            "ebiw-admins": "admin", "ward-clerks": "view"}


@dataclass
class Provider:
    """The stub's state: keys, issued codes, and switches to make it misbehave."""

    issuer: str = ""
    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(
        public_exponent=65537, key_size=2048))
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)
    sign_with: rsa.RSAPrivateKey | None = None  # another key: a forged token
    nonce: str | None = None  # another nonce: a replayed token
    audience: str = CLIENT_ID
    token_requests: list[dict[str, str]] = field(default_factory=list)

    def id_token(self, nonce: str) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "sub": "user-4711", "aud": self.audience, "iat": now,
                "exp": now + 300, "nonce": self.nonce or nonce,
                "preferred_username": "j.smith", "roles": ["wound-nurses"], **self.claims}
        return jwt.encode(body, self.sign_with or self.key, algorithm="RS256",
                          headers={"kid": "k1"})


def _handler(provider: Provider) -> type[BaseHTTPRequestHandler]:
    class Handler(StubHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/.well-known/openid-configuration":
                self.send_json({"issuer": provider.issuer,
                                 "authorization_endpoint": f"{provider.issuer}/authorize",
                                 "token_endpoint": f"{provider.issuer}/token",
                                 "jwks_uri": f"{provider.issuer}/jwks",
                                 "response_types_supported": ["code"],
                                 "subject_types_supported": ["public"],
                                 "id_token_signing_alg_values_supported": ["RS256"],
                                 "code_challenge_methods_supported": ["S256"]})
            elif url.path == "/jwks":
                jwk = json.loads(RSAAlgorithm.to_jwk(provider.key.public_key()))
                self.send_json({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]})
            elif url.path == "/authorize":
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                self.grant_code(provider.codes, query)
            else:
                self.send_json({"error": "not_found"}, 404)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            provider.token_requests.append(form)
            auth = self.headers.get("Authorization", "")
            basic = base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ") else ""
            given = form.get("client_secret") or basic.partition(":")[2]
            asked = provider.codes.pop(form.get("code", ""), None)
            if given != CLIENT_SECRET or asked is None:
                self.send_json({"error": "invalid_client"}, 401)
                return
            challenge = base64.urlsafe_b64encode(hashlib.sha256(
                form.get("code_verifier", "").encode()).digest()).rstrip(b"=").decode()
            if (form.get("grant_type") != "authorization_code"
                    or form.get("redirect_uri") != asked["redirect_uri"]
                    or asked.get("code_challenge_method") != "S256"
                    or challenge != asked.get("code_challenge")):
                self.send_json({"error": "invalid_grant"}, 400)
                return
            self.send_json({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                             "expires_in": 300, "id_token": provider.id_token(asked["nonce"])})

    return Handler


@pytest.fixture
def provider() -> Iterator[Provider]:
    state = Provider()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.issuer = f"http://127.0.0.1:{server.server_port}"
    with serving(server):
        yield state


@pytest.fixture
def oidc_app(tmp_path: Path, database_url: str, provider: Provider,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # the stub speaks plain http
    app = create_app({"data_dir": tmp_path / "var", "env": "test",
                      "database_url": database_url, "oidc_issuer": provider.issuer,
                      "oidc_client_id": CLIENT_ID, "oidc_client_secret": CLIENT_SECRET,
                      "oidc_role_map": json.dumps(ROLE_MAP)})
    services(app).db.create_schema()
    yield app
    services(app).db.engine.dispose()


def sign_in(client: FlaskClient, *, tamper_state: bool = False, start_at: str = "/login/oidc") \
        -> Any:
    """Follow the flow as a browser would from ``start_at``; return the app's answer to the
    callback."""
    start = client.get(start_at)
    assert start.status_code == 302, start.data
    assert start.headers["Cache-Control"] == "no-store"
    state_cookie = start.headers["Set-Cookie"]
    assert "HttpOnly" in state_cookie and "SameSite=Lax" in state_cookie
    approved = requests.get(start.headers["Location"], allow_redirects=False, timeout=5)
    assert approved.status_code == 302
    back = urlsplit(approved.headers["Location"])
    assert back.path == "/login/oidc/callback"
    query = back.query.replace("state=", "state=x") if tamper_state else back.query
    return client.get(f"{back.path}?{query}")


def test_sign_in_with_code_flow_and_pkce(oidc_app: Flask, provider: Provider) -> None:
    client = oidc_app.test_client()
    start = client.get("/login/oidc")
    asked = dict(parse_qs(urlsplit(start.headers["Location"]).query))
    assert asked["response_type"] == ["code"] and asked["code_challenge_method"] == ["S256"]
    assert asked["client_id"] == [CLIENT_ID] and "openid" in asked["scope"][0]
    assert asked["nonce"] and asked["state"]

    answer = sign_in(client)
    assert answer.status_code == 303 and answer.headers["Location"] == "/"
    assert provider.token_requests[-1]["code_verifier"]
    me = client.get("/api/v1/me").get_json()
    assert (me["user"], me["role"]) == ("j.smith", "capture") and me["csrf_token"]
    # the department from the role map binds the account's capture sessions
    csrf = {"X-CSRF-Token": me["csrf_token"]}
    body = {"patient": {"id": "00123456", "issuer": "LOCAL"}, "body_site": "14975008",
            "laterality": "L"}
    elsewhere = client.post("/api/v1/sessions", json={**body, "department": "Burns unit"},
                            headers=csrf)
    assert elsewhere.status_code == 403
    opened = client.post("/api/v1/sessions", json=body, headers=csrf)
    assert opened.status_code == 201 and opened.get_json()["department"] == "Wound care"
    users = list_users(services(oidc_app).db)
    assert [(u.username, u.role, u.kind) for u in users] == [("j.smith", "capture", "oidc")]
    # an OIDC account has no password to log in with
    assert client.post("/login", json={"username": "j.smith", "password": ""}) \
        .status_code == 401


def _hospital_sign_in_link(client: FlaskClient, target: str) -> str:
    """The href of the login page's hospital sign-in at ``/login?next=target``."""
    page = client.get("/login", query_string={"next": target}).get_data(as_text=True)
    found = re.search(r'href="(/login/oidc[^"]*)"', page)
    assert found, page
    return html.unescape(found.group(1))


def test_sign_in_returns_to_the_page_asked_for(oidc_app: Flask, provider: Provider) -> None:
    provider.claims = {"roles": ["ebiw-admins"]}
    client = oidc_app.test_client()
    link = _hospital_sign_in_link(client, "/admin/deliveries")
    to_provider = client.get(link).headers["Location"]
    assert "next" not in parse_qs(urlsplit(to_provider).query)
    assert "deliveries" not in to_provider  # the page waits here, not at the provider
    answer = sign_in(client, start_at=link)
    assert answer.status_code == 303 and answer.headers["Location"] == "/admin/deliveries"
    assert client.get("/admin/deliveries").status_code == 200
    # a query may hold PHI: only the path comes back
    link = _hospital_sign_in_link(client, "/admin/audit?patient_id=00123456")
    assert "00123456" not in link
    answer = sign_in(oidc_app.test_client(), start_at=link)
    assert answer.headers["Location"] == "/admin/audit"


@pytest.mark.parametrize("target", ATTACKS)
def test_another_sites_address_in_next_lands_on_the_default_page(
        oidc_app: Flask, provider: Provider, target: str) -> None:
    client = oidc_app.test_client()
    assert _hospital_sign_in_link(client, target) == "/login/oidc"
    answer = sign_in(client, start_at=f"/login/oidc?{urlencode({'next': target})}")
    assert answer.status_code == 303 and answer.headers["Location"] == "/"


def test_roles_follow_the_provider_at_every_sign_in(oidc_app: Flask,
                                                    provider: Provider) -> None:
    sign_in(oidc_app.test_client())
    provider.claims = {"roles": ["ward-clerks", "ebiw-admins"], "department": "ignored"}
    client = oidc_app.test_client()
    assert sign_in(client).status_code == 303
    assert client.get("/api/v1/me").get_json()["role"] == "admin"
    provider.claims = {"roles": "ebiw-viewers"}
    client = oidc_app.test_client()
    sign_in(client)
    assert client.get("/api/v1/me").get_json()["role"] == "view"
    assert len(list_users(services(oidc_app).db)) == 1


@pytest.mark.parametrize("attack", ["forged", "replayed_nonce", "wrong_audience", "state",
                                    "pkce"])
def test_bad_tokens_and_flows_are_refused(oidc_app: Flask, provider: Provider,
                                          attack: str) -> None:
    client = oidc_app.test_client()
    if attack == "forged":
        provider.sign_with = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif attack == "replayed_nonce":
        provider.nonce = "some-other-nonce"
    elif attack == "wrong_audience":
        provider.audience = "another-client"
    elif attack == "pkce":
        original = provider.codes

        class Swapped(dict):  # the code was issued for another verifier's challenge
            def pop(self, key: str, default: Any = None) -> Any:
                asked = original.pop(key, default)
                return {**asked, "code_challenge": "x" * 43} if asked else asked

        provider.codes = Swapped()
    answer = sign_in(client, tamper_state=attack == "state")
    assert answer.status_code == 401, attack
    assert answer.get_json()["error"]["code"] == "oidc_failed"
    assert "Set-Cookie" not in answer.headers or "ebiw_session=" not in \
        answer.headers["Set-Cookie"]
    assert client.get("/api/v1/me").status_code == 401


def test_accounts_without_a_role_or_clashing_with_local_ones_are_refused(
        oidc_app: Flask, provider: Provider) -> None:
    provider.claims = {"roles": ["cafeteria"]}
    answer = sign_in(oidc_app.test_client())
    assert answer.status_code == 403 and "no role" in answer.get_json()["error"]["message"]
    provider.claims = {}
    create_user(services(oidc_app).db, "j.smith", "a local password here", "admin")
    answer = sign_in(oidc_app.test_client())
    assert answer.status_code == 403  # never take over a local account by its name


def test_a_disabled_account_cannot_sign_in(oidc_app: Flask, provider: Provider) -> None:
    client = oidc_app.test_client()
    sign_in(client)
    set_disabled(services(oidc_app).db, "j.smith", True, by=audit.Actor("test-admin"))
    assert client.get("/api/v1/me").status_code == 401
    assert sign_in(oidc_app.test_client()).status_code == 403


def test_login_page_offers_the_hospital_sign_in_only_when_configured(
        oidc_app: Flask, client: FlaskClient) -> None:
    assert b'href="/login/oidc"' in oidc_app.test_client().get("/login").data
    assert b"/login/oidc" not in client.get("/login").data
    assert client.get("/login/oidc").status_code == 404
