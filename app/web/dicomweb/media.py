"""Media types of DICOMweb answers: Accept negotiation and multipart/related bodies.

Only what this archive holds is offered: instances in the Transfer Syntax they were stored in
(JPEG Baseline for our photos: no transcoding of a lossy image), bulk data and frames as that
JPEG bitstream, DICOM JSON for metadata and queries, and rendered JPEG or PNG.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from werkzeug.http import parse_list_header

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
# Bulk data media type of each compressed Transfer Syntax we may hold (PS3.18 Table 8.7.3-3)
BULK_MEDIA_TYPE = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
}


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: ``type/subtype`` and its parameters (``q`` removed)."""

    media_type: str
    params: dict[str, str]
    q: float


def _parse_range(item: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; k=v; ...`` with quoted or bare values (clients send ``type=a/b`` bare,
    which strict RFC 9110 parsers cut at the slash)."""
    media_type, *pairs = item.split(";")
    params = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return media_type.strip().lower(), params


def accepted(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, most preferred first; none given means ``*/*``.

    Guarantees: ranges with ``q=0`` are dropped; equal ``q`` keeps the header's order.
    """
    ranges = []
    for item in parse_list_header(header or "*/*"):
        media_type, params = _parse_range(item)
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if media_type and q > 0:
            ranges.append(MediaRange(media_type, params, q))
    return sorted(ranges, key=lambda r: -r.q)


def _syntax_ok(params: dict[str, str], transfer_syntax: str) -> bool:
    asked = params.get("transfer-syntax")
    return asked in (None, "*", transfer_syntax)


def accepts_multipart(ranges: list[MediaRange], part_type: str, transfer_syntax: str) -> bool:
    """Whether ``multipart/related; type=part_type`` in ``transfer_syntax`` is acceptable.

    Accepted: ``*/*``, ``multipart/*`` or ``multipart/related`` whose ``type`` is absent,
    ``part_type`` or a wildcard covering it, and the bare part type; a ``transfer-syntax``
    parameter must be absent, ``*`` or the stored one.
    """
    types = (part_type, "*/*", f"{part_type.split('/')[0]}/*")
    for r in ranges:
        inner = r.params.get("type", part_type).lower() if r.media_type in (
            "*/*", "multipart/*", "multipart/related") else r.media_type
        if inner in types and _syntax_ok(r.params, transfer_syntax):
            return True
    return False


def bulk_type(ranges: list[MediaRange], transfer_syntax: str) -> str | None:
    """The part media type to send a compressed frame in, or None when none is acceptable.

    The frame goes as it is stored: as its bulk data type (``image/jpeg``) unless the client
    prefers ``application/octet-stream`` with ``transfer-syntax`` ``*`` or the stored one
    (without it, octet-stream means uncompressed, which we do not offer).
    """
    native = BULK_MEDIA_TYPE.get(transfer_syntax)
    if native is None:
        return None
    for r in ranges:
        inner = r.params.get("type", native).lower() if r.media_type in (
            "*/*", "multipart/*", "multipart/related") else r.media_type
        if inner in (native, "image/*", "*/*") and _syntax_ok(r.params, transfer_syntax):
            return native
        if inner == OCTET_STREAM and r.params.get("transfer-syntax") in ("*", transfer_syntax):
            return OCTET_STREAM
    return None


def accepts_json(ranges: list[MediaRange]) -> bool:
    """Whether DICOM JSON (``application/dicom+json`` or ``application/json``) is acceptable."""
    return any(r.media_type in ("*/*", "application/*", DICOM_JSON, "application/json")
               for r in ranges)


def rendered_type(ranges: list[MediaRange], offered: tuple[str, ...]) -> str | None:
    """The most preferred of ``offered`` (e.g. image/jpeg, image/png) that is acceptable."""
    for r in ranges:
        for media_type in offered:
            major = media_type.split("/")[0]
            if r.media_type in ("*/*", f"{major}/*", media_type):
                return media_type
    return None


@dataclass(frozen=True)
class Part:
    """One body part: its Content-Type and a function giving its bytes when streamed."""

    content_type: str
    load: Callable[[], bytes]


def boundary() -> str:
    """A fresh random boundary (128 bits: it cannot plausibly occur inside a part)."""
    return f"ebiw-{secrets.token_hex(16)}"


def multipart(parts: Iterable[Part], marker: str) -> Iterator[bytes]:
    """Stream a multipart body (RFC 2046) whose parts are loaded one at a time.

    Guarantees: each part is ``--marker CRLF Content-Type CRLF CRLF data`` and the body ends
    with ``CRLF --marker-- CRLF``; at most one part's bytes are held at once.
    """
    for part in parts:
        yield f"--{marker}\r\nContent-Type: {part.content_type}\r\n\r\n".encode()
        yield part.load()
        yield b"\r\n"
    yield f"--{marker}--\r\n".encode()


def multipart_content_type(part_type: str, marker: str) -> str:
    """The Content-Type header of a multipart/related answer."""
    return f'multipart/related; type="{part_type}"; boundary={marker}'


class MultipartError(ValueError):
    """A multipart body that cannot be split; the message says what is wrong (no content)."""


def split_multipart(body: bytes, marker: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body (RFC 2046 5.1.1): each part's headers (names in lower
    case) and its bytes exactly as sent.

    Guarantees: the preamble and epilogue are ignored; a part's header ends at its first empty
    line (a part may have none); a body without the opening delimiter, a part without the
    closing one or a malformed header line raises :class:`MultipartError`.
    """
    delimiter = b"--" + marker.encode("latin-1")
    between = b"\r\n" + delimiter
    if body.startswith(delimiter):
        pos = len(delimiter)
    else:
        opening = body.find(between)
        if opening < 0:
            raise MultipartError("the body does not start with its boundary")
        pos = opening + len(between)
    parts: list[tuple[dict[str, str], bytes]] = []
    while body[pos:pos + 2] != b"--":
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise MultipartError("a boundary line is followed by other text")
        start = line_end + 2
        end = body.find(between, start)
        if end < 0:
            raise MultipartError("the body ends without its closing boundary")
        parts.append(_part(body[start:end]))
        pos = end + len(between)
    return parts


def _part(raw: bytes) -> tuple[dict[str, str], bytes]:
    if raw.startswith(b"\r\n"):
        return {}, raw[2:]
    head, blank, content = raw.partition(b"\r\n\r\n")
    if not blank:
        raise MultipartError("a part has no empty line after its headers")
    headers = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MultipartError("a part has a malformed header line")
        headers[name.strip().lower()] = value.strip()
    return headers, content
