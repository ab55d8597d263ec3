"""The values DICOM attributes can hold (PS3.5 6.2), for every caller that hands us one.

Text that becomes an LO, SH or PN attribute is checked here, by the API, the batch review, the
patient search, the command line and the builder alike, so a value one of them takes is never
refused later by another under a different name. The rules (PS3.5 Table 6.2-1, with Specific
Character Set ``ISO_IR 192``, UTF-8):

- LO (Long String): at most 64 characters; SH (Short String): at most 16;
- PN (Person Name): at most three component groups (``alphabetic=ideographic=phonetic``) of
  at most 64 characters each, each of at most five ``^``-separated components;
- none of them holds a backslash (the value delimiter) or a control character (C0, DEL, C1),
  and nothing UTF-8 cannot encode (lone surrogates); leading and trailing spaces are not
  significant and are stripped;
- identifiers (MRN, issuer, encounter, accession number and the other ids of a worklist
  item) are LO or SH text that also holds no Unicode format character (category Cf:
  bidirectional controls U+202A–U+202E and U+2066–U+2069, zero-width U+200B–U+200D, word
  joiner U+2060, U+FEFF, soft hyphen…): invisible, they would let two different identifiers
  look the same on a screen, a wristband or a report (:func:`identifier`);
- UI: at most 64 characters, dot-separated numbers without leading zeros;
- DA ``YYYYMMDD``, TM ``HHMMSS[.FFFFFF]``, DT ``YYYYMMDDHHMMSS[.FFFFFF][&ZZXX]``.

A refusal is :class:`InvalidValue`, which names the field as the caller's user sent it (the
caller passes the name: ``mrn``, ``patient.id``, ``--issuer``) and never repeats the value.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, overload

from app.pipeline.dicom.uids import MAX_UID_LENGTH

_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
PN_GROUPS, PN_COMPONENTS, PN_GROUP_CHARS = 3, 5, 64


class InvalidValue(ValueError):
    """A value the attribute cannot hold. ``field`` is the caller's name for it,
    ``requirement`` what it must be (``"is required"``, ``"must be …"``); the message is both,
    and holds no part of the value (it may be PHI)."""

    def __init__(self, field: str, requirement: str) -> None:
        super().__init__(f"{field} {requirement}")
        self.field = field
        self.requirement = requirement


@dataclass(frozen=True)
class TextVR:
    """A DICOM text VR of one line: at most ``max_chars`` characters."""

    name: str
    max_chars: int


LO = TextVR("LO", 64)
SH = TextVR("SH", 16)


def _stripped(value: Any, field: str, required: bool) -> str | None:
    """``value`` stripped; None when it is None or blank and not required."""
    if value is not None and not isinstance(value, str):
        raise InvalidValue(field, "must be text")
    stripped = value.strip(" ") if value is not None else ""
    if stripped:
        return stripped
    if required:
        raise InvalidValue(field, "is required")
    return None


def _plain(value: str) -> bool:
    return _FORBIDDEN.search(value) is None


@overload
def text(value: Any, field: str, vr: TextVR = LO, *, required: Literal[True],
         max_chars: int | None = None) -> str: ...
@overload
def text(value: Any, field: str, vr: TextVR = LO, *, required: bool = False,
         max_chars: int | None = None) -> str | None: ...
def text(value: Any, field: str, vr: TextVR = LO, *, required: bool = False,
         max_chars: int | None = None) -> str | None:
    """``value`` as an attribute of ``vr`` (LO, SH) holds it: stripped, or None when it is
    absent (None, empty or blank) and not ``required``.

    ``max_chars`` is a tighter limit of the caller (a description that is joined to others in
    one LO). Raises :class:`InvalidValue` naming ``field`` for anything else: not text, too
    long, a backslash or a control character.
    """
    limit = min(vr.max_chars, max_chars or vr.max_chars)
    stripped = _stripped(value, field, required)
    if stripped is not None and (len(stripped) > limit or not _plain(stripped)):
        raise InvalidValue(field, f"must be text of at most {limit} characters without "
                                  "backslashes or control characters")
    return stripped


@overload
def identifier(value: Any, field: str, vr: TextVR = LO, *, required: Literal[True]) -> str: ...
@overload
def identifier(value: Any, field: str, vr: TextVR = LO, *,
               required: bool = False) -> str | None: ...
def identifier(value: Any, field: str, vr: TextVR = LO, *,
               required: bool = False) -> str | None:
    """``value`` as :func:`text` takes it, for an identifier: also refused, naming ``field``,
    when it holds a format character (Unicode category Cf), which no one can see."""
    stripped = text(value, field, vr, required=required)
    if stripped is not None and any(unicodedata.category(c) == "Cf" for c in stripped):
        raise InvalidValue(field, "must not hold invisible formatting characters (such as "
                                  "right-to-left marks or zero-width spaces)")
    return stripped


def person_name(value: Any, field: str, *, required: bool = False) -> str | None:
    """``value`` as a PN holds it (``FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX``, up to three
    ``=``-separated groups): stripped, or None when absent and not ``required``; else
    :class:`InvalidValue` naming ``field``."""
    stripped = _stripped(value, field, required)
    if stripped is not None and not (
            _plain(stripped) and len(groups := stripped.split("=")) <= PN_GROUPS
            and all(len(g) <= PN_GROUP_CHARS and g.count("^") < PN_COMPONENTS for g in groups)):
        raise InvalidValue(field, f"must be a person name (FAMILY^GIVEN) of at most "
                                  f"{PN_GROUP_CHARS} characters without backslashes or "
                                  "control characters")
    return stripped


def uid(value: Any, field: str) -> str:
    """``value`` as a UI holds it: at most 64 characters, dot-separated numbers without
    leading zeros (at least two); else :class:`InvalidValue` naming ``field``."""
    if not isinstance(value, str) or len(value) > MAX_UID_LENGTH or not _UID.match(value):
        raise InvalidValue(field, "must be a DICOM UID")
    return value


def da(value: date) -> str:
    """The DA of a date: ``YYYYMMDD``."""
    return value.strftime("%Y%m%d")


def tm(value: datetime) -> str:
    """The TM of a time of day: ``HHMMSS``, with ``.FFFFFF`` when it has microseconds."""
    digits = value.strftime("%H%M%S")
    return f"{digits}.{value.microsecond:06d}" if value.microsecond else digits


def dt(value: datetime) -> str:
    """The DT of a moment: date, time and the UTC offset (``&ZZXX``) when it has one."""
    return da(value) + tm(value) + value.strftime("%z")
