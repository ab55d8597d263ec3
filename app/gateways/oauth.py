"""OAuth 2.0 client-credentials tokens (RFC 6749 §4.4) for the gateways that call an EMR.

One :class:`ClientCredentials` per token endpoint, with Authlib: the client authenticates with a
secret (HTTP Basic, ``client_secret_basic``) or, for SMART Backend Services, with a private key
(``private_key_jwt``: a JWT client assertion signed with RS384 or ES384, RFC 7523). The token is
reused until shortly before it expires; a caller whose request was refused with 401 asks for a
new one once (``renew=True``). Every failure is a :class:`TokenError`, which each gateway maps to
its own errors; no message holds a secret, a token or a response body.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc.jwk import ECKey, RSAKey

MARGIN_SECONDS = 30
"""A token is renewed this long before it expires."""
DEFAULT_LIFETIME_SECONDS = 300
"""The lifetime of a token whose answer gives no ``expires_in``."""
ASSERTION_SECONDS = 300
"""A client assertion expires this long after it is made (SMART Backend Services: at most five
minutes)."""


class TokenError(Exception):
    """No token from the endpoint. ``status`` is its HTTP status (None: no answer; 200: an answer
    without an access token); ``timed_out`` whether it did not answer in time. The message is
    the exception type or a fixed text, never PHI or a secret."""

    def __init__(self, message: str, *, status: int | None = None,
                 timed_out: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.timed_out = timed_out


class _SmartAssertion(PrivateKeyJWT):
    """``private_key_jwt`` whose assertion expires after :data:`ASSERTION_SECONDS` (Authlib's
    default is an hour, longer than SMART Backend Services accept)."""

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return private_key_jwt_sign(auth.client_secret, client_id=auth.client_id,
                                    token_endpoint=token_endpoint, alg=self.alg,
                                    header=dict(self.headers or {}),
                                    expires_in=ASSERTION_SECONDS)


def _signing_key(pem: bytes) -> tuple[RSAKey | ECKey, str]:
    """The private key of a PEM file and its algorithm: RS384 for RSA, ES384 for EC P-384."""
    key = load_pem_private_key(pem, password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        return RSAKey.import_key(pem), "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return ECKey.import_key(pem), "ES384"
    raise ValueError("the private key must be RSA or EC (P-384)")


class ClientCredentials:
    """Bearer tokens of one client from one token endpoint; thread-safe.

    Exactly one of ``client_secret`` or ``private_key_pem`` must be given (else ValueError);
    ``key_id`` is the assertion's ``kid``. Requests time out after ``timeout`` seconds and
    follow no redirect.
    """

    def __init__(self, token_url: str, client_id: str, *, client_secret: str = "",
                 private_key_pem: bytes | None = None, key_id: str = "", scope: str = "",
                 timeout: float) -> None:
        if bool(client_secret) == bool(private_key_pem):
            raise ValueError("give either a client secret or a private key")
        self.token_url = token_url
        self.timeout = timeout
        if private_key_pem:
            key, alg = _signing_key(private_key_pem)
            self._session = OAuth2Session(client_id, key, scope=scope or None,
                                          token_endpoint_auth_method="private_key_jwt")
            self._session.register_client_auth_method(_SmartAssertion(
                token_url, headers={"kid": key_id} if key_id else None, alg=alg))
        else:
            self._session = OAuth2Session(client_id, client_secret, scope=scope or None,
                                          token_endpoint_auth_method="client_secret_basic")
        self._session.register_compliance_hook("access_token_response", _refuse_unless_ok)
        self._lock = threading.Lock()
        self._token = ""
        self._expires = 0.0

    def authorization(self, *, renew: bool = False) -> str:
        """An ``Authorization`` header value: the cached token unless ``renew`` is set or it
        expires within :data:`MARGIN_SECONDS`, else a new one. Raises :class:`TokenError`."""
        with self._lock:
            if renew or not self._token or time.monotonic() >= self._expires:
                self._token, lifetime = self._fetch()
                self._expires = time.monotonic() + max(lifetime - MARGIN_SECONDS, 0)
            return f"Bearer {self._token}"

    def _fetch(self) -> tuple[str, float]:
        """A new access token and its lifetime in seconds."""
        try:
            body = self._session.fetch_token(self.token_url, grant_type="client_credentials",
                                             timeout=(self.timeout, self.timeout),
                                             allow_redirects=False)
            return str(body["access_token"]), float(body.get("expires_in",
                                                             DEFAULT_LIFETIME_SECONDS))
        except TokenError:
            raise
        except requests.Timeout as exc:
            raise TokenError(type(exc).__name__, timed_out=True) from None
        except requests.RequestException as exc:
            raise TokenError(type(exc).__name__) from None
        except (OAuthError, KeyError, TypeError, ValueError) as exc:  # a 200 without a token
            raise TokenError("no access_token", status=200) from exc


def _refuse_unless_ok(response: requests.Response) -> requests.Response:
    """Authlib's hook on the token response: anything but 200 is a :class:`TokenError`."""
    if response.status_code != 200:
        raise TokenError(f"HTTP {response.status_code}", status=response.status_code)
    return response
