"""Wristband payload → patient identifier, by configurable rules (first match wins).

A rule is either a regular expression with named groups (``mrn`` required, ``issuer`` and
``encounter`` optional) that must match the whole payload (surrounding white space ignored), or
the built-in GS1 parser. Rules come from settings as a list of plain dicts (JSON), see
:func:`rules_from_config`. The default rules, in order:

``gs1-gsrn``
    GS1 AI (8018) GSRN, optionally with (8019) SRIN as the encounter (the GS1 service relation
    instance, used for a visit). Accepted as HRI ``(8018)…(8019)…`` (what zxing-cpp and most
    scanners print) and as element string ``8018…<GS>8019…``, with or without a leading
    symbology identifier (``]C1``, ``]d2``, ``]Q3``) or FNC1/GS. The GSRN check digit is
    verified. MRN = the 18-digit GSRN.
``hl7-cx-encounter``
    ``00123456^^^HOSP^MR~E123^^^HOSP^VN`` (HL7 v2 CX repetitions: MR, then VN or AN).
``hl7-cx``
    ``00123456^^^HOSP^MR``; the assigning authority may be ``HOSP&1.2.3&ISO`` (issuer = its
    namespace ID, or its universal ID when the namespace is empty); the type may be MR, PI, PT
    or absent.
``mrn-encounter``
    ``MRN00123456|FIN987654`` — MRN then FIN, ENC, CSN or VN, separated by ``|``, ``;``, ``,``
    or spaces, each key optionally followed by ``:``, ``=`` or ``#``.
``prefixed``
    ``MRN:00123456``, ``MR#00123456``, ``M00123456`` (6–12 digits).
``digits``
    ``00123456`` (6–12 digits).

Nothing here logs or puts a payload into an exception message (payloads are PHI).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

from app.pipeline.identify import SYMBOLOGIES

GS = "\x1d"
_GS1_PREFIXES = ("]C1", "]e0", "]d2", "]Q3", "]J1")  # symbology identifiers of GS1 data
_PREDEFINED = {  # GS1 AIs of predefined length: first two digits → (AI digits, total length)
    "00": (2, 20), "01": (2, 16), "02": (2, 16), "03": (2, 16), "04": (2, 18), "20": (2, 4),
    **dict.fromkeys(("11", "12", "13", "14", "15", "16", "17", "18", "19"), (2, 8)),
    **dict.fromkeys(("31", "32", "33", "34", "35", "36"), (4, 10)),
    "41": (3, 16),
}
_GSRN_AIS = ("8017", "8018")  # GSRN provider / recipient: fixed 18 digits
_GSRN = "8018"
_SRIN = "8019"
_HRI_ELEMENT = re.compile(r"\((\d{2,4})\)([^()]*)")
_GROUPS = frozenset({"mrn", "issuer", "encounter"})


@dataclass(frozen=True)
class WristbandId:
    """A patient identifier read from a wristband.

    ``issuer`` is the assigning authority (from the payload or the rule's fixed issuer), or
    None when neither gives one; ``encounter`` is the visit / FIN / SRIN when the payload
    carries one; ``rule`` names the rule that matched.
    """

    mrn: str
    issuer: str | None
    encounter: str | None
    rule: str


class NoWristbandRuleMatched(ValueError):
    """No rule turned the payload into an identifier.

    ``payload`` and ``symbology`` are kept for the caller; the message never contains the
    payload. ``reasons`` explains near misses (e.g. a GSRN whose check digit does not verify).
    """

    def __init__(self, payload: str, symbology: str, reasons: Sequence[str] = ()) -> None:
        self.payload = payload
        self.symbology = symbology
        self.reasons = tuple(reasons)
        detail = f": {'; '.join(self.reasons)}" if self.reasons else ""
        super().__init__(f"no wristband rule matches this {symbology} barcode{detail}")


@dataclass(frozen=True)
class Rule:
    """One way to read a wristband payload.

    ``kind="regex"``: ``pattern`` must match the whole payload and name a group ``mrn`` (and may
    name ``issuer`` and ``encounter``; an empty group counts as absent). ``kind="gs1"``: the
    built-in GS1 (8018)/(8019) parser; with ``gs1_company_prefix`` the GSRN must start with
    that prefix and the MRN is the service reference between prefix and check digit.
    ``issuer`` is used when the payload names none. ``symbologies`` (empty = any) limits the
    rule to barcodes of those symbologies.
    """

    name: str
    kind: Literal["regex", "gs1"] = "regex"
    pattern: str = ""
    issuer: str | None = None
    symbologies: tuple[str, ...] = ()
    gs1_company_prefix: str | None = None
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.symbologies) - set(SYMBOLOGIES)
        if unknown:
            raise ValueError(f"rule {self.name!r}: unknown symbologies {sorted(unknown)}")
        if self.kind == "gs1":
            if self.pattern:
                raise ValueError(f"rule {self.name!r}: a gs1 rule takes no pattern")
            prefix = self.gs1_company_prefix
            if prefix is not None and not (prefix.isdigit() and 6 <= len(prefix) <= 12):
                raise ValueError(f"rule {self.name!r}: gs1_company_prefix must be 6-12 digits")
            return
        if self.kind != "regex":
            raise ValueError(f"rule {self.name!r}: kind must be 'regex' or 'gs1'")
        if self.gs1_company_prefix is not None:
            raise ValueError(f"rule {self.name!r}: gs1_company_prefix needs kind 'gs1'")
        try:
            regex = re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"rule {self.name!r}: bad pattern ({exc})") from exc
        groups = set(regex.groupindex)
        if "mrn" not in groups or not groups <= _GROUPS:
            raise ValueError(f"rule {self.name!r}: the pattern must name a group 'mrn' and "
                             f"may only name {sorted(_GROUPS)}")
        object.__setattr__(self, "_regex", regex)


_CX_ID = r"[^\^~&|\s]+"  # CX.1 ID number
_CX_CHECK = r"\^[^\^~]*\^[^\^~]*"  # CX.2 check digit, CX.3 its scheme
_CX_AUTHORITY = r"&?(?P<issuer>[^\^~&]+)(?:&[^\^~&]*)*"  # CX.4 HD: namespace&universal-id&type
_CX_REST = r"(?:\^[^\^~]*)*"  # CX.6 and later components

DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("gs1-gsrn", kind="gs1"),
    Rule("hl7-cx-encounter",
         pattern=rf"(?P<mrn>{_CX_ID}){_CX_CHECK}\^{_CX_AUTHORITY}\^(?:MR|PI|PT){_CX_REST}"
                 rf"~(?P<encounter>{_CX_ID}){_CX_CHECK}\^[^\^~]*\^(?:VN|AN){_CX_REST}"),
    Rule("hl7-cx",
         pattern=rf"(?P<mrn>{_CX_ID}){_CX_CHECK}\^{_CX_AUTHORITY}(?:\^(?:MR|PI|PT)?{_CX_REST})?"),
    Rule("mrn-encounter",
         pattern=r"(?i:MRN?)[:=#]?\s*(?P<mrn>\d{6,12})\s*[|;,\s]\s*"
                 r"(?i:FIN|ENC|CSN|VN)[:=#]?\s*(?P<encounter>[A-Za-z0-9-]{1,20})"),
    Rule("prefixed", pattern=r"(?i:MRN|MR|M)[:=#]?\s*(?P<mrn>\d{6,12})"),
    Rule("digits", pattern=r"(?P<mrn>\d{6,12})"),
)


def rules_from_config(obj: Sequence[Mapping[str, object]]) -> list[Rule]:
    """Rules from settings (a JSON list of objects with the fields of :class:`Rule`).

    Guarantees: every rule is checked (kind, pattern compiles with the allowed groups, known
    symbologies, unique names); a :class:`ValueError` names the first bad entry.
    """
    allowed = {f.name for f in fields(Rule) if f.init}
    rules: list[Rule] = []
    for index, entry in enumerate(obj):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise ValueError(f"rule #{index}: must be an object with a string 'name'")
        extra = set(entry) - allowed
        if extra:
            raise ValueError(f"rule #{index}: unknown keys {sorted(extra)}")
        values = dict(entry)
        values["symbologies"] = tuple(values.get("symbologies") or ())  # type: ignore[arg-type]
        rule = Rule(**values)  # type: ignore[arg-type]
        if any(r.name == rule.name for r in rules):
            raise ValueError(f"rule #{index}: duplicate name {rule.name!r}")
        rules.append(rule)
    return rules


def gs1_check_digit_ok(digits: str) -> bool:
    """Whether the last digit of a GS1 key (GTIN, GSRN, SSCC…) is its mod-10 check digit."""
    if not digits.isdigit() or len(digits) < 2:
        return False
    body = [int(d) for d in reversed(digits[:-1])]
    total = sum(d * (3 if i % 2 == 0 else 1) for i, d in enumerate(body))
    return (10 - total % 10) % 10 == int(digits[-1])


def _gs1_elements(payload: str) -> tuple[dict[str, str], bool] | None:
    """GS1 AIs → values, and whether the payload is marked as GS1 (HRI form, symbology
    identifier or leading FNC1); None when it is no GS1 element string at all."""
    if payload.startswith("("):
        elements = _HRI_ELEMENT.findall(payload)
        if not elements or "".join(f"({a}){v}" for a, v in elements) != payload:
            return None
        return dict(elements), True
    marked = payload.startswith((*_GS1_PREFIXES, GS))
    data = payload[3:] if payload.startswith(_GS1_PREFIXES) else payload
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == GS:
            pos += 1
            continue
        two = data[pos:pos + 2]
        if not two.isdigit():
            return None
        if two in _PREDEFINED:
            ai_len, end = _PREDEFINED[two][0], pos + _PREDEFINED[two][1]
        elif data.startswith(_GSRN_AIS, pos):
            ai_len, end = 4, pos + 22
        else:  # runs to the next GS or the end; of these AIs only (8019) is read
            end = data.find(GS, pos)
            end = len(data) if end < 0 else end
            ai_len = 4 if data.startswith(_SRIN, pos) else 0
        if ai_len:
            out[data[pos:pos + ai_len]] = data[pos + ai_len:end]
        pos = end
    return out, marked


@dataclass(frozen=True)
class _NearMiss:
    """Why a payload with (8018) is not acceptable; ``final`` when it is marked as GS1."""

    reason: str
    final: bool


def _parse_gs1(rule: Rule, payload: str) -> WristbandId | _NearMiss | None:
    """A match, why a GS1 payload with (8018) is not acceptable, or None (no (8018) at all)."""
    parsed = _gs1_elements(payload)
    if parsed is None or _GSRN not in parsed[0]:
        return None
    elements, marked = parsed
    gsrn, srin = elements[_GSRN], elements.get(_SRIN)
    if len(gsrn) != 18 or not gsrn.isdigit():
        return _NearMiss(f"rule {rule.name}: the (8018) GSRN must be 18 digits", marked)
    if not gs1_check_digit_ok(gsrn):
        return _NearMiss(f"rule {rule.name}: the (8018) GSRN check digit does not verify",
                         marked)
    if srin is not None and not (srin.isdigit() and 1 <= len(srin) <= 10):
        return _NearMiss(f"rule {rule.name}: the (8019) SRIN must be 1-10 digits", marked)
    mrn = gsrn
    prefix = rule.gs1_company_prefix
    if prefix is not None:
        if not gsrn.startswith(prefix):
            return None
        mrn = gsrn[len(prefix):-1]
    return WristbandId(mrn, rule.issuer, srin, rule.name)


def _parse_regex(rule: Rule, payload: str) -> WristbandId | None:
    assert rule._regex is not None
    m = rule._regex.fullmatch(payload.strip())
    if m is None or not m.group("mrn"):
        return None
    groups = m.groupdict()
    return WristbandId(m.group("mrn"), groups.get("issuer") or rule.issuer,
                       groups.get("encounter") or None, rule.name)


def parse_wristband(payload: str, symbology: str,
                    rules: Sequence[Rule] = DEFAULT_RULES) -> WristbandId:
    """Turn a barcode payload into a :class:`WristbandId` with the first rule that matches.

    Guarantees: rules are tried in order and the first match wins; a GS1 payload that is
    marked as such (HRI parentheses, symbology identifier or leading FNC1) and carries a bad
    (8018) GSRN is rejected at once, without trying later rules; otherwise, when no rule
    matches, :class:`NoWristbandRuleMatched` carries the payload, the symbology and the
    reasons of near misses.
    """
    reasons: list[str] = []
    for rule in rules:
        if rule.symbologies and symbology not in rule.symbologies:
            continue
        result = _parse_gs1(rule, payload) if rule.kind == "gs1" else _parse_regex(rule, payload)
        if isinstance(result, _NearMiss):
            if result.final:
                raise NoWristbandRuleMatched(payload, symbology, [result.reason])
            reasons.append(result.reason)
        elif result is not None:
            return result
    raise NoWristbandRuleMatched(payload, symbology, reasons)
