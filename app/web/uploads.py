"""Photo bodies as people send them: raw bytes with a precise, a generic or no ``Content-Type``.

``curl --data-binary @photo.jpg URL`` declares ``application/x-www-form-urlencoded``; other
tools send ``application/octet-stream`` or nothing. A route marked :func:`photo_body` reads
such a body as a photo: it is held to ``EBIW_MAX_UPLOAD_BYTES`` (not the small-body cap of JSON
and forms, see :mod:`app.web.security`), never parsed as a form, and its type is taken from
its leading bytes. A body that declares another type (JSON, text…) or a generic one
whose bytes are no image answers 415 naming the ``Content-Type`` header. Routes that take video
clips too read the body with :func:`read_media_body`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import current_app, request

from app.pipeline.decode import UnreadablePhotoError, sniff
from app.pipeline.video import VIDEO_MEDIA_TYPES, sniff_video
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
        request.mimetype in PHOTO_TYPES or request.mimetype in GENERIC_TYPES
        or request.mimetype in VIDEO_MEDIA_TYPES)


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
        _refuse_unless_photo(data, declared)
    return data


def _refuse_unless_photo(data: bytes, declared: str) -> None:
    """415 naming the generic ``declared`` header unless ``data`` starts like a photo."""
    try:
        sniff(data)
    except UnreadablePhotoError as exc:
        header = f"Content-Type {declared}" if declared else "no Content-Type"
        raise UnsupportedMediaType(
            f"the body has {header} and is not a JPEG, PNG or HEIC image: send the "
            "image's bytes with Content-Type: image/jpeg, image/png or image/heic") from exc


def read_media_body() -> tuple[str | None, bytes]:
    """The request's body as a photo or a video clip: (the clip's media type as its bytes say,
    or None for a photo; the bytes).

    Guarantees: a clip is returned only when its bytes start like an MP4, QuickTime or WebM
    container and it was declared ``video/mp4``, ``video/quicktime``, ``video/webm`` or a
    generic type; a body declared as a video whose bytes are none, and a body declared as an
    image whose bytes are a video, are refused (415, naming the header); anything else is
    :func:`read_photo_body`'s. Photos and clips share the upload size limit.
    """
    declared = request.mimetype
    if declared not in VIDEO_MEDIA_TYPES and declared not in GENERIC_TYPES:
        data = read_photo_body()
        if sniff_video(data[:12]):
            raise UnsupportedMediaType(
                f"Content-Type {declared} but the body is a video clip: send it with "
                "Content-Type video/mp4, video/quicktime or video/webm")
        return None, data
    data = request.get_data(cache=False)
    found = sniff_video(data[:12])
    if found is not None:
        return found, data
    if declared in VIDEO_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {declared} but the body is no MP4, QuickTime or WebM video clip "
            "(send a photo with Content-Type image/jpeg, image/png or image/heic)")
    if data:
        _refuse_unless_photo(data, declared)
    return None, data

