"""Settings: one typed object, read from ``EBIW_*`` environment variables.

Embedded defaults run everything on one machine with no other server: SQLite and the local
archive under ``EBIW_DATA_DIR`` (default ``./var``). In production (``EBIW_ENV=production``)
a missing secret key or UID root stops start-up instead of falling back to a default.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from app.pipeline.decode import DEFAULT_MAX_PIXELS
from app.pipeline.dicom.uids import UUID_ROOT


class SettingsError(RuntimeError):
    """The configuration cannot be used; the message names the variable to fix."""


@dataclass(frozen=True)
class Settings:
    """Everything the app reads from its environment, with the embedded defaults."""

    env: str = "development"
    data_dir: Path = Path("var")
    database_url: str = ""  # empty: SQLite in data_dir
    archive_dir: Path | None = None  # None: data_dir / "archive"
    secret_key: str = ""
    uid_root: str = ""
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_upload_bytes: int = 64 * 1024 * 1024
    default_issuer: str = "LOCAL"
    institution_name: str = ""
    public_url: str = "http://127.0.0.1:8000"
    extra: Mapping[str, str] = field(default_factory=dict)

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
    def uid_prefix(self) -> str:
        return self.uid_root or UUID_ROOT

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
        if self.secret_key:
            return self
        return replace(self, secret_key=_development_secret(self.data_dir))


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
