"""Deterministic DICOM UIDs.

A retried upload or delivery must produce the very same instance, so UIDs are derived from the
client's UUIDs rather than drawn at random: ``2.25.<the UUID as an integer>`` (PS3.5 B.2), or
under an organisation root when one is configured.
"""

from __future__ import annotations

import uuid

UUID_ROOT = "2.25"
MAX_UID_LENGTH = 64
IMPLEMENTATION_CLASS_UID = f"{UUID_ROOT}.{uuid.UUID('7548670b-658c-4888-9dcf-41b2705df9ef').int}"
"""The Implementation Class UID of the files we write (PS3.7 D.3.3.2): ebiw-capture's own,
from a UUID drawn once for it, so a file's meta names what wrote it (not pydicom)."""


def uid_from_uuid(value: uuid.UUID | str, root: str = UUID_ROOT) -> str:
    """The UID for a UUID: ``2.25.<int>`` or ``<root>.<digits>`` (≤ 64 characters).

    Guarantees: the same (UUID, root) always yields the same valid UID; under ``2.25`` distinct
    UUIDs give distinct UIDs. Under a longer organisation root the UUID's integer is reduced to
    the digits that fit, which keeps collisions negligible for roots up to ~30 characters.
    """
    number = uuid.UUID(str(value)).int
    if root == UUID_ROOT:
        return f"{UUID_ROOT}.{number}"
    room = MAX_UID_LENGTH - len(root) - 1
    if room < 20:
        raise ValueError(f"UID root {root!r} is too long to derive unique UIDs")
    return f"{root}.{number % 10 ** room or 1}"


def derived_uuid(parent: uuid.UUID | str, role: str) -> uuid.UUID:
    """A stable child UUID for ``role`` under ``parent`` (e.g. a series of a session)."""
    return uuid.uuid5(uuid.UUID(str(parent)), role)
