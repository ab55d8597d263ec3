"""The C-STORE SCP (``ebiw dicom-scp``): devices that send DIMSE store into our archive through
the same intake as STOW-RS (:class:`app.workflow.dicom_intake.DicomIntake`).

Associations are accepted only from the calling AE titles of ``EBIW_DICOM_SCP_ALLOWED_AETS``
and for our AE title (``EBIW_DICOM_SCP_AET``); anything else is rejected before a byte of data
arrives. Every storage SOP class is negotiated (in every transfer syntax pynetdicom knows), so
an object of a class we do not keep gets a clear per-object refusal (0x0122 with an Error
Comment) rather than an association its sender cannot explain. The object's bytes are the ones
received (``Event.encoded_dataset``), never decoded and re-encoded before the intake.
"""

from __future__ import annotations

import logging

from pydicom import Dataset
from pydicom.uid import UncompressedTransferSyntaxes as UNCOMPRESSED_SYNTAXES
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import OperationalError

from app.settings import Settings
from app.workflow.dicom_intake import DicomIntake

log = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = 0xA702
"""Refused: Out of Resources (PS3.4 B.2.3): the database did not answer; send it again later."""
MAX_COMMENT = 64  # Error Comment (0000,0902) is an LO
SYNTAXES = sorted(ALL_TRANSFER_SYNTAXES, key=lambda uid: uid in UNCOMPRESSED_SYNTAXES)
"""Every transfer syntax, compressed ones first: pynetdicom accepts the first of ours that a
sender proposes, so an object is received in its own encoding (a JPEG stays that JPEG)
whenever the sender also offers to convert it."""


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    if code:
        status.ErrorComment = comment[:MAX_COMMENT]
    return status


def store_handler(intake: DicomIntake) -> evt.EventHandlerType:
    """The EVT_C_STORE handler: one object through ``intake``; its status as the response."""

    def handle(event: evt.Event) -> Dataset:
        sender = f"dicom:{event.assoc.requestor.ae_title}"
        try:
            result = intake.receive(event.encoded_dataset(), sender=sender,
                                    sop_class_uid=str(event.request.AffectedSOPClassUID))
        except OperationalError as exc:
            log.error("C-STORE: database unavailable (%s)", type(exc.orig).__name__)
            return _status(DATABASE_UNAVAILABLE, "the database is unavailable: retry later")
        log.info("C-STORE from %s: status %04X", sender, result.status)
        return _status(int(result.status), result.reason)

    return (evt.EVT_C_STORE, handle)


def build_ae(settings: Settings) -> AE:
    """Our AE: title, calling AE allow-list, Verification and every storage SOP class.

    Raises ValueError when no calling AE title is allowed (an SCP nobody may use)."""
    allowed = settings.dicom_scp_allowed_aet_list
    if not allowed:
        raise ValueError("EBIW_DICOM_SCP_ALLOWED_AETS must name the devices' calling AE titles")
    ae = AE(ae_title=settings.dicom_scp_aet)
    ae.require_called_aet = True
    ae.require_calling_aet = list(allowed)
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, SYNTAXES)
    return ae


def start(settings: Settings, intake: DicomIntake, host: str, port: int, *,
          block: bool = True) -> ThreadedAssociationServer | None:
    """Serve C-STORE on ``host:port``: until the process is stopped (``block``), or in the
    background, returning the server (call its ``shutdown()``)."""
    ae = build_ae(settings)
    log.info("C-STORE SCP %s on %s:%d", settings.dicom_scp_aet, host, port)
    return ae.start_server((host, port), block=block, evt_handlers=[store_handler(intake)])
