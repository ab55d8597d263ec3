"""Web hardening applied to every request and every response (``init_app``).

Requests, before any view:

- bodies that are not uploads (JSON of any ``+json`` type, forms, text) are capped at
  ``MAX_SMALL_BODY`` bytes; multipart forms at ``MAX_FORM_PARTS`` parts and ``MAX_FORM_MEMORY``
  bytes of non-file fields (uploads themselves at ``EBIW_MAX_UPLOAD_BYTES``: a raw photo body
  sent with a generic type, such as curl's default form type, is a photo, not a form, see
  :mod:`app.web.uploads`); every cap holds for a streamed body (``Transfer-Encoding: chunked``,
  no ``Content-Length``) as for a declared one: one byte past it is 413
  (:class:`BoundedRequest`), never a body cut at the cap;
- CORS is refused: a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) gets 403
  without any ``Access-Control-Allow-*`` header, and a state-changing request that another site
  sent gets 403 (:func:`app.web.auth.same_origin`: ``Sec-Fetch-Site`` other than
  ``same-origin``/``none``, an ``Origin`` naming another host, or ``Origin: null`` without
  ``Sec-Fetch-Site: same-origin`` or, on ``POST /login``, the login form's token);
- a state-changing request authenticated by the session cookie must carry the session's CSRF
  token (``X-CSRF-Token`` header or ``csrf_token`` form field) whatever the route; bearer-token
  requests are exempt (no ambient credential), and so is ``POST /login``, which has no session
  yet and relies on the origin check and its form's token instead;
- JSON bodies (:class:`StrictJSONProvider`, the one parser of every JSON-reading route) nested
  deeper than ``MAX_JSON_DEPTH`` arrays and objects are refused before they are parsed (400);
- text that no database column can hold is refused before it reaches one: a NUL character in
  the path, the query string or a form (400), and a JSON string or key with NUL or lone
  surrogates (400 naming the field).

Responses (errors, static files and the service worker included):

- ``Content-Security-Policy`` (:data:`CONTENT_SECURITY_POLICY`: scripts, styles, images,
  connections only from this origin, no inline script, ``frame-ancestors 'none'``) unless the
  view set a stricter one, to which ``frame-ancestors 'none'`` is added if missing;
- ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``, ``Cross-Origin-Opener-Policy``
  and ``-Resource-Policy: same-origin``, ``Permissions-Policy`` (camera for this origin only);
- ``Referrer-Policy: same-origin`` unless the view chose one (the viewer: ``no-referrer``): no
  referrer ever leaves the site, and the pages' own form posts carry their real ``Origin``
  (under ``no-referrer`` browsers send ``Origin: null``, which cannot be told from a sandboxed
  frame of another site);
- ``Strict-Transport-Security`` when served over HTTPS (or ``EBIW_PUBLIC_URL`` is https);
- ``Cache-Control: no-store`` on every error and on any answer whose view did not choose a
  policy (static files keep Werkzeug's ``no-cache``, thumbnails their ``private, max-age``);
- no ``Content-Type`` on a 204 (No Content) answer;
- never an ``Access-Control-*`` header.
"""

from __future__ import annotations

import json
import re
from typing import IO, Any

from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider
from flask.wrappers import Request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

from app.web import services
from app.web.auth import CSRF_HEADER, csrf_ok, current_login, same_origin
from app.web.errors import error_response
from app.web.limits import EXTENSION as RATE_LIMIT_EXTENSION
from app.web.uploads import reads_photo_body
from app.workflow.intake import IntakeError
from app.workflow.ratelimit import build_rate_limiter

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; manifest-src 'self'; worker-src 'self'; media-src 'self' blob:; "
    "font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
PERMISSIONS_POLICY = "camera=(self), microphone=(), geolocation=(), payment=(), usb=()"
REFERRER_POLICY = "same-origin"
HSTS = "max-age=63072000; includeSubDomains"
MAX_SMALL_BODY = 1024 * 1024
"""JSON, form and text bodies (session requests, barcodes, logins, FHIR searches)."""
MAX_FORM_PARTS = 16
MAX_FORM_MEMORY = 512 * 1024
"""Bytes of the non-file fields of a multipart form (werkzeug reads in 64 KiB chunks)."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_EXEMPT = frozenset({"auth.login"})
"""Endpoints with no session yet: the origin check and the login form's token instead."""
_SMALL_TYPES = frozenset({"application/json", "application/fhir+json",
                          "application/x-www-form-urlencoded"})
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
MAX_JSON_DEPTH = 32
"""Arrays and objects nested in a JSON body (the API's own requests nest a few levels)."""
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""NUL (PostgreSQL text refuses it) and lone surrogates (not encodable as UTF-8)."""
_MAYBE_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]|\\u(?:0000|[dD][89a-fA-F])")
"""What NUL and surrogates look like in JSON text, raw or escaped (``\\u0000``, ``\\udc80``):
without it no parsed string can hold them, and the walk over the parsed value is skipped."""
_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


class UnacceptableJSON(IntakeError):
    """A JSON body refused before a route sees it (too deep, unstorable text)."""

    status, code = 400, "invalid_json"


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON, refusing documents nested too deep and text no database can hold."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse ``s``.

        Guarantees: a document nested deeper than :data:`MAX_JSON_DEPTH` is refused before it
        is parsed, and one with NUL or a lone surrogate in any string or key after; both with
        :class:`UnacceptableJSON` (400) whose message names the limit or the field. Text that
        is no JSON raises ``ValueError`` as before (routes call that an unreadable body).
        """
        text = s.decode(json.detect_encoding(s), "surrogatepass") if isinstance(s, bytes) else s
        if _nested_too_deep(text):
            raise UnacceptableJSON(f"the JSON body nests arrays and objects deeper than "
                                   f"{MAX_JSON_DEPTH} levels")
        value = super().loads(text, **kwargs)
        if not _MAYBE_UNSTORABLE.search(text):
            return value
        todo: list[tuple[Any, str]] = [(value, "")]
        while todo:
            item, path = todo.pop()
            if isinstance(item, str) and _UNSTORABLE.search(item):
                where = f"the field {path}" if path else "the JSON body"
                raise UnacceptableJSON(f"{where} holds a NUL character or a lone surrogate")
            if isinstance(item, dict):
                for key, child in item.items():
                    if _UNSTORABLE.search(key):
                        raise UnacceptableJSON(f"a field name in {path or 'the JSON body'} "
                                               "holds a NUL character or a lone surrogate")
                    name = key if _PLAIN_KEY.fullmatch(key) else "(a field)"
                    todo.append((child, f"{path}.{name}" if path else name))
            elif isinstance(item, list):
                todo.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
        return value


def _nested_too_deep(text: str) -> bool:
    """Whether arrays and objects nest deeper than :data:`MAX_JSON_DEPTH` in JSON ``text``
    (brackets inside strings do not count)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False
    unescaped = text.replace("\\\\", "").replace('\\"', "")  # no quote is escaped now
    outside = "".join(unescaped.split('"')[::2]).encode("utf-8", "surrogatepass")
    parens = outside.translate(_PARENS, _NOT_BRACKETS)
    for _ in range(MAX_JSON_DEPTH):  # each pass removes the innermost level
        inner = parens.replace(b"()", b"")
        if inner == parens:  # nothing left, or brackets that do not pair: the parser says
            return False
        parens = inner
    return b"()" in parens


class _CappedStream(LimitedStream):
    """A body read up to ``limit`` bytes where reading on finds out whether the client sent
    more: then 413, rather than a body silently cut at the limit."""

    def on_exhausted(self) -> None:
        if self._stream.read(1):
            raise RequestEntityTooLarge()

    def readall(self) -> bytes:
        data = super().readall()
        if self.is_exhausted:
            self.on_exhausted()
        return data


class BoundedRequest(Request):
    """Flask's request whose body limit (``max_content_length``) holds for streamed bodies.

    Werkzeug reads a body without ``Content-Length`` (chunked) up to the limit and stops
    there, so a longer one came through cut at the limit. Guarantees: whatever the framing,
    a body longer than the limit raises 413 when read, and a shorter one is read whole.
    """

    @cached_property
    def stream(self) -> IO[bytes]:
        limit = self.max_content_length
        if limit is None or "wsgi.input_terminated" not in self.environ:
            return super().stream
        if (self.content_length or 0) > limit:
            raise RequestEntityTooLarge()
        return _CappedStream(self.environ["wsgi.input"], limit, is_max=True)  # type: ignore[return-value]


def init_app(app: Flask) -> None:
    """Install the request guard, the response headers, body limits and the rate limiter."""
    svc = app.extensions["ebiw"]
    app.config.update(MAX_FORM_PARTS=MAX_FORM_PARTS, MAX_FORM_MEMORY_SIZE=MAX_FORM_MEMORY)
    app.json = StrictJSONProvider(app)
    app.request_class = BoundedRequest
    if svc.settings.proxy_hops:
        app.wsgi_app = ProxyFix(app.wsgi_app,  # type: ignore[method-assign]
                                x_for=svc.settings.proxy_hops)
    app.extensions[RATE_LIMIT_EXTENSION] = build_rate_limiter(svc.settings, svc.db)
    app.before_request(guard)
    app.after_request(harden)


def guard() -> tuple[Response, int] | None:
    """Refuse CORS preflights, cross-site writes and cookie writes without the CSRF token;
    cap the size of non-upload bodies. None lets the request through."""
    photo = reads_photo_body()
    if not photo and (request.is_json or request.mimetype in _SMALL_TYPES
                      or request.mimetype.startswith("text/")):
        request.max_content_length = min(MAX_SMALL_BODY,
                                         services().settings.max_upload_bytes)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return error_response(403, "cors_refused", "cross-origin requests are not allowed")
    if _has_nul(form=not photo):
        return error_response(400, "invalid_text", "the request contains a NUL character")
    if request.method in SAFE_METHODS:
        return None
    if not same_origin():
        return error_response(403, "cross_origin", "requests from other sites are not allowed")
    if (request.endpoint not in CSRF_EXEMPT and "Authorization" not in request.headers
            and current_login() is not None and not csrf_ok()):
        return error_response(403, "csrf", f"the {CSRF_HEADER} header is missing or wrong")
    return None


def _has_nul(*, form: bool) -> bool:
    """Whether the path, the query string or (with ``form``) a form field holds a NUL
    character."""
    if "\x00" in request.path or "\x00" in request.query_string.decode("latin-1") \
            or "%00" in request.query_string.decode("latin-1"):
        return True
    if form and request.mimetype in _FORM_TYPES:
        # a part without a name in its Content-Disposition comes with the key None
        return any("\x00" in (key or "") or "\x00" in value
                   for key, value in request.form.items(multi=True))
    return False


def harden(response: Response) -> Response:
    """Add the security headers and the cache policy to ``response`` (see the module doc)."""
    headers = response.headers
    csp = headers.get("Content-Security-Policy")
    if csp is None:
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    elif "frame-ancestors" not in csp:
        headers["Content-Security-Policy"] = f"{csp.rstrip('; ')}; frame-ancestors 'none'"
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers.setdefault("Referrer-Policy", REFERRER_POLICY)
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers["Cross-Origin-Resource-Policy"] = "same-origin"
    headers["Permissions-Policy"] = PERMISSIONS_POLICY
    if request.is_secure or services().settings.secure_cookies:
        headers["Strict-Transport-Security"] = HSTS
    if response.status_code >= 400 or "Cache-Control" not in headers:
        headers["Cache-Control"] = "no-store"
    if response.status_code == 204:  # no content, so no type (Flask defaults to text/html)
        headers.pop("Content-Type", None)
    for name in {k for k, _ in headers.items() if k.lower().startswith("access-control-")}:
        del headers[name]
    return response
