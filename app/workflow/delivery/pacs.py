"""Delivery to PACS destinations: the archived Part 10 bytes of a claim's instances, sent in one
batch (one STOW-RS request or one C-STORE association).

Only what the archive holds is sent, and only when it matches the index's SHA-256: a missing
index entry, a missing file or a mismatch is a permanent error (the row becomes dead), an
unreadable file a transient one. A rejected instance is never sent: a correction cancels its
rows, and one claimed before the correction committed is refused here. Each instance goes
through the destination's morph before it is sent. Every claimed row gets a result: an
instance the PACS did not report, or an unexpected exception (logged by type only: messages
may hold PHI), is a transient error, retried later.
Nothing here writes outbox rows; :mod:`.worker` records the results.
"""

from __future__ import annotations

import hashlib
import logging

from sqlalchemy import select

from app.db.models import Instance
from app.db.session import Database
from app.gateways.archive import Archive
from app.gateways.archive.pacs import OutgoingInstance
from app.gateways.errors import GatewayError, PermanentError, TransientError
from app.gateways.registry import Destination
from app.workflow.delivery.claims import Claim, Results

log = logging.getLogger(__name__)


def deliver(db: Database, archive: Archive, destination: Destination, claim: Claim) -> Results:
    """Read, check and morph the archived instances, then send them in one batch."""
    by_sop = {row.sop_uid: row.id for row in claim.rows}
    outcomes: Results = {}
    with db.session() as session:
        instances = {i.sop_uid: i for i in session.scalars(
            select(Instance).where(Instance.sop_uid.in_(list(by_sop))))}
    outgoing: list[OutgoingInstance] = []
    for sop_uid, row_id in by_sop.items():
        try:
            outgoing.append(OutgoingInstance(
                sop_uid, destination.morph.apply(archived(archive, instances.get(sop_uid)))))
        except GatewayError as error:
            outcomes[row_id] = error
    if not outgoing:
        return outcomes
    try:
        sent = destination.pacs.store(claim.study_uid, outgoing)
    except GatewayError as error:
        sent = {o.sop_uid: error for o in outgoing}
    except Exception as exc:  # a bug or an unexpected library error: retry later
        log.error("delivery to %s: unexpected %s", destination.name, type(exc).__name__)
        sent = {o.sop_uid: TransientError(f"unexpected {type(exc).__name__}")
                for o in outgoing}
    for item in outgoing:
        outcomes[by_sop[item.sop_uid]] = sent.get(
            item.sop_uid, TransientError("the PACS did not report this instance"))
    return outcomes


def archived(archive: Archive, instance: Instance | None) -> bytes:
    """The archived bytes of an instance, checked against the index's SHA-256; a
    PermanentError for an instance not indexed, rejected, missing or altered."""
    if instance is None:
        raise PermanentError("the instance is not in the archive index")
    if instance.rejected_at is not None:
        raise PermanentError("the instance was rejected (IOCM): not sent")
    try:
        data = archive.read(instance)
    except FileNotFoundError as exc:
        raise PermanentError("the archived file is missing") from exc
    except OSError as exc:
        raise TransientError("the archived file cannot be read") from exc
    if hashlib.sha256(data).hexdigest() != instance.sha256:
        raise PermanentError("the archived file does not match its index")
    return data
