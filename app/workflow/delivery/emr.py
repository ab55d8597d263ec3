"""Notifying the EMR: a claim of one study's row, handed to its :class:`StudyNotifier`.

The notifier gets its own database session, committed only when it succeeds, so a failed
notice leaves nothing behind. Its errors are the result; an unexpected exception (logged by type
only: messages may hold PHI) is a transient error, retried later. Nothing here writes outbox
rows; :mod:`.worker` records the result, and leaves the row pending when the study was
re-queued meanwhile, so the EMR always ends with the current study.
"""

from __future__ import annotations

import logging

from app.db.session import Database
from app.gateways.emr import StudyNotifier
from app.gateways.errors import GatewayError, TransientError

log = logging.getLogger(__name__)


def notify(db: Database, notifier: StudyNotifier, study_uid: str) -> GatewayError | None:
    """Call the EMR notifier for the study; its writes commit only when it succeeds."""
    try:
        with db.session() as session:
            notifier.notify(session, study_uid)
    except GatewayError as error:
        return error
    except Exception as exc:
        log.error("notification by %s: unexpected %s", notifier.name, type(exc).__name__)
        return TransientError(f"unexpected {type(exc).__name__}")
    return None
