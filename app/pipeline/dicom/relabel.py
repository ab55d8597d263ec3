"""Corrected copies of stored instances for another patient (IHE IOCM "patient move").

A copy is the same object with new identities: every UID the ``uids`` map names (SOP
Instance, Series, Study, references between the copied instances, wound tracking UIDs) is
replaced wherever it appears, nested sequences included, and the Patient Module is the
right patient's. What identifies the wrong patient's context goes: the Admission ID (an
encounter of the other patient), the Accession Number and the worklist request. Pixel data
and every other attribute are kept as stored (a JPEG stays bit-exact). Pure.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

from pydicom import Dataset
from pydicom.uid import UID

from app.pipeline.dicom.builder import PatientInfo, patient_module
from app.pipeline.dicom.read import read_part10

_WRONG_CONTEXT = ("AdmissionID", "RequestAttributesSequence", "ReferencedRequestSequence")


def _remap(ds: Dataset, uids: Mapping[str, str]) -> None:
    for element in ds.iterall():
        if element.VR != "UI" or element.value is None:
            continue
        if isinstance(element.value, str):
            if element.value in uids:
                element.value = UID(uids[element.value])
        else:
            element.value = [UID(uids.get(str(v), str(v))) for v in element.value]


def corrected_copy(data: bytes, uids: Mapping[str, str], patient: PatientInfo) -> bytes:
    """The Part 10 bytes of ``data`` for ``patient`` with every UID in ``uids`` replaced.

    Guarantees: the SOP Instance UID (and the file meta's copy of it) is mapped, so the copy
    never collides with its original; the Study and Series UIDs are mapped when ``uids``
    names them. Raises :class:`~app.pipeline.dicom.read.UnreadableDicomError` for bytes that
    are not DICOM, and KeyError when ``uids`` has no new SOP Instance UID for the object.
    """
    ds = read_part10(data)
    new_sop = uids[str(ds.SOPInstanceUID)]
    _remap(ds, uids)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(new_sop)
    patient_module(ds, patient)
    ds.AccessionNumber = ""
    for keyword in _WRONG_CONTEXT:
        if keyword in ds:
            delattr(ds, keyword)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
