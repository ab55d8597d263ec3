"""Settings: one typed object, read from ``EBIW_*`` environment variables.

Embedded defaults run everything on one machine with no other server: SQLite and the local
archive under ``EBIW_DATA_DIR`` (default ``./var``). In production (``EBIW_ENV=production``)
a missing secret key or UID root stops start-up instead of falling back to a default.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from app.pipeline.decode import DEFAULT_MAX_PIXELS
from app.pipeline.dicom.uids import UUID_ROOT
from app.pipeline.wristband import DEFAULT_RULES, Rule, rules_from_config

DEFAULT_BIND = "127.0.0.1:8000"


class SettingsError(RuntimeError):
    """The configuration cannot be used; the message names the variable to fix."""


def public_url_of(bind: str) -> str:
    """The URL of a server bound to ``bind`` (``host:port``): ``http://host:port``, with this
    machine's name for a wildcard address (0.0.0.0, ::) and 127.0.0.1 for a Unix socket."""
    if bind.startswith("unix:"):
        return "http://127.0.0.1"
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if host in ("0.0.0.0", "::"):
        host = socket.getfqdn()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}" if port else f"http://{host}"


UNKNOWN_PATIENT_POLICIES = ("accept", "hold", "refuse")
_AE_TITLE = re.compile(r"(?=.*\S)[^\\\x00-\x1f]{1,16}")


@dataclass(frozen=True)
class Settings:
    """Everything the app reads from its environment, with the embedded defaults."""

    env: str = "development"
    data_dir: Path = Path("var")
    database_url: str = ""  # empty: SQLite in data_dir
    archive_dir: Path | None = None  # None: data_dir / "archive"
    # S3-compatible object store as the archive (app/gateways/archive/objectstore.py); the
    # credentials come from the environment as boto3 reads them (AWS_ACCESS_KEY_ID, ...)
    archive_s3_bucket: str = ""  # empty: the local archive under archive_dir
    archive_s3_endpoint: str = ""  # e.g. https://minio.example.org:9000; empty: AWS S3
    secret_key: str = ""
    uid_root: str = ""
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_upload_bytes: int = 64 * 1024 * 1024
    max_video_seconds: int = 60  # longer clips are refused (413)
    video_keep_audio: bool = False  # keep a clip's AAC/MP3 track in its DICOM object
    default_issuer: str = "LOCAL"
    institution_name: str = ""
    # Address and port the server listens on (``ebiw serve --host/--port``, gunicorn's bind).
    bind: str = DEFAULT_BIND
    # The URL users, phones and the EMR reach the app by; empty: the bound address (see
    # :func:`public_url_of`). Must be set behind a proxy or TLS (README "Running it").
    public_url: str = ""
    color_normalization: bool = True  # normalize colour from a chart in the frame
    color_max_loo_delta_e: float = 6.0  # above: the correction is unreliable and not stored
    # Largest normalized image, in pixels; 0: the photo's full size. A cap decodes the photo at
    # 1/2, 1/4 or 1/8 scale (JPEG DCT scaling) for the whole colour step: about 2.7x less CPU
    # on 12 MP photos at 4 MP (deploy/README.md "Load and sizing"); the original is never reduced.
    color_max_pixels: int = 0
    # Photos whose pixels one process works on at once (its other threads wait for a turn):
    # peak memory per worker is about this many photos' frames.
    pixel_jobs: int = 1
    destinations_file: Path | None = None  # PACS destinations and routing (JSON or TOML)
    # Batch import (app/workflow/batch/; README "Batch import")
    batch_label_photos: str = "keep"  # keep: label frames stored in their own series; drop
    batch_label_min_area: float = 0.02  # barcode area / frame area from which a frame is a label
    batch_hold_hours: int = 72  # `ebiw batch purge`: discard held photos of batches idle this long
    delivery_thread: bool = False  # a delivery worker thread in each web process
    server_timing: bool = False  # Server-Timing on every response (else to admins only)
    # Web login sessions (app/workflow/accounts.py): idle timeout and absolute lifetime
    session_idle_minutes: int = 15
    # Corrections (app/workflow/corrections.py): the clinician who captured a study may
    # correct it this long after capturing it (0: admins only)
    correction_window_minutes: int = 0
    # Retention rules (app/workflow/retention.py; README "Retention"): JSON, or TOML by suffix
    retention_rules_file: Path | None = None
    session_lifetime_hours: int = 12
    # Login lockout, rate limits, proxies (app/web/security.py; README "Security")
    login_max_failures: int = 5  # failed logins in a row that lock a username; 0: never
    login_lockout_minutes: int = 15  # ... for this long
    rate_login_per_minute: int = 20  # login attempts per client address; 0: no limit
    rate_identify_per_minute: int = 30  # wristband/barcode identifications per user
    rate_upload_per_minute: int = 120  # photo uploads per user
    rate_guidance_per_10s: int = 20  # live guidance frames per user per 10 s (2/s, bursts)
    redis_url: str = ""  # keep rate-limit counters in Redis (else in the database)
    proxy_hops: int = 0  # reverse proxies in front whose X-Forwarded-For is trusted
    # OpenID Connect sign-in to the hospital's identity provider (README "Security")
    oidc_issuer: str = ""  # e.g. https://idp.example.org/realms/hospital; empty: local only
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_scope: str = "openid profile email"
    oidc_username_claim: str = "preferred_username"
    oidc_role_claim: str = "roles"  # dotted path into the ID token, e.g. realm_access.roles
    oidc_role_map: str = ""  # JSON {"<claim value>": "capture|view|admin[@<department>]"}
    oidc_department_claim: str = ""  # optional: the claim naming the user's department
    # EMR notification (app/gateways/emr; README "EMR notification")
    emr_notifiers: str = "local"  # comma separated: local, fhir, hl7v2
    emr_fhir_url: str = ""  # remote FHIR R4 base, e.g. https://emr.example.org/fhir
    emr_token_url: str = ""  # OAuth2 token endpoint (client credentials); empty: no token
    emr_client_id: str = ""
    emr_client_secret: str = ""
    emr_scope: str = ""
    emr_timeout_seconds: int = 10
    emr_issuer_systems: str = ""  # JSON {"<Issuer of Patient ID>": "<identifier system>"}
    emr_encounter_system: str = ""  # identifier system of the Admission ID; empty: any
    emr_mllp_address: str = ""  # host:port of the HL7 v2 receiver
    emr_hl7_sending_application: str = "EBIW"
    emr_hl7_receiving_application: str = ""
    emr_hl7_receiving_facility: str = ""
    # Patient directory and wristbands (app/gateways/patients; README "Patient identification")
    patient_directory: str = "local"  # comma separated, queried in order: local, fhir, mwl
    patient_fhir_url: str = ""  # the EMR's FHIR R4 base; systems: EBIW_EMR_ISSUER_SYSTEMS
    patient_fhir_token_url: str = ""  # OAuth2 token endpoint; empty: no token
    patient_fhir_client_id: str = ""
    patient_fhir_client_secret: str = ""  # client credentials with a secret, or ...
    patient_fhir_private_key: Path | None = None  # ... SMART Backend Services key (PEM)
    patient_fhir_key_id: str = ""  # "kid" of that key in the EMR's JWKS
    patient_fhir_scope: str = "system/Patient.read system/Encounter.read"
    patient_timeout_seconds: int = 5
    mwl_address: str = ""  # host:port of the Modality Worklist SCP
    mwl_aet: str = ""  # its AE title
    mwl_calling_aet: str = "EBIWCAPTURE"
    mwl_modality: str = "XC"
    wristband_rules: str = ""  # JSON list of wristband rules; empty: the built-in rules
    # A capture session for a patient no directory knows (README "Patient identification"):
    # accept (as if known), hold (stored, marked unverified, nothing sent until confirmed) or
    # refuse (422; held instead while a directory cannot answer); empty: hold in production,
    # accept in development and test (see unknown_patient_policy)
    unknown_patients: str = ""
    # C-STORE SCP for other devices (app/workflow/dicom_scp.py; README "DICOM from other devices")
    dicom_scp_aet: str = "EBIW"  # our AE title (the Called AE Title devices must use)
    dicom_scp_allowed_aets: str = ""  # comma separated calling AE titles allowed to store
    dicom_scp_host: str = "127.0.0.1"  # address `ebiw dicom-scp` listens on
    dicom_scp_port: int = 11112
    dicom_scp_serve: bool = False  # `ebiw serve` also runs `ebiw dicom-scp` (its master does)
    # HL7 v2 ADT^A40 patient merge listener (app/workflow/merge.py; README "Patient merge")
    adt_listener_host: str = "127.0.0.1"  # address `ebiw adt-listener` listens on
    adt_listener_port: int = 2575  # MLLP
    adt_allowed_senders: str = ""  # comma separated MSH-3 sending applications allowed
    adt_allowed_networks: str = ""  # comma separated IP addresses/networks; empty: any
    adt_listen: bool = False  # `ebiw serve` also runs `ebiw adt-listener` (its master does)
    # Launch from the EMR: SMART on FHIR EHR launch (app/web/launch; README "Launch from the EMR")
    smart_issuers: str = ""  # JSON {"<iss>": {"client_id", "client_secret"?, "scope"?, "role"?}}
    # Audit trail (app/workflow/audit.py; README "Audit trail")
    node_name: str = ""  # this node in audit records; empty: the host name
    audit_syslog: str = ""  # tcp://host:port or tls://host:port of a syslog/ATNA collector
    audit_syslog_ca_file: Path | None = None  # CA bundle the collector's certificate chains to
    audit_syslog_cert_file: Path | None = None  # client certificate (ATNA node authentication)
    audit_syslog_key_file: Path | None = None
    audit_forward_thread: bool = True  # forward from each web process (off: ebiw audit forward)
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """An empty public URL is the bound address's (:func:`public_url_of`)."""
        if not self.public_url:
            object.__setattr__(self, "public_url", public_url_of(self.bind))

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def archive_root(self) -> Path:
        return self.archive_dir or self.data_dir / "archive"

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'ebiw.sqlite3').resolve()}"

    @property
    def node(self) -> str:
        """This node's name in audit records (``EBIW_NODE_NAME``, else the host name)."""
        return (self.node_name or socket.gethostname())[:64]

    @property
    def uid_prefix(self) -> str:
        return self.uid_root or UUID_ROOT

    @property
    def emr_notifier_names(self) -> tuple[str, ...]:
        """The EMR notifiers to run, in order (``EBIW_EMR_NOTIFIERS``)."""
        return tuple(n.strip().lower() for n in self.emr_notifiers.split(",") if n.strip())

    @property
    def issuer_systems(self) -> dict[str, str]:
        """``EBIW_EMR_ISSUER_SYSTEMS`` parsed: Issuer of Patient ID -> FHIR identifier system."""
        return json.loads(self.emr_issuer_systems) if self.emr_issuer_systems else {}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Settings:
        """Read ``EBIW_<FIELD>`` variables (upper case), then apply ``overrides``.

        Guarantees: the result is validated (see :meth:`checked`).
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = environ.get(f"EBIW_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            if f.type in ("int",):
                try:
                    values[f.name] = int(raw)
                except ValueError as exc:
                    raise SettingsError(f"EBIW_{f.name.upper()} must be an integer") from exc
            elif f.type == "float":
                try:
                    values[f.name] = float(raw)
                except ValueError as exc:
                    raise SettingsError(f"EBIW_{f.name.upper()} must be a number") from exc
            elif f.type == "bool":
                values[f.name] = _flag(raw, f"EBIW_{f.name.upper()}")
            elif "Path" in str(f.type):
                values[f.name] = Path(raw)
            else:
                values[f.name] = raw
        values["extra"] = {k[5:].lower(): v for k, v in environ.items()
                           if k.startswith("EBIW_") and k[5:].lower() not in
                           {f.name for f in fields(cls)}}
        settings = cls(**values)
        if overrides:
            settings = replace(settings, **dict(overrides))
        return settings.checked()

    def checked(self) -> Settings:
        """Refuse unusable combinations; in development, fill a persisted secret key."""
        if self.env not in ("development", "production", "test"):
            raise SettingsError("EBIW_ENV must be development, production or test")
        if self.production:
            if len(self.secret_key) < 32:
                raise SettingsError("EBIW_SECRET_KEY must be set (32+ characters) in production")
            if not self.uid_root:
                raise SettingsError("EBIW_UID_ROOT must be set in production (your "
                                    "organisation's DICOM UID root, or 2.25 explicitly)")
        if self.max_pixels <= 0 or self.max_upload_bytes <= 0:
            raise SettingsError("EBIW_MAX_PIXELS and EBIW_MAX_UPLOAD_BYTES must be positive")
        if self.correction_window_minutes < 0:
            raise SettingsError("EBIW_CORRECTION_WINDOW_MINUTES must be 0 or more")
        if self.session_idle_minutes <= 0 or self.session_lifetime_hours <= 0:
            raise SettingsError("EBIW_SESSION_IDLE_MINUTES and EBIW_SESSION_LIFETIME_HOURS "
                                "must be positive")
        if self.archive_s3_endpoint and not (
                self.archive_s3_bucket and re.match(r"^https?://", self.archive_s3_endpoint)):
            raise SettingsError("EBIW_ARCHIVE_S3_ENDPOINT must be an http(s) URL and needs "
                                "EBIW_ARCHIVE_S3_BUCKET")
        if not (self.bind.startswith("unix:") or re.fullmatch(r"\S*:\d{1,5}", self.bind)):
            raise SettingsError("EBIW_BIND must be host:port or unix:PATH")
        if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", self.public_url):
            raise SettingsError("EBIW_PUBLIC_URL must be an http:// or https:// URL")
        self._check_emr()
        self._check_patients()
        if self.batch_label_photos not in ("keep", "drop") or \
                not 0.0 < self.batch_label_min_area <= 1.0:
            raise SettingsError("EBIW_BATCH_LABEL_PHOTOS must be keep or drop and "
                                "EBIW_BATCH_LABEL_MIN_AREA a fraction in (0, 1]")
        self._check_security()
        self._check_smart()
        if not all(_AE_TITLE.fullmatch(a) for a in (self.dicom_scp_aet,
                                                    *self.dicom_scp_allowed_aet_list)):
            raise SettingsError("EBIW_DICOM_SCP_AET and EBIW_DICOM_SCP_ALLOWED_AETS must be AE "
                                "titles: 1 to 16 characters, no backslash or control character")
        self._check_adt()
        if self.audit_syslog and not re.fullmatch(r"(tcp|tls)://[^:/\s]+:\d{1,5}",
                                                  self.audit_syslog):
            raise SettingsError("EBIW_AUDIT_SYSLOG must be tcp://host:port or tls://host:port")
        if self.secret_key:
            return self
        return replace(self, secret_key=_development_secret(self.data_dir))

    def _check_emr(self) -> None:
        """The EMR notifiers named exist and have what they need to connect."""
        unknown = set(self.emr_notifier_names) - {"local", "fhir", "hl7v2"}
        if unknown:
            raise SettingsError("EBIW_EMR_NOTIFIERS: the notifiers are local, fhir and hl7v2")
        if "fhir" in self.emr_notifier_names and not self.emr_fhir_url:
            raise SettingsError("EBIW_EMR_FHIR_URL must be set for the fhir notifier")
        if self.emr_token_url and not (self.emr_client_id and self.emr_client_secret):
            raise SettingsError("EBIW_EMR_CLIENT_ID and EBIW_EMR_CLIENT_SECRET must be set "
                                "with EBIW_EMR_TOKEN_URL")
        if "hl7v2" in self.emr_notifier_names and \
                not re.fullmatch(r"[^:\s]+:\d{1,5}", self.emr_mllp_address):
            raise SettingsError("EBIW_EMR_MLLP_ADDRESS must be host:port for the hl7v2 notifier")
        if self.emr_timeout_seconds <= 0:
            raise SettingsError("EBIW_EMR_TIMEOUT_SECONDS must be positive")
        try:
            systems = self.issuer_systems
        except ValueError as exc:
            raise SettingsError("EBIW_EMR_ISSUER_SYSTEMS must be a JSON object") from exc
        if not isinstance(systems, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in systems.items()):
            raise SettingsError("EBIW_EMR_ISSUER_SYSTEMS must map issuers to system URIs")

    def _check_adt(self) -> None:
        """The ADT listener's port is a port and its allowed networks are IP networks."""
        if not 0 < self.adt_listener_port < 65536:
            raise SettingsError("EBIW_ADT_LISTENER_PORT must be a TCP port (1 to 65535)")
        try:
            for network in self.adt_allowed_network_list:
                ipaddress.ip_network(network, strict=False)
        except ValueError as exc:
            raise SettingsError("EBIW_ADT_ALLOWED_NETWORKS must list IP addresses or networks "
                                "(e.g. 10.1.2.0/24)") from exc

    @property
    def adt_allowed_sender_list(self) -> tuple[str, ...]:
        """The MSH-3 sending applications whose ADT messages are taken
        (``EBIW_ADT_ALLOWED_SENDERS``)."""
        return tuple(a.strip() for a in self.adt_allowed_senders.split(",") if a.strip())

    @property
    def adt_allowed_network_list(self) -> tuple[str, ...]:
        """The peer networks the ADT listener accepts (``EBIW_ADT_ALLOWED_NETWORKS``)."""
        return tuple(a.strip() for a in self.adt_allowed_networks.split(",") if a.strip())

    @property
    def unknown_patient_policy(self) -> str:
        """``EBIW_UNKNOWN_PATIENTS``, by default ``hold`` in production (photos of a patient
        no directory knows never leave unconfirmed) and ``accept`` elsewhere (the demo and
        tests open sessions for any MRN)."""
        return self.unknown_patients or ("hold" if self.production else "accept")

    @property
    def dicom_scp_allowed_aet_list(self) -> tuple[str, ...]:
        """The calling AE titles allowed to store (``EBIW_DICOM_SCP_ALLOWED_AETS``)."""
        return tuple(a.strip() for a in self.dicom_scp_allowed_aets.split(",") if a.strip())

    @property
    def patient_directory_names(self) -> tuple[str, ...]:
        """The patient directories to query, in order (``EBIW_PATIENT_DIRECTORY``)."""
        return tuple(n.strip().lower() for n in self.patient_directory.split(",") if n.strip())

    @property
    def wristband_rule_set(self) -> tuple[Rule, ...]:
        """``EBIW_WRISTBAND_RULES`` parsed, in order; the built-in rules when it is empty."""
        if not self.wristband_rules:
            return DEFAULT_RULES
        rules = json.loads(self.wristband_rules)
        if not isinstance(rules, list):
            raise ValueError("not a list")
        return tuple(rules_from_config(rules))

    def _check_patients(self) -> None:
        """The patient directories named exist and have what they need to connect."""
        names = self.patient_directory_names
        if not names or set(names) - {"local", "fhir", "mwl"}:
            raise SettingsError("EBIW_PATIENT_DIRECTORY: the directories are local, fhir, mwl")
        if "fhir" in names and not self.patient_fhir_url:
            raise SettingsError("EBIW_PATIENT_FHIR_URL must be set for the fhir patient "
                                "directory")
        if self.patient_fhir_token_url and (not self.patient_fhir_client_id or bool(
                self.patient_fhir_client_secret) == bool(self.patient_fhir_private_key)):
            raise SettingsError("EBIW_PATIENT_FHIR_TOKEN_URL needs EBIW_PATIENT_FHIR_CLIENT_ID and "
                                "either EBIW_PATIENT_FHIR_CLIENT_SECRET or "
                                "EBIW_PATIENT_FHIR_PRIVATE_KEY")
        if "mwl" in names and not (re.fullmatch(r"[^:\s]+:\d{1,5}", self.mwl_address)
                                   and self.mwl_aet):
            raise SettingsError("EBIW_MWL_ADDRESS (host:port) and EBIW_MWL_AET must be set for "
                                "the mwl patient directory")
        if self.unknown_patients not in ("", *UNKNOWN_PATIENT_POLICIES):
            raise SettingsError("EBIW_UNKNOWN_PATIENTS must be accept, hold or refuse")
        if self.patient_timeout_seconds <= 0:
            raise SettingsError("EBIW_PATIENT_TIMEOUT_SECONDS must be positive")
        try:
            self.wristband_rule_set  # noqa: B018 - parse and check every rule now
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"EBIW_WRISTBAND_RULES must be a JSON list of rules ({exc})") \
                from exc

    @property
    def secure_cookies(self) -> bool:
        """Whether the app is served over HTTPS (``EBIW_PUBLIC_URL``) or in production: then
        cookies are ``__Host-`` prefixed and ``Secure``; plain http (127.0.0.1) keeps them
        unprefixed so local development works."""
        return self.production or self.public_url.lower().startswith("https:")

    @property
    def oidc_enabled(self) -> bool:
        """Whether OpenID Connect sign-in is configured (``EBIW_OIDC_ISSUER``)."""
        return bool(self.oidc_issuer)

    @property
    def oidc_roles(self) -> dict[str, str]:
        """``EBIW_OIDC_ROLE_MAP`` parsed: claim value -> ``role`` or ``role@department``."""
        return json.loads(self.oidc_role_map) if self.oidc_role_map else {}

    def _check_security(self) -> None:
        """Lockout, rate limits and OpenID Connect settings are usable."""
        if min(self.login_max_failures, self.rate_login_per_minute,
               self.rate_identify_per_minute, self.rate_upload_per_minute,
               self.rate_guidance_per_10s, self.proxy_hops) < 0 or self.login_lockout_minutes <= 0:
            raise SettingsError("EBIW_LOGIN_*, EBIW_RATE_* and EBIW_PROXY_HOPS must not be "
                                "negative (EBIW_LOGIN_LOCKOUT_MINUTES positive)")
        if self.redis_url and not re.match(r"^rediss?://", self.redis_url):
            raise SettingsError("EBIW_REDIS_URL must be a redis:// or rediss:// URL")
        if not self.oidc_enabled:
            return
        if not self.oidc_client_id:
            raise SettingsError("EBIW_OIDC_CLIENT_ID must be set with EBIW_OIDC_ISSUER")
        if self.production and not self.oidc_issuer.lower().startswith("https://"):
            raise SettingsError("EBIW_OIDC_ISSUER must be an https:// URL in production")
        try:
            roles = self.oidc_roles
        except ValueError as exc:
            raise SettingsError("EBIW_OIDC_ROLE_MAP must be a JSON object") from exc
        if not roles or not isinstance(roles, dict) or not all(
                isinstance(v, str) and v.split("@", 1)[0] in ("capture", "view", "admin")
                for v in roles.values()):
            raise SettingsError("EBIW_OIDC_ROLE_MAP must map claim values to capture, view or "
                                "admin (optionally role@department)")

    @property
    def smart_clients(self) -> dict[str, SmartClient]:
        """``EBIW_SMART_ISSUERS`` parsed: the EMRs allowed to launch the app, by their FHIR base
        URL (``iss``, without a trailing slash), with our client registration at each."""
        raw = json.loads(self.smart_issuers) if self.smart_issuers else {}
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        clients = {}
        for iss, entry in raw.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("client_id"), str) \
                    or not entry["client_id"]:
                raise ValueError("every issuer needs a client_id")
            clients[str(iss).rstrip("/")] = SmartClient(
                client_id=entry["client_id"], client_secret=str(entry.get("client_secret", "")),
                scope=str(entry.get("scope") or SmartClient.scope),
                role=str(entry.get("role") or SmartClient.role))
        return clients

    def _check_smart(self) -> None:
        """``EBIW_SMART_ISSUERS`` names usable EMRs: a client id each, a role that is capture or
        view, and https in production."""
        try:
            clients = self.smart_clients
        except (ValueError, TypeError) as exc:
            raise SettingsError("EBIW_SMART_ISSUERS must be a JSON object mapping each EMR's FHIR "
                                "base URL to {client_id, client_secret?, scope?, role?}") from exc
        for iss, client in clients.items():
            if not re.match(r"^https?://[^/\s]+", iss) or \
                    (self.production and not iss.lower().startswith("https://")):
                raise SettingsError("EBIW_SMART_ISSUERS: every issuer must be an http(s) URL "
                                    "(https in production)")
            if client.role not in ("capture", "view"):
                raise SettingsError("EBIW_SMART_ISSUERS: role must be capture or view")


@dataclass(frozen=True)
class SmartClient:
    """Our registration at one EMR's SMART authorization server (``EBIW_SMART_ISSUERS``).

    No ``client_secret``: a public client (PKCE only); with one: ``client_secret_basic``.
    ``role``: what users launched from that EMR may do here.
    """

    client_id: str
    client_secret: str = ""
    scope: str = "launch openid fhirUser patient/Patient.read patient/Encounter.read"
    role: str = "capture"


def _flag(raw: str, name: str) -> bool:
    """An on/off variable: 1/true/on/yes or 0/false/off/no (any case)."""
    value = raw.strip().lower()
    if value in ("1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    raise SettingsError(f"{name} must be on or off")


def _development_secret(data_dir: Path) -> str:
    """A random key kept in ``data_dir`` so every worker and restart shares it."""
    path = data_dir / ".secret_key"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()
