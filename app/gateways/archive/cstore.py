"""DIMSE C-STORE destination (pynetdicom): one association per batch of a study.

Each instance is offered in its own transfer syntax only (our photos: JPEG Baseline
``1.2.840.10008.1.2.4.50``), so the encapsulated JPEG travels as archived and is never
transcoded. Outcomes: no connection, a transient association rejection (or an abort, a
timeout) is transient; a permanent rejection (for example an unknown called AE title) or no
accepted presentation context is permanent; each C-STORE status is classified by
:func:`dimse_status_error`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset, dcmread
from pynetdicom import AE
from pynetdicom.association import Association

from app.gateways.archive.pacs import OutgoingInstance, dimse_status_error
from app.gateways.errors import GatewayError, PermanentError, TransientError

CONNECT_TIMEOUT_SECONDS = 5.0
_REJECTED_PERMANENT = 0x01


@dataclass
class CStoreDestination:
    """A C-STORE SCP at ``host:port`` called ``called_aet``; we call ourselves ``calling_aet``."""

    name: str
    host: str
    port: int
    called_aet: str
    calling_aet: str = "EBIW"
    timeout_seconds: float = 30.0

    def store(self, study_uid: str,
              instances: Sequence[OutgoingInstance]) -> dict[str, GatewayError | None]:
        """C-STORE every instance over one association; see :class:`PacsDestination`."""
        outcomes: dict[str, GatewayError | None] = {}
        datasets: list[Dataset] = []
        for instance in instances:
            try:
                datasets.append(dcmread(io.BytesIO(instance.data)))
            except Exception:  # pydicom raises many types on damaged input
                outcomes[instance.sop_uid] = PermanentError("the object cannot be parsed")
        if not datasets:
            return outcomes
        ae = AE(ae_title=self.calling_aet)
        ae.connection_timeout = CONNECT_TIMEOUT_SECONDS
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_seconds
        for context in sorted({(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
                               for ds in datasets}):
            ae.add_requested_context(*context)
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet)
        if not assoc.is_established:
            raise _association_error(assoc)
        try:
            for ds in datasets:
                outcomes[ds.SOPInstanceUID] = self._send(assoc, ds)
        finally:
            if assoc.is_established:
                assoc.release()
        return outcomes

    @staticmethod
    def _send(assoc: Association, ds: Dataset) -> GatewayError | None:
        """One C-STORE on an established association."""
        if not assoc.is_established:
            return TransientError("the association was lost")
        try:
            status = assoc.send_c_store(ds)
        except ValueError:
            return PermanentError("the PACS accepted no presentation context for this object")
        if "Status" not in status:
            return TransientError("no C-STORE response (timeout or abort)")
        return dimse_status_error(int(status.Status))


def _association_error(assoc: Association) -> GatewayError:
    """Why an association was not established, as a transient or permanent error."""
    answer = assoc.acceptor.primitive
    if assoc.is_rejected and answer is not None:
        reason = f"association rejected: {answer.reason_str.lower()}"
        if answer.result == _REJECTED_PERMANENT:
            return PermanentError(reason)
        return TransientError(reason)
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        return PermanentError("the PACS accepted no presentation context (JPEG Baseline)")
    return TransientError("cannot associate with the PACS")
