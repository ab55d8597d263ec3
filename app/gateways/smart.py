"""SMART on FHIR App Launch, the app's side of the wire: discovery, the code exchange, the ID
token and reads from the EMR's FHIR API with the launch's access token.

Follows the SMART App Launch IG (STU 2): ``GET {iss}/.well-known/smart-configuration``; the
authorization code exchanged at the token endpoint (RFC 6749 §4.1.3) with the PKCE verifier
(RFC 7636) and, for a confidential client, HTTP Basic client authentication
(``client-confidential-symmetric``); the ``id_token`` validated as OpenID Connect Core §3.1.3.7
asks — signature by a key of the issuer's JWK Set (``jwks_uri`` of the SMART configuration, else
of ``{issuer}/.well-known/openid-configuration``), ``iss``, ``aud``, ``exp``, ``nonce``.

A failure raises :class:`SmartRefused` (the EMR said no, or answered something unusable) or
:class:`SmartUnavailable` (unreachable, timed out, 5xx); messages name the step and the HTTP
status, never a patient, a code or a token. Nothing sent or received is logged.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Any

import jwt
import requests

from app.gateways.errors import PermanentError, TransientError
from app.settings import SmartClient

ID_TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "ES256", "ES384")
"""Signatures accepted on an ID token: public-key ones only (never ``none`` or HMAC)."""
CLOCK_SKEW_SECONDS = 60
_REFERENCE = re.compile(r"^([A-Z][A-Za-z]{1,63})/([A-Za-z0-9.-]{1,64})$")
_ERROR_CODE = re.compile(r"^[a-z_]{1,40}$")


class SmartRefused(PermanentError):
    """The EMR refused a step of the launch, or its answer cannot be used."""


class SmartUnavailable(TransientError):
    """The EMR could not be reached or failed (timeout, 5xx)."""


@dataclass(frozen=True)
class SmartConfiguration:
    """What the app needs from ``.well-known/smart-configuration``.

    ``issuer`` is the OpenID Connect issuer (empty when the EMR offers no
    ``sso-openid-connect``); ``jwks_uri`` is empty when the document does not list it.
    """

    authorization_endpoint: str
    token_endpoint: str
    issuer: str
    jwks_uri: str


def fhir_reference(value: Any) -> tuple[str, str] | None:
    """(resource type, id) of a relative reference such as ``Patient/123``, else None."""
    match = _REFERENCE.match(value) if isinstance(value, str) else None
    return (match.group(1), match.group(2)) if match else None


class SmartGateway:
    """HTTP calls of the EHR launch, each bounded by ``timeout`` seconds."""

    def __init__(self, timeout: float, http: requests.Session | None = None) -> None:
        self.timeout = timeout
        self.http = http or requests.Session()

    def discover(self, iss: str) -> SmartConfiguration:
        """The EMR's SMART configuration.

        Guarantees: both endpoints are http(s) URLs and the EMR supports PKCE with ``S256``
        (as the IG requires); otherwise :class:`SmartRefused`.
        """
        body = self._json("GET", f"{iss}/.well-known/smart-configuration",
                          "the EMR's SMART configuration")
        authorize, token = body.get("authorization_endpoint"), body.get("token_endpoint")
        if not (isinstance(authorize, str) and isinstance(token, str)
                and all(re.match(r"^https?://", e) for e in (authorize, token))):
            raise SmartRefused("the EMR's SMART configuration names no authorization and token "
                               "endpoints")
        if "S256" not in (body.get("code_challenge_methods_supported") or ()):
            raise SmartRefused("the EMR's SMART configuration does not offer PKCE with S256")
        issuer, jwks_uri = body.get("issuer"), body.get("jwks_uri")
        return SmartConfiguration(authorize, token,
                                  issuer if isinstance(issuer, str) else "",
                                  jwks_uri if isinstance(jwks_uri, str) else "")

    def exchange(self, config: SmartConfiguration, client: SmartClient, *, code: str,
                 redirect_uri: str, verifier: str) -> dict[str, Any]:
        """The token response for an authorization code (``access_token`` present).

        A public client sends its ``client_id`` in the form, a confidential one authenticates
        with HTTP Basic. Raises :class:`SmartRefused` naming the OAuth error code when the
        token endpoint refuses (a wrong PKCE verifier gives ``invalid_grant``).
        """
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": redirect_uri, "code_verifier": verifier}
        auth = (client.client_id, client.client_secret) if client.client_secret else None
        if auth is None:
            form["client_id"] = client.client_id
        body = self._json("POST", config.token_endpoint, "the EMR's token endpoint",
                          data=form, auth=auth)
        if not isinstance(body.get("access_token"), str) or \
                str(body.get("token_type", "")).lower() != "bearer":
            raise SmartRefused("the EMR's token endpoint gave no bearer access token")
        return body

    def id_claims(self, config: SmartConfiguration, client_id: str, id_token: str,
                  nonce: str) -> dict[str, Any]:
        """The claims of a valid ID token.

        Guarantees: signed with an accepted algorithm by a key of the issuer's JWK Set; ``iss``
        is the configuration's issuer, ``aud`` contains ``client_id``; ``exp``, ``iat`` and
        ``sub`` are present and the token has not expired; ``nonce`` is the one we sent.
        Anything else raises :class:`SmartRefused`.
        """
        if not config.issuer:
            raise SmartRefused("the EMR offers no OpenID Connect issuer for the ID token")
        jwks_uri = config.jwks_uri or self._openid_jwks_uri(config.issuer)
        keys = self._json("GET", jwks_uri, "the EMR's JWK Set")
        try:
            header = jwt.get_unverified_header(id_token)
            candidates = [k for k in jwt.PyJWKSet.from_dict(keys).keys
                          if header.get("kid") in (None, k.key_id)
                          and k.public_key_use in (None, "sig")]
            if len(candidates) != 1:
                raise SmartRefused("no single key of the EMR's JWK Set matches the ID token")
            claims: dict[str, Any] = jwt.decode(
                id_token, candidates[0].key, algorithms=list(ID_TOKEN_ALGORITHMS),
                audience=client_id, issuer=config.issuer, leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]})
        except jwt.PyJWTError as exc:
            raise SmartRefused(f"the ID token is not valid ({type(exc).__name__})") from None
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise SmartRefused("the ID token does not answer this launch (nonce)")
        return claims

    def read(self, base: str, resource_type: str, resource_id: str,
             access_token: str) -> dict[str, Any]:
        """``GET {base}/{type}/{id}`` with the access token: the resource, checked to be that
        one (type and id), else :class:`SmartRefused`."""
        if fhir_reference(f"{resource_type}/{resource_id}") is None:
            raise SmartRefused(f"the EMR named a {resource_type} that is not a FHIR id")
        body = self._json("GET", f"{base}/{resource_type}/{resource_id}",
                          f"the EMR's {resource_type} read",
                          headers={"Authorization": f"Bearer {access_token}",
                                   "Accept": "application/fhir+json"})
        if body.get("resourceType") != resource_type or body.get("id") != resource_id:
            raise SmartRefused(f"the EMR's {resource_type} read returned another resource")
        return body

    def _openid_jwks_uri(self, issuer: str) -> str:
        """``jwks_uri`` of the issuer's OpenID configuration (an http(s) URL)."""
        body = self._json("GET", f"{issuer.rstrip('/')}/.well-known/openid-configuration",
                          "the EMR's OpenID configuration")
        uri = body.get("jwks_uri")
        if not isinstance(uri, str) or not re.match(r"^https?://", uri):
            raise SmartRefused("the EMR's OpenID configuration names no JWK Set")
        return uri

    def _json(self, method: str, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
        """One call answered by a JSON object; failures as PHI-free exceptions."""
        headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
        try:
            response = self.http.request(method, url, headers=headers,
                                         timeout=(self.timeout, self.timeout),
                                         allow_redirects=False, **kwargs)
        except requests.Timeout:
            raise SmartUnavailable(f"{what} did not answer within {self.timeout:g} s") from None
        except requests.RequestException:
            raise SmartUnavailable(f"{what} cannot be reached") from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise SmartUnavailable(f"{what} answered HTTP {status}")
        try:
            body = response.json()
        except ValueError:
            body = None
        if status != 200:
            error = body.get("error") if isinstance(body, dict) else None
            reason = f" {error}" if isinstance(error, str) and _ERROR_CODE.match(error) else ""
            raise SmartRefused(f"{what} refused (HTTP {status}{reason})")
        if not isinstance(body, dict):
            raise SmartRefused(f"{what} did not answer with a JSON object")
        return body
