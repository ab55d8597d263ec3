"""Photo bodies as people send them: raw bytes with a precise, a generic or no ``Content-Type``.

``curl --data-binary @photo.jpg URL`` declares ``application/x-www-form-urlencoded``; other
tools send ``application/octet-stream`` or nothing. A route marked :func:`photo_body` reads
such a body as a photo: it is held to ``EBIW_MAX_UPLOAD_BYTES`` (not the small-body cap of JSON
and forms, see :mod:`app.web.security`), never parsed as a form, and its type is taken from
its leading bytes. A body that declares another type (JSON, text, video…) or a generic one
whose bytes are no image answers 415 naming the ``Content-Type`` header.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import current_app, request

from app.pipeline.decode import UnreadablePhotoError, sniff
from app.workflow.intake import IntakeError

F = TypeVar("F", bound=Callable[..., object])

PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/heic", "image/heif", "image/tiff",
                         "image/webp"})
"""Declared types read as they are (the decoder still decides from the bytes)."""
GENERIC_TYPES = frozenset({"", "application/octet-stream", "application/x-www-form-urlencoded",
                           "binary/octet-stream"})
"""Declared types that say nothing about a body: its type comes from its signature."""
_MARK = "ebiw_photo_body"


class UnsupportedMediaType(IntakeError):
    status, code = 415, "unsupported_media_type"


def photo_body(view: F) -> F:
    """Mark ``view`` as reading a raw photo body (see the module doc); apply it innermost."""
    setattr(view, _MARK, True)
    return view


def reads_photo_body() -> bool:
    """Whether this request goes to a :func:`photo_body` route with a photo or generic type
    (then the small-body cap and form parsing do not apply)."""
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, _MARK, False)) and (
        request.mimetype in PHOTO_TYPES or request.mimetype in GENERIC_TYPES)


def read_photo_body() -> bytes:
    """The request's body as photo bytes.

    Guarantees: the bytes are returned only when the declared type is a photo type, or a
    generic one and the bytes start with a JPEG, PNG, HEIC, TIFF or WebP signature; otherwise
    :class:`UnsupportedMediaType` (415) names the header. A body over the upload limit is
    refused (413), with or without ``Content-Length`` (chunked), never returned cut at the
    limit (:class:`app.web.security.BoundedRequest`).
    """
    declared = request.mimetype
    if declared not in PHOTO_TYPES and declared not in GENERIC_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {declared} is not a photo: send the image's bytes with "
            "Content-Type: image/jpeg, image/png or image/heic")
    data = request.get_data(cache=False)
    if declared in GENERIC_TYPES and data:
        try:
            sniff(data)
        except UnreadablePhotoError as exc:
            header = f"Content-Type {declared}" if declared else "no Content-Type"
            raise UnsupportedMediaType(
                f"the body has {header} and is not a JPEG, PNG or HEIC image: send the "
                "image's bytes with Content-Type: image/jpeg, image/png or image/heic") from exc
    return data
