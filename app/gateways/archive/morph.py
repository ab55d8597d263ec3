"""Per-destination tag morphing: set, replace, prefix or remove attributes on the way out.

A morph is applied to a copy of the archived Part 10 bytes when they are sent to one
destination; the archived original is never touched. The dataset header is re-encoded and the
Pixel Data element is appended byte for byte as it was archived, so the encapsulated JPEG is
exactly the one we stored. Only plain top-level text attributes may be changed: UIDs, the file
meta group, the image pixel description and pixel data are refused when the rules are loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import validate_value

from app.gateways.errors import PermanentError
from app.pipeline.dicom.read import UnreadableDicomError, rewrite_header

OPERATIONS = ("set", "replace", "prefix", "remove")
# Value representations a morph may write: text whose value is one string.
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
             "UT"}
_FORBIDDEN_GROUPS = {0x0002, 0x0028, 0x7FE0}
_RAISE = 2  # pydicom.config.RAISE: validate_value raises on an invalid value


class MorphConfigError(ValueError):
    """A morph rule cannot be used; the message names the rule and what is wrong."""


@dataclass(frozen=True)
class MorphRule:
    """One operation on one top-level attribute.

    ``set``: give it ``value`` (added when missing). ``replace``: give it ``value`` when it is
    present and, if ``match`` is given, equal to ``match``. ``prefix``: put ``value`` in front
    of a present, non-empty value. ``remove``: delete it.
    """

    operation: str
    tag: BaseTag
    value: str = ""
    match: str | None = None

    @property
    def keyword(self) -> str:
        return keyword_for_tag(self.tag)

    def apply(self, ds: Dataset) -> None:
        """Change ``ds`` in place; raise :class:`PermanentError` if the result is not valid."""
        present = self.tag in ds
        current = str(ds[self.tag].value) if present and ds[self.tag].value is not None else ""
        if self.operation == "remove":
            if present:
                del ds[self.tag]
            return
        if self.operation == "replace" and (
                not present or (self.match is not None and current != self.match)):
            return
        if self.operation == "prefix" and not current:
            return
        new = self.value + current if self.operation == "prefix" else self.value
        vr = dictionary_VR(self.tag)
        try:
            validate_value(vr, new, _RAISE)
        except ValueError as exc:
            raise PermanentError(f"tag morphing makes {self.keyword} invalid ({vr})") from exc
        ds.add_new(self.tag, vr, new)


@dataclass(frozen=True)
class Morph:
    """The ordered rules of one destination; no rules leaves the bytes untouched."""

    rules: tuple[MorphRule, ...] = ()

    def apply(self, part10: bytes) -> bytes:
        """The Part 10 bytes to send: the original itself when there are no rules; otherwise
        the header re-encoded with the rules applied, followed by the original Pixel Data
        element and whatever follows it, byte for byte.

        Raises :class:`PermanentError` when the object cannot be parsed or a rule makes a
        value invalid (retrying cannot change either).
        """
        if not self.rules:
            return part10
        try:
            return rewrite_header(part10, self._apply_rules)
        except UnreadableDicomError as exc:
            raise PermanentError("the archived object cannot be parsed or re-encoded for tag "
                                 "morphing") from exc

    def _apply_rules(self, ds: Dataset) -> None:
        for rule in self.rules:
            rule.apply(ds)


def _tag(name: Any, where: str) -> BaseTag:
    """A tag from a keyword (``InstitutionName``) or ``GGGGEEEE`` / ``(GGGG,EEEE)`` hex."""
    if not isinstance(name, str) or not name:
        raise MorphConfigError(f"{where}: the attribute must be a keyword or a tag")
    tag_number = tag_for_keyword(name)
    if tag_number is None:
        digits = name.strip("()").replace(",", "")
        try:
            tag_number = int(digits, 16) if len(digits) == 8 else None
        except ValueError:
            tag_number = None
    if tag_number is None:
        raise MorphConfigError(f"{where}: {name!r} is not a DICOM keyword or tag")
    tag = Tag(tag_number)
    try:
        vr = dictionary_VR(tag)
    except KeyError as exc:
        raise MorphConfigError(f"{where}: {name!r} is not in the DICOM dictionary") from exc
    if tag.group in _FORBIDDEN_GROUPS or tag.group % 2 == 1:
        raise MorphConfigError(f"{where}: {name} may not be morphed (file meta, image pixel, "
                               "pixel data or private attribute)")
    if vr not in _TEXT_VRS:
        raise MorphConfigError(f"{where}: {name} has VR {vr}; only text attributes may be "
                               "morphed (never UIDs or sequences)")
    return tag


def parse_morph(rules: Any, where: str) -> Morph:
    """Validate the ``morph`` list of a destination.

    Each rule is an object with exactly one operation key naming the attribute
    (``{"set": "InstitutionName", "value": "General Hospital"}``,
    ``{"replace": "IssuerOfPatientID", "match": "LOCAL", "value": "GH"}``,
    ``{"prefix": "PatientID", "value": "GH-"}``, ``{"remove": "InstitutionalDepartmentName"}``).
    Raises :class:`MorphConfigError` naming the first bad rule.
    """
    if rules is None:
        return Morph()
    if not isinstance(rules, Sequence) or isinstance(rules, str):
        raise MorphConfigError(f"{where}: morph must be a list of rules")
    parsed = []
    for index, rule in enumerate(rules):
        at = f"{where}.morph[{index}]"
        if not isinstance(rule, Mapping):
            raise MorphConfigError(f"{at}: a rule is an object")
        ops = [op for op in OPERATIONS if op in rule]
        if len(ops) != 1:
            raise MorphConfigError(f"{at}: give exactly one of {', '.join(OPERATIONS)}")
        op = ops[0]
        allowed = {op} | ({"value"} if op != "remove" else set()) | \
            ({"match"} if op == "replace" else set())
        extra = set(rule) - allowed
        if extra:
            raise MorphConfigError(f"{at}: unknown keys {', '.join(sorted(extra))}")
        tag = _tag(rule[op], at)
        value = rule.get("value", "")
        match = rule.get("match")
        if not isinstance(value, str) or (match is not None and not isinstance(match, str)):
            raise MorphConfigError(f"{at}: value and match must be text")
        if any(c == "\\" or ord(c) < 0x20 for c in value):
            raise MorphConfigError(f"{at}: the value may not hold backslashes or control "
                                   "characters")
        if op in ("set", "replace", "prefix") and "value" not in rule:
            raise MorphConfigError(f"{at}: {op} needs a value")
        if op != "prefix":
            vr = dictionary_VR(tag)
            try:
                validate_value(vr, value, _RAISE)
            except ValueError as exc:
                raise MorphConfigError(f"{at}: the value is not valid for VR {vr}") from exc
        parsed.append(MorphRule(op, tag, value, match))
    return Morph(tuple(parsed))
