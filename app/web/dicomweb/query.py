"""QIDO-RS on the cached attributes: query parameters → SQL filters → DICOM JSON results.

Matching follows PS3.4 C.2.2.2 for the value representations we store: single value (exact;
case-insensitive for person names), wildcard ``*``/``?`` on text, UID lists (comma separated),
comma-separated lists for code strings, date/time ranges ``a-b``, ``a-``, ``-b``, and universal
matching for an empty value. Any public attribute can be matched (the whole header is cached);
sequence matching is refused with 400. Results are ordered newest study first, then by series
and instance number, and paged by ``limit``/``offset``.

A parameter that is neither a QIDO-RS one (:data:`RESERVED`) nor a DICOM keyword or tag, as
a matching key or in ``includefield``, is refused with 400 naming it: PS3.18 lets an origin
server ignore it only when it says so, and a misspelt key silently ignored would match every
study. UID lists are separated by commas or backslashes (OHIF sends backslashes).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from sqlalchemy import ColumnElement, Select, SQLColumnExpression, and_, func, or_, select
from sqlalchemy.orm import Session, aliased
from werkzeug.datastructures import MultiDict

from app.db.models import Instance
from app.web.dicomweb.index import DICOM, is_current

MAX_RESULTS = 1000
"""Most results in one answer; beyond it the answer says so in a Warning header."""

RESERVED = frozenset({"limit", "offset", "includefield", "fuzzymatching", "emptyvaluematching",
                      "multiplevaluematching", "orderby", "accept", "charset"})

# Return keys of PS3.18 Tables 10.6.3-3/4/5 (plus Issuer of Patient ID and Study Description,
# which viewers show); computed ones are filled from the index.
STUDY_RETURN = ("00080005", "00080020", "00080030", "00080050", "00080056", "00080061",
                "00080090", "00080201", "00081030", "00081190", "00100010", "00100020",
                "00100021", "00100030", "00100040", "0020000D", "00200010", "00201206",
                "00201208")
SERIES_RETURN = ("00080005", "00080056", "00080060", "00080201", "0008103E", "00081190",
                 "0020000E", "00200011", "00201209", "00400244", "00400245", "00400275")
INSTANCE_RETURN = ("00080005", "00080016", "00080018", "00080056", "00080201", "00081190",
                   "00200013", "00280008", "00280010", "00280011", "00280100")
# Which cached attributes belong to the study and series levels (for includefield).
STUDY_LEVEL = frozenset(STUDY_RETURN) | {
    "00080090", "00081030", "00081032", "00100032", "00100033", "00101000", "00101002",
    "00101010", "00101020", "00101030", "00102160", "00380010", "00380014", "00204000"}
SERIES_LEVEL = frozenset(SERIES_RETURN) | {
    "00080021", "00080031", "00080070", "00080080", "00081010", "00081040", "00081090",
    "0008103F", "00181020", "00180015", "00200060", "00081111"}
# Type R return keys (present even when empty); the others only when known.
STUDY_REQUIRED = ("00080020", "00080030", "00080050", "00080090", "00100010", "00100020",
                  "00100030", "00100040", "00200010")
SERIES_REQUIRED = ("00080060", "00200011")
INSTANCE_REQUIRED = ("00080016", "00200013")

_NUMERIC_INT = frozenset({"IS", "US", "UL", "SS", "SL", "SV", "UV"})
_NUMERIC_FLOAT = frozenset({"DS", "FL", "FD"})
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_UID_SEPARATOR = re.compile(r"[,\\]")
MAX_NAME_SHOWN = 64


class QueryError(ValueError):
    """The query cannot be run; the message names the parameter, never its value."""


@dataclass(frozen=True)
class Query:
    """A parsed QIDO-RS request."""

    filters: tuple[ColumnElement[bool], ...]
    include: frozenset[str] | None  # None: includefield=all
    limit: int
    offset: int
    matched: frozenset[str] = field(default_factory=frozenset)  # tags used as matching keys


def tag_of(name: str) -> str | None:
    """The 8-hex-digit tag for a keyword or tag string, or None when it is not known."""
    if _TAG.match(name):
        return name.upper()
    tag = tag_for_keyword(name)
    return f"{tag:08X}" if tag is not None else None


def _vr(tag: str) -> str:
    try:
        return dictionary_VR(int(tag, 16))
    except KeyError:
        return "UN"


def _value(tag: str, vr: str) -> SQLColumnExpression[Any]:
    """SQL expression of the first value of ``tag`` in the cached header."""
    columns = {"0020000D": Instance.study_uid, "0020000E": Instance.series_uid,
               "00080018": Instance.sop_uid, "00080016": Instance.sop_class_uid}
    if tag in columns:
        return columns[tag]
    if vr == "PN":
        return Instance.attributes[(DICOM, tag, "Value", 0, "Alphabetic")].as_string()
    element = Instance.attributes[(DICOM, tag, "Value", 0)]
    if vr in _NUMERIC_INT:
        return element.as_integer()
    if vr in _NUMERIC_FLOAT:
        return element.as_float()
    return element.as_string()


def patient_filter(patient_id: str, issuer: str) -> tuple[ColumnElement[bool], ...]:
    """SQL filters matching only the instances of one patient (Patient ID and Issuer of
    Patient ID, exactly)."""
    return _value("00100020", "LO") == patient_id, _value("00100021", "LO") == issuer


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _range(column: SQLColumnExpression[Any], raw: str, pattern: re.Pattern[str],
           name: str) -> ColumnElement[bool]:
    low, dash, high = raw.partition("-")
    for end in (low, high):
        if end and not pattern.match(end):
            raise QueryError(f"{name} must be a date/time or a range of them")
    if not dash:
        return column == low
    if not (low or high):
        raise QueryError(f"{name}: a range needs at least one end")
    bounds = [column >= low] if low else []
    return and_(*bounds, column <= high) if high else and_(*bounds)


def _criterion(tag: str, raw: str, name: str) -> ColumnElement[bool] | None:
    """The SQL condition for one matching key, or None for universal matching."""
    if raw == "":
        return None
    if tag == "00080061":  # Modalities in Study: studies with an instance of that modality
        other = aliased(Instance)
        modality = other.attributes[(DICOM, "00080060", "Value", 0)].as_string()
        return Instance.study_uid.in_(
            select(other.study_uid).where(modality.in_(raw.split(",")),
                                          other.rejected_at.is_(None)))
    vr = _vr(tag)
    column = _value(tag, vr)
    if vr == "SQ":
        raise QueryError(f"{name}: sequence matching is not supported")
    if vr == "UI":
        uids = [u.strip() for u in _UID_SEPARATOR.split(raw)]
        if not all(_UID.match(u) for u in uids):
            raise QueryError(f"{name} must be a UID or a list of UIDs separated by commas")
        return column.in_(uids)
    if vr == "DA":
        return _range(column, raw, _DATE, name)
    if vr == "TM":
        return _range(column, raw, _TIME, name)
    if vr in _NUMERIC_INT or vr in _NUMERIC_FLOAT:
        try:
            number: float = int(raw) if vr in _NUMERIC_INT else float(raw)
        except ValueError as exc:
            raise QueryError(f"{name} must be a number") from exc
        return column == number
    values = raw.split(",") if vr == "CS" else [raw]
    conditions: list[ColumnElement[bool]] = []
    for value in values:
        if vr == "PN":
            conditions.append(column.ilike(_like(value), escape="\\"))
        elif "*" in value or "?" in value:
            conditions.append(column.like(_like(value), escape="\\"))
        else:
            conditions.append(column == value)
    return or_(*conditions)


def _int(args: MultiDict[str, str], name: str, default: int) -> int:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise QueryError(f"{name} must be a non-negative integer")
    return int(raw)


def _known_tag(name: str, where: str) -> str:
    """The tag of attribute ``name``; :class:`QueryError` when it names no DICOM attribute."""
    tag = tag_of(name)
    if tag is None:
        shown = name if len(name) <= MAX_NAME_SHOWN else f"{name[:MAX_NAME_SHOWN]}…"
        raise QueryError(f"{where}{shown} is neither a QIDO-RS parameter nor a DICOM attribute "
                         "keyword or tag")
    return tag


def parse(args: MultiDict[str, str], *scope: ColumnElement[bool]) -> Query:
    """Parse QIDO-RS query parameters; ``scope`` adds the filters of the resource path.

    Guarantees: a parameter that names no QIDO-RS parameter and no DICOM attribute, and a
    malformed value, raise :class:`QueryError` naming the parameter only, never its value.
    """
    filters = list(scope)
    matched: set[str] = set()
    for name in args:
        if name.lower() in RESERVED:
            continue
        if "." in name:
            raise QueryError(f"{name}: sequence matching is not supported")
        tag = _known_tag(name, "")
        matched.add(tag)
        conditions = [c for raw in args.getlist(name) if (c := _criterion(tag, raw, name))
                      is not None]
        if conditions:
            filters.append(or_(*conditions))
    include: set[str] | None = set()
    for raw in args.getlist("includefield"):
        for name in filter(None, (n.strip() for n in raw.split(","))):
            if name.lower() == "all":
                include = None
            elif include is not None:
                include.add(_known_tag(name, "includefield "))
    limit = min(_int(args, "limit", MAX_RESULTS), MAX_RESULTS)
    return Query(tuple(filters), None if include is None else frozenset(include), limit,
                 _int(args, "offset", 0), frozenset(matched))


# --- running a query -------------------------------------------------------------------------


def _header(row: Instance) -> dict[str, Any]:
    return row.attributes[DICOM] if is_current(row) else {}


def _study_date() -> SQLColumnExpression[Any]:
    return _value("00080020", "DA")


def instance_order(row: Instance) -> tuple[int, int, str]:
    """Sort key of an instance within its study: series number, instance number, UID."""
    header = _header(row)

    def number(tag: str) -> int:
        values = header.get(tag, {}).get("Value") or [0]
        return int(values[0]) if isinstance(values[0], int | float) else 0

    return number("00200011"), number("00200013"), row.sop_uid


def _pick(header: dict[str, Any], tags: Sequence[str] | frozenset[str]) -> dict[str, Any]:
    """The elements of ``header`` named by ``tags`` that it has."""
    return {t: header[t] for t in tags if t in header}


def _level_tags(query: Query, levels: frozenset[str] | None) -> frozenset[str]:
    """Return keys asked for (matching keys and includefield) allowed at this level."""
    asked = query.matched | (query.include or frozenset())
    if query.include is None:
        return levels if levels is not None else frozenset({"*"})
    return asked if levels is None else asked & levels


def _assemble(header: dict[str, Any], query: Query, defaults: Sequence[str],
              required: Sequence[str], levels: frozenset[str] | None,
              computed: dict[str, Any]) -> dict[str, Any]:
    """One result: default, requested and computed keys; a missing Type R key comes empty."""
    extra = _level_tags(query, levels)
    if "*" in extra:
        body = {t: v for t, v in header.items() if not _is_bulk(v)}
    else:
        body = _pick(header, extra)
    body.update(_pick(header, defaults))
    for tag in required:
        body.setdefault(tag, {"vr": _vr(tag)})
    body.update(computed)
    return dict(sorted(body.items()))


def _is_bulk(element: dict[str, Any]) -> bool:
    return "BulkDataURI" in element or "InlineBinary" in element


def _vals(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


@dataclass(frozen=True)
class Results:
    """Matching datasets (DICOM JSON) and whether more matched than were returned."""

    datasets: list[dict[str, Any]]
    truncated: bool


def _page(db: Session, statement: Select[Any], query: Query) -> tuple[list[Any], bool]:
    keys = list(db.execute(statement.limit(query.limit + 1).offset(query.offset)).scalars())
    return keys[:query.limit], len(keys) > query.limit


def _rows_by(db: Session, column: Any, keys: list[str]) -> dict[str, list[Instance]]:
    grouped: dict[str, list[Instance]] = defaultdict(list)
    if keys:
        for row in db.scalars(select(Instance).where(column.in_(keys), Instance.shown())):
            if is_current(row):
                grouped[getattr(row, column.key)].append(row)
    for rows in grouped.values():
        rows.sort(key=instance_order)
    return grouped


def search_studies(db: Session, query: Query, base: str) -> Results:
    """Matching studies with their counts and modalities (Table 10.6.3-3)."""
    statement = (select(Instance.study_uid).where(*query.filters)
                 .group_by(Instance.study_uid)
                 .order_by(func.max(_study_date()).desc(),
                           func.max(_value("00080030", "TM")).desc(), Instance.study_uid))
    keys, truncated = _page(db, statement, query)
    grouped = _rows_by(db, Instance.study_uid, keys)
    out = []
    for uid in keys:
        rows = grouped.get(uid)
        if not rows:
            continue
        out.append(_study_json(rows, query, base))
    return Results(out, truncated)


def _modalities(rows: list[Instance]) -> list[str]:
    found = {(_header(r).get("00080060", {}).get("Value") or [""])[0] for r in rows}
    return sorted(m for m in found if m)


def _study_json(rows: list[Instance], query: Query, base: str) -> dict[str, Any]:
    uid = rows[0].study_uid
    computed = {
        "00080056": _vals("CS", "ONLINE"),
        "00080061": _vals("CS", *_modalities(rows)),
        "00081190": _vals("UR", f"{base}/studies/{uid}"),
        "00201206": _vals("IS", len({r.series_uid for r in rows})),
        "00201208": _vals("IS", len(rows)),
    }
    return _assemble(_header(rows[0]), query, STUDY_RETURN, STUDY_REQUIRED, STUDY_LEVEL,
                     computed)


def search_series(db: Session, query: Query, base: str, *, with_study: bool) -> Results:
    """Matching series (Table 10.6.3-4); ``with_study`` adds the study's return keys."""
    statement = (select(Instance.series_uid).where(*query.filters)
                 .group_by(Instance.series_uid)
                 .order_by(func.max(_study_date()).desc(), func.min(Instance.study_uid),
                           func.min(_value("00200011", "IS")), Instance.series_uid))
    keys, truncated = _page(db, statement, query)
    grouped = _rows_by(db, Instance.series_uid, keys)
    studies = _rows_by(db, Instance.study_uid,
                       sorted({rows[0].study_uid for rows in grouped.values()})) \
        if with_study else {}
    out = []
    for uid in keys:
        rows = grouped.get(uid)
        if not rows:
            continue
        computed = {
            "00080056": _vals("CS", "ONLINE"),
            "00081190": _vals("UR", f"{base}/studies/{rows[0].study_uid}/series/{uid}"),
            "00201209": _vals("IS", len(rows)),
        }
        body = _assemble(_header(rows[0]), query, SERIES_RETURN, SERIES_REQUIRED,
                         STUDY_LEVEL | SERIES_LEVEL, computed)
        if with_study:
            body = dict(sorted({**_study_json(studies[rows[0].study_uid], query, base),
                                **body}.items()))
        out.append(body)
    return Results(out, truncated)


def search_instances(db: Session, query: Query, base: str) -> Results:
    """Matching instances (Table 10.6.3-5) with their study's and series' return keys."""
    statement = (select(Instance.sop_uid).where(*query.filters)
                 .order_by(_study_date().desc(), Instance.study_uid,
                           _value("00200011", "IS"), _value("00200013", "IS"),
                           Instance.sop_uid))
    keys, truncated = _page(db, statement, query)
    rows = {r.sop_uid: r for r in db.scalars(select(Instance).where(Instance.sop_uid.in_(keys)))
            if is_current(r)} if keys else {}
    out = []
    for uid in keys:
        row = rows.get(uid)
        if row is None:
            continue
        url = f"{base}/studies/{row.study_uid}/series/{row.series_uid}/instances/{uid}"
        computed = {"00080056": _vals("CS", "ONLINE"), "00081190": _vals("UR", url)}
        out.append(_assemble(_header(row), query,
                             STUDY_RETURN + SERIES_RETURN + INSTANCE_RETURN,
                             STUDY_REQUIRED + SERIES_REQUIRED + INSTANCE_REQUIRED, None,
                             computed))
    return Results(out, truncated)


def study_uids(results: Results) -> list[str]:
    """The Study Instance UIDs in a result set, in order, once each (for the audit trail)."""
    seen: dict[str, None] = {}
    for ds in results.datasets:
        seen.setdefault(ds.get("0020000D", {}).get("Value", [""])[0], None)
    return [uid for uid in seen if uid]

