"""What every PACS destination (STOW-RS, C-STORE) agrees on: what is sent, how it answers.

A destination stores a batch of instances of one study and answers per instance: ``None`` when
stored, a :class:`TransientError` or :class:`PermanentError` otherwise. A failure of the whole
batch (no connection, HTTP 503, association refused) is raised instead. Messages never carry
PHI: no UIDs, no names, no bodies of responses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from app.gateways.errors import GatewayError, PermanentError, TransientError


@dataclass(frozen=True)
class OutgoingInstance:
    """One DICOM instance on its way to a PACS, as Part 10 bytes (already morphed)."""

    sop_uid: str
    data: bytes


class PacsDestination(Protocol):
    """A PACS we send to. Sending the same instance again is harmless (same UIDs, same bytes)."""

    name: str

    def store(self, study_uid: str,
              instances: Sequence[OutgoingInstance]) -> dict[str, GatewayError | None]:
        """Store ``instances`` (all of study ``study_uid``); return the outcome per SOP UID.

        Raises :class:`TransientError` / :class:`PermanentError` when the whole batch failed.
        """
        ...


def dimse_status_error(status: int) -> GatewayError | None:
    """The outcome of a C-STORE / STOW-RS status code: ``None`` for success and warnings
    (0x0000, 0x0001, 0xBxxx), transient for "out of resources" (0xA7xx) and cancel (0xFE00),
    permanent for every other failure (0xA9xx, 0xCxxx, 0x01xx, 0x02xx)."""
    if status == 0x0000 or status == 0x0001 or status & 0xF000 == 0xB000:
        return None
    if status & 0xFF00 == 0xA700 or status == 0xFE00:
        return TransientError(f"PACS out of resources (status 0x{status:04X})")
    return PermanentError(f"PACS refused the instance (status 0x{status:04X})")
