"""EMR notification: tell the EMR that a study exists (FHIR ImagingStudy, HL7 v2 ORU^R01).

The outbox worker (``app.workflow.delivery``) calls every notifier of :func:`build_notifiers`
after photos were added to a study (coalesced). A notifier reads the study's *current* state
from the database and makes the EMR's copy match it, so calling it again, after a crash or a
retry, changes nothing more.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session

from app.gateways.emr.hl7v2 import Hl7v2Notifier
from app.gateways.emr.local import LocalFhirStore
from app.gateways.emr.remote import RemoteFhirNotifier
from app.settings import Settings


class StudyNotifier(Protocol):
    """One way of telling an EMR about a study."""

    name: str
    """Short, stable name (``local``, ``fhir``, ``hl7v2``): the outbox keys its rows by it."""

    def notify(self, db: Session, study_uid: str) -> None:
        """Bring the EMR's record of the study up to date with the database.

        Idempotent: calling it any number of times for the same state of the study leaves
        exactly one record in the EMR. Raises :class:`app.gateways.errors.TransientError`
        when a later retry may succeed and :class:`app.gateways.errors.PermanentError` when
        it cannot (unknown study, rejected resource); messages never contain PHI.
        """
        ...


def build_notifiers(settings: Settings) -> list[StudyNotifier]:
    """The notifiers named by ``EBIW_EMR_NOTIFIERS`` (comma separated, default ``local``).

    ``local`` is the embedded FHIR store served at ``/fhir``, ``fhir`` a remote FHIR R4 server
    (``EBIW_EMR_FHIR_URL``), ``hl7v2`` an HL7 v2 ORU^R01 over MLLP (``EBIW_EMR_MLLP_ADDRESS``).
    The names and what each needs were checked when the settings were read.
    """
    kinds: dict[str, type[LocalFhirStore | RemoteFhirNotifier | Hl7v2Notifier]] = {
        LocalFhirStore.name: LocalFhirStore, RemoteFhirNotifier.name: RemoteFhirNotifier,
        Hl7v2Notifier.name: Hl7v2Notifier}
    return [kinds[name](settings) for name in settings.emr_notifier_names]
