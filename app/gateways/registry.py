"""Which outside systems this node delivers to, picked from the settings.

PACS destinations and the routing of studies to them live in ONE file named by
``EBIW_DESTINATIONS_FILE`` (JSON, or TOML when the name ends in ``.toml``); without it there is
no PACS destination. The EMR notifiers come from :func:`app.gateways.emr.build_notifiers`.
The file (README "Destinations")::

    {"retry": {"base_seconds": 2, "cap_seconds": 300}, "lease_seconds": 120,
     "destinations": [
       {"name": "pacs-main", "type": "stow-rs", "url": "https://pacs.example.org/dicom-web",
        "auth": {"type": "bearer", "token_env": "PACS_MAIN_TOKEN"},
        "match": {"department": ["Wound care"], "source": ["provider"]},
        "morph": [{"set": "InstitutionName", "value": "General Hospital"}]},
       {"name": "archive", "type": "c-store", "host": "10.0.0.5", "port": 104,
        "called_aet": "ARCHIVE", "calling_aet": "EBIW"}]}

Secrets are never written in the file: ``password_env`` and ``token_env`` name environment
variables. Every problem raises :class:`SettingsError` naming the destination and the key.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from app.db.models import CaptureSession
from app.gateways.archive.morph import Morph, MorphConfigError, parse_morph
from app.gateways.archive.pacs import PacsDestination
from app.gateways.archive.stow import BearerAuth, StowRsDestination, basic_auth
from app.gateways.emr import StudyNotifier, build_notifiers
from app.settings import Settings, SettingsError

if TYPE_CHECKING:
    from requests.auth import AuthBase

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_AET = re.compile(r"^[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]{0,15}$")
MATCH_KEYS = ("department", "source", "issuer")


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter."""

    base_seconds: float = 2.0
    cap_seconds: float = 300.0

    def delay(self, attempts: int, uniform: Callable[[float, float], float]) -> float:
        """Seconds to wait after the ``attempts``-th failure: uniform in
        ``[0, min(cap, base * 2 ** (attempts - 1))]``."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** min(max(attempts - 1, 0), 32))
        return uniform(0.0, ceiling)


@dataclass(frozen=True)
class Route:
    """Which studies a destination takes: every listed key must match one of its values
    (a missing key matches everything; no keys at all take every study)."""

    department: frozenset[str] | None = None
    source: frozenset[str] | None = None
    issuer: frozenset[str] | None = None

    def matches(self, session: CaptureSession) -> bool:
        return all(allowed is None or value in allowed for allowed, value in (
            (self.department, session.department), (self.source, session.source),
            (self.issuer, session.issuer)))


@dataclass(frozen=True)
class Destination:
    """A configured PACS: how to reach it, which studies it takes, how their tags change."""

    name: str
    pacs: PacsDestination
    route: Route = field(default_factory=Route)
    morph: Morph = field(default_factory=Morph)
    batch_size: int = 20
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class Registry:
    """The destinations and notifiers of this node. Names are unique across both: the outbox
    keys its rows by them."""

    destinations: tuple[Destination, ...] = ()
    notifiers: tuple[StudyNotifier, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # for the notifiers
    lease_seconds: float = 120.0

    def __post_init__(self) -> None:
        names = [d.name for d in self.destinations] + [n.name for n in self.notifiers]
        if len(set(names)) != len(names):
            raise SettingsError("EBIW_DESTINATIONS_FILE: destination names must be unique "
                                "and differ from the EMR notifiers' names")

    @property
    def names(self) -> tuple[str, ...]:
        """Every destination and notifier name this node can deliver to."""
        return tuple(d.name for d in self.destinations) + tuple(n.name for n in self.notifiers)

    def destination(self, name: str) -> Destination | None:
        return next((d for d in self.destinations if d.name == name), None)

    def notifier(self, name: str) -> StudyNotifier:
        """The notifier called ``name``; KeyError if there is none."""
        found = next((n for n in self.notifiers if n.name == name), None)
        if found is None:
            raise KeyError(name)
        return found

    def routes(self, session: CaptureSession) -> list[Destination]:
        """The PACS destinations that take the study of ``session``."""
        return [d for d in self.destinations if d.route.matches(session)]


def build_registry(settings: Settings) -> Registry:
    """The registry of ``settings``: destinations from ``EBIW_DESTINATIONS_FILE`` (none without
    it) and the EMR notifiers. Raises :class:`SettingsError` on any configuration problem."""
    config = read_config(settings.destinations_file, "EBIW_DESTINATIONS_FILE") \
        if settings.destinations_file else {}
    return registry_from_config(config, build_notifiers(settings))


def read_config(path: Path, where: str) -> Mapping[str, Any]:
    """The object in the JSON file ``path`` (TOML when its name ends in ``.toml``); raises
    :class:`SettingsError`, naming the variable ``where``, when it cannot be read or parsed or
    holds no object."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{where}: cannot read {path} ({exc.strerror})") from exc
    try:
        config = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{where}: {path} is not valid "
                            f"{'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {exc}") \
            from exc
    if not isinstance(config, dict):
        raise SettingsError(f"{where}: the file must hold an object")
    return config


def registry_from_config(config: Mapping[str, Any],
                         notifiers: Sequence[StudyNotifier] = ()) -> Registry:
    """Validate a parsed destinations file and build its registry."""
    where = "EBIW_DESTINATIONS_FILE"
    _only(config, {"destinations", "retry", "lease_seconds"}, where)
    retry = _retry(config.get("retry"), RetryPolicy(), f"{where}: retry")
    lease = _number(config.get("lease_seconds", 120), f"{where}: lease_seconds", 10, 86400)
    items = config.get("destinations", [])
    if not isinstance(items, list):
        raise SettingsError(f"{where}: destinations must be a list")
    destinations = tuple(_destination(item, index, retry) for index, item in enumerate(items))
    return Registry(destinations, tuple(notifiers), retry, lease)


def _only(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(obj) - allowed
    if unknown:
        raise SettingsError(f"{where}: unknown keys {', '.join(sorted(unknown))}")


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise SettingsError(f"{where} must be a number from {low:g} to {high:g}")
    return float(value)


def _text(item: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = item.get(key, default)
    if not isinstance(value, str) or not value:
        raise SettingsError(f"{where}: {key} is required (text)")
    return value


def _retry(value: Any, default: RetryPolicy, where: str) -> RetryPolicy:
    if value is None:
        return default
    if not isinstance(value, dict):
        raise SettingsError(f"{where} must be an object")
    _only(value, {"base_seconds", "cap_seconds"}, where)
    return RetryPolicy(
        _number(value.get("base_seconds", default.base_seconds), f"{where}.base_seconds",
                0.001, 3600),
        _number(value.get("cap_seconds", default.cap_seconds), f"{where}.cap_seconds",
                0.001, 86400))


def _route(value: Any, where: str) -> Route:
    if value is None:
        return Route()
    if not isinstance(value, dict):
        raise SettingsError(f"{where}: match must be an object")
    _only(value, set(MATCH_KEYS), f"{where}: match")
    sets: dict[str, frozenset[str]] = {}
    for key, allowed in value.items():
        values = [allowed] if isinstance(allowed, str) else allowed
        if not isinstance(values, list) or not values or \
                not all(isinstance(v, str) for v in values):
            raise SettingsError(f"{where}: match.{key} must be text or a list of text")
        sets[key] = frozenset(values)
    return Route(**sets)


def _secret(auth: Mapping[str, Any], key: str, where: str) -> str:
    name = _text(auth, key, where)
    secret = os.environ.get(name, "")
    if not secret:
        raise SettingsError(f"{where}: the environment variable {name} ({key}) is not set")
    return secret


def _auth(value: Any, url: str, where: str) -> AuthBase | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SettingsError(f"{where}: auth must be an object")
    host = urlsplit(url).hostname or ""
    if urlsplit(url).scheme != "https" and not _loopback(host):
        raise SettingsError(f"{where}: credentials are only sent over https")
    kind = value.get("type")
    if kind == "basic":
        _only(value, {"type", "username", "password_env"}, f"{where}: auth")
        return basic_auth(_text(value, "username", f"{where}: auth"),
                          _secret(value, "password_env", f"{where}: auth"))
    if kind == "bearer":
        _only(value, {"type", "token_env"}, f"{where}: auth")
        return BearerAuth(_secret(value, "token_env", f"{where}: auth"))
    raise SettingsError(f"{where}: auth.type must be basic or bearer")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_COMMON = {"name", "type", "match", "morph", "batch_size", "timeout_seconds", "retry"}


def _destination(item: Any, index: int, retry: RetryPolicy) -> Destination:
    where = f"EBIW_DESTINATIONS_FILE: destinations[{index}]"
    if not isinstance(item, dict):
        raise SettingsError(f"{where} must be an object")
    name = _text(item, "name", where)
    if not _NAME.match(name):
        raise SettingsError(f"{where}: name must be 1-64 letters, digits, '.', '_' or '-'")
    where = f"EBIW_DESTINATIONS_FILE: destination {name}"
    timeout = _number(item.get("timeout_seconds", 30), f"{where}: timeout_seconds", 0.1, 3600)
    kind = item.get("type")
    pacs: PacsDestination
    if kind == "stow-rs":
        _only(item, _COMMON | {"url", "auth", "ca_bundle"}, where)
        url = _text(item, "url", where)
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise SettingsError(f"{where}: url must be an http(s) URL of the DICOMweb base")
        ca_bundle = item.get("ca_bundle")
        if ca_bundle is not None and not (isinstance(ca_bundle, str) and
                                          Path(ca_bundle).is_file()):
            raise SettingsError(f"{where}: ca_bundle must name a readable PEM file")
        pacs = StowRsDestination(name, url, _auth(item.get("auth"), url, where), ca_bundle,
                                 timeout)
    elif kind == "c-store":
        _only(item, _COMMON | {"host", "port", "called_aet", "calling_aet"}, where)
        port = item.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise SettingsError(f"{where}: port must be a TCP port number")
        aets = {key: _text(item, key, where, default) for key, default in
                (("called_aet", None), ("calling_aet", "EBIW"))}
        if not all(_AET.match(aet) for aet in aets.values()):
            raise SettingsError(f"{where}: AE titles are 1-16 characters, no backslash")
        from app.gateways.archive.cstore import CStoreDestination  # pynetdicom: only if used

        pacs = CStoreDestination(name, _text(item, "host", where), port, aets["called_aet"],
                                 aets["calling_aet"], timeout)
    else:
        raise SettingsError(f"{where}: type must be stow-rs or c-store")
    try:
        morph = parse_morph(item.get("morph"), where)
    except MorphConfigError as exc:
        raise SettingsError(str(exc)) from exc
    batch = _number(item.get("batch_size", 20), f"{where}: batch_size", 1, 500)
    if batch != int(batch):
        raise SettingsError(f"{where}: batch_size must be a whole number")
    return Destination(name, pacs, _route(item.get("match"), where), morph, int(batch),
                       _retry(item.get("retry"), retry, f"{where}: retry"))
