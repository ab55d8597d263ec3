"""IHE IOCM rejection notes: a Key Object Selection document that rejects instances.

One KOS (Key Object Selection Document Storage, Modality KO) in its own series of the
rejected instances' study, built with highdicom: the Document Title is the rejection reason
(CID 7011 Rejected for Quality Reasons, Rejected for Patient Safety Reasons, Incorrect Modality
Worklist Entry, Data Retention Policy Expired), its content lists every rejected instance and
the Current Requested Procedure Evidence Sequence references them by study, series and SOP
instance, which is what an IOCM Image Manager (dcm4chee-arc, Orthanc's plugins) acts on.

Patient and study modules are copied from the first rejected instance (highdicom's evidence),
so the note sits in the same study as what it rejects. Pure: no clock (``content_datetime`` is
given), no randomness.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, DT, TM

from app.pipeline.dicom.builder import SOFTWARE_VERSION, file_meta
from app.pipeline.dicom.values import da, dt, tm

KOS_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document Storage
MANUFACTURER = "ebiw-capture"


class RejectionReason(StrEnum):
    """Why instances are rejected: the CLI's words for the KOS Document Titles (CID 7011)."""

    QUALITY = "quality"
    PATIENT_SAFETY = "patient-safety"
    WORKLIST = "worklist"
    RETENTION = "retention"

    @property
    def document_title(self) -> Code:
        """The KOS Document Title (DCM code) of this reason."""
        return _TITLES[self]


_TITLES = {
    RejectionReason.QUALITY: Code("113001", "DCM", "Rejected for Quality Reasons"),
    RejectionReason.PATIENT_SAFETY: Code("113037", "DCM",
                                         "Rejected for Patient Safety Reasons"),
    RejectionReason.WORKLIST: Code("113038", "DCM", "Incorrect Modality Worklist Entry"),
    RejectionReason.RETENTION: Code("113039", "DCM", "Data Retention Policy Expired"),
}


@dataclass(frozen=True)
class RejectionInfo:
    """Where the note goes and who made it.

    Attributes:
        series_uid, series_number: the note's own series.
        sop_uid: the note's SOP Instance UID.
        observer: who rejected: a DICOM PN, or a login name (written with a trailing caret).
        device_uid: the UID naming this software as the observing device.
        content_datetime: when the rejection was decided (with its UTC offset).
        description: free text kept in the KOS (Key Object Description), no PHI.
    """

    series_uid: str
    series_number: int
    sop_uid: str
    observer: str
    device_uid: str
    content_datetime: datetime
    description: str | None = None


def build_rejection_note(rejected: Sequence[Dataset], reason: RejectionReason,
                         info: RejectionInfo) -> bytes:
    """The KOS Part 10 bytes rejecting ``rejected`` (headers of instances of one study; pixel
    data not needed) for ``reason``.

    Guarantees: every rejected instance appears once in the content and once in the Current
    Requested Procedure Evidence Sequence; the same inputs give the same bytes. Raises
    ValueError for no instance or instances of several studies.
    """
    if not rejected:
        raise ValueError("a rejection note needs at least one instance")
    if len({str(ds.StudyInstanceUID) for ds in rejected}) != 1:
        raise ValueError("a rejection note rejects instances of one study")
    person = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=info.observer if "^" in info.observer else f"{info.observer}^"))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=info.device_uid, name=MANUFACTURER, manufacturer_name=MANUFACTURER))
    content = hd.ko.KeyObjectSelection(
        document_title=reason.document_title, referenced_objects=list(rejected),
        observer_person_context=person, observer_device_context=device,
        description=info.description or None)
    first = rejected[0]
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=list(rejected), content=content, series_instance_uid=info.series_uid,
        series_number=info.series_number, sop_instance_uid=info.sop_uid, instance_number=1,
        manufacturer=MANUFACTURER,
        institution_name=first.get("InstitutionName") or None,
        institutional_department_name=first.get("InstitutionalDepartmentName") or None)
    kos.SeriesDescription = reason.document_title.meaning[:64]
    kos.SoftwareVersions = SOFTWARE_VERSION
    if "IssuerOfPatientID" in first:
        kos.IssuerOfPatientID = first.IssuerOfPatientID
    stamp = info.content_datetime
    kos.ContentDate, kos.ContentTime = DA(da(stamp.date())), TM(tm(stamp))
    kos.SeriesDate, kos.SeriesTime = kos.ContentDate, kos.ContentTime
    kos.InstanceCreationDate, kos.InstanceCreationTime = kos.ContentDate, kos.ContentTime
    for library in kos.get("ContributingEquipmentSequence", []):  # highdicom stamps its clock
        library.ContributionDateTime = DT(dt(stamp))
    kos.SpecificCharacterSet = "ISO_IR 192"
    if stamp.utcoffset() is not None:
        kos.TimezoneOffsetFromUTC = stamp.strftime("%z")
    kos.file_meta = file_meta(KOS_SOP_CLASS_UID, info.sop_uid, kos.file_meta.TransferSyntaxUID)
    buf = io.BytesIO()
    kos.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def referenced_instances(kos: Dataset) -> list[tuple[str, str, str]]:
    """(study, series, SOP instance) UIDs the note's evidence sequence references, in order."""
    return [(str(study.StudyInstanceUID), str(series.SeriesInstanceUID),
             str(item.ReferencedSOPInstanceUID))
            for study in kos.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence]
