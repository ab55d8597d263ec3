"""Logging: JSON lines, and defence in depth against PHI in logs.

The primary defence is that no code logs PHI: messages name what happened and exception types,
never values (names, identifiers, birth dates, barcode payloads, query strings, datasets).
Behind that, :class:`PhiRedactingFilter` rewrites records that still carry something shaped like
PHI, and :func:`install_log_hygiene` quietens the third-party loggers that would print request
query strings, DICOM datasets, SQL parameters or URLs at their chatty levels.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

REDACTED = "[redacted]"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # query strings of request lines and URLs (QIDO-RS and FHIR searches carry identifiers)
    (re.compile(r"(?<=[\w/\]])\?[^\s\"']*"), "?" + REDACTED),
    # key=value / "key": "value" for fields that hold PHI
    (re.compile(r"(?i)(\"?\b(?:patient_?id|patient_?name|mrn|name|family|given|birth_?date|"
                r"birthdate|dob|identifier|barcode|payload|encounter|admission_?id|"
                r"PatientID|PatientName|PatientBirthDate|OtherPatientIDs)\"?\s*[:=]\s*)"
                r"(\"[^\"]*\"|'[^']*'|[^\s,;&}\]]+)"), r"\1" + REDACTED),
    # DICOM person names (FAMILY^GIVEN) and HL7 components
    (re.compile(r"\b[\w'-]+\^[\w'^ -]*"), REDACTED),
    # dates that may be birth dates: YYYY-MM-DD, YYYYMMDD, DD.MM.YYYY, MM/DD/YYYY
    (re.compile(r"\b(?:19|20)\d{2}-?(?:0[1-9]|1[0-2])-?(?:0[1-9]|[12]\d|3[01])\b"), REDACTED),
    (re.compile(r"\b\d{1,2}[./]\d{1,2}[./](?:19|20)\d{2}\b"), REDACTED),
    # medical record numbers: runs of 6+ digits, not inside a DICOM UID or a UUID
    (re.compile(r"(?<![\w.-])\d{6,}(?![\w.-])"), REDACTED),
)

QUIET_LOGGERS = {
    "pynetdicom": logging.WARNING,  # DEBUG/INFO print association details and whole datasets
    "werkzeug": logging.WARNING,  # the dev server's request lines include query strings
    "urllib3": logging.WARNING,  # DEBUG prints every URL, FHIR search parameters included
    "sqlalchemy.engine": logging.WARNING,  # INFO prints SQL with its parameters
    "authlib": logging.WARNING,
    "hl7apy": logging.WARNING,
}
"""Third-party loggers and the most verbose level at which they are allowed to speak."""


def redact(text: str) -> str:
    """``text`` with everything shaped like PHI replaced by ``[redacted]``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class PhiRedactingFilter(logging.Filter):
    """Rewrites a record's message (and formatted traceback) with :func:`redact`.

    Guarantees: it never drops a record; after it, ``record.msg`` is the redacted final text
    and ``record.args`` is empty, so later formatting cannot bring the values back.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: keep its template only
            message = str(record.msg)
        record.msg, record.args = redact(message), ()
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_hygiene(*, redacting: bool = True) -> None:
    """Quieten :data:`QUIET_LOGGERS` and, with ``redacting``, put :class:`PhiRedactingFilter`
    on the root logger and each of its handlers (idempotent: installing twice adds nothing).

    The test suite runs without the redactor (``EBIW_ENV=test``) so that its log checks see
    what the code really logs: the primary defence, not the safety net.
    """
    for name, level in QUIET_LOGGERS.items():
        logger = logging.getLogger(name)
        if logger.level < level:  # NOTSET (0) included; a stricter level set elsewhere stays
            logger.setLevel(level)
    if not redacting:
        return
    root = logging.getLogger()
    for target in (root, *root.handlers):
        if not any(isinstance(f, PhiRedactingFilter) for f in target.filters):
            target.addFilter(PhiRedactingFilter())


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC ISO 8601), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "log": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__  # the type only: values may be PHI
        return json.dumps(entry, ensure_ascii=False)
