"""Patients and scheduled steps from a DICOM Modality Worklist (C-FIND, pynetdicom).

The query asks for today's Scheduled Procedure Steps of one modality (XC, visible-light
photography) for a Patient ID and, when known, its Issuer of Patient ID. Each answer becomes a
:class:`~app.gateways.patients.WorklistItem` (Study Instance UID, Accession Number — possibly
empty —, Requested Procedure, Scheduled Procedure Step) of the patient, whose Admission ID is
offered as an encounter. Tested against DCMTK ``wlmscpfs``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, time

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from app.gateways.patients import (
    DirectoryRejected,
    DirectoryUnavailable,
    EncounterRecord,
    PatientRecord,
    WorklistItem,
)

_PENDING = (0xFF00, 0xFF01)
_WILDCARDS = ("*", "?", "\\")


class WorklistDirectory:
    """The :class:`~app.gateways.patients.PatientDirectory` of a Modality Worklist SCP."""

    name = "mwl"

    def __init__(self, host: str, port: int, called_aet: str, *, calling_aet: str,
                 modality: str, timeout: float, default_issuer: str,
                 today: Callable[[], date] = date.today) -> None:
        self.host = host
        self.port = port
        self.called_aet = called_aet
        self.calling_aet = calling_aet
        self.modality = modality
        self.timeout = timeout
        self.default_issuer = default_issuer
        self.today = today

    def find(self, mrn: str, issuer: str | None) -> list[PatientRecord]:
        """Today's scheduled steps for this Patient ID (and issuer), grouped by patient.

        Guarantees: only items whose Patient ID equals ``mrn`` exactly (an MRN with DICOM
        wildcards finds nobody) and, when ``issuer`` is given, whose issuer equals it; items
        without a Study Instance UID are left out (a session could not adopt them).
        Raises :class:`DirectoryUnavailable` (no association, timeout, SCP failure status).
        """
        if not mrn or any(c in mrn for c in _WILDCARDS):
            return []
        patients: dict[tuple[str, str], PatientRecord] = {}
        for answer in self._query(self._identifier(mrn, issuer)):
            record = self._record(answer)
            if record is None or record.mrn != mrn or (issuer is not None
                                                       and record.issuer != issuer):
                continue
            known = patients.get(record.key)
            if known is not None:
                record = replace(known, encounters=known.encounters + tuple(
                    e for e in record.encounters if e not in known.encounters),
                    worklist=known.worklist + record.worklist)
            patients[record.key] = record
        return list(patients.values())

    def _identifier(self, mrn: str, issuer: str | None) -> Dataset:
        """The C-FIND identifier: matching keys and the return keys we use."""
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientID = mrn
        ds.IssuerOfPatientID = issuer or ""
        for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                        "StudyInstanceUID", "RequestedProcedureID",
                        "RequestedProcedureDescription", "AdmissionID"):
            setattr(ds, keyword, "")
        step = Dataset()
        step.Modality = self.modality
        step.ScheduledProcedureStepStartDate = self.today().strftime("%Y%m%d")
        for keyword in ("ScheduledProcedureStepStartTime", "ScheduledProcedureStepID",
                        "ScheduledProcedureStepDescription", "ScheduledStationAETitle"):
            setattr(step, keyword, "")
        ds.ScheduledProcedureStepSequence = [step]
        return ds

    def _query(self, identifier: Dataset) -> list[Dataset]:
        ae = AE(ae_title=self.calling_aet)
        ae.add_requested_context(ModalityWorklistInformationFind)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet)
        if not assoc.is_established:
            reason = "rejected the association" if assoc.is_rejected else "cannot be reached"
            raise DirectoryUnavailable(f"the worklist (MWL) {reason}")
        answers: list[Dataset] = []
        try:
            for status, found in assoc.send_c_find(identifier, ModalityWorklistInformationFind):
                if not status:
                    raise DirectoryUnavailable("the worklist (MWL) did not answer within "
                                               f"{self.timeout:g} s")
                code = int(status.Status)
                if code in _PENDING and found is not None:
                    answers.append(found)
                elif code not in _PENDING and code != 0x0000:
                    raise DirectoryRejected(f"the worklist (MWL) refused the query "
                                            f"(status 0x{code:04X})")
        finally:
            if assoc.is_established:
                assoc.release()
        return answers

    def _record(self, ds: Dataset) -> PatientRecord | None:
        step = ds.ScheduledProcedureStepSequence[0] if ds.get(
            "ScheduledProcedureStepSequence") else Dataset()
        study_uid = str(ds.get("StudyInstanceUID") or "")
        if not study_uid:
            return None
        admission = str(ds.get("AdmissionID") or "") or None
        name = ds.get("PatientName")
        sex = str(ds.get("PatientSex") or "")
        item = WorklistItem(
            study_uid=study_uid, accession_number=str(ds.get("AccessionNumber") or ""),
            requested_procedure_id=str(ds.get("RequestedProcedureID") or ""),
            requested_procedure_description=str(ds.get("RequestedProcedureDescription") or ""),
            scheduled_step_id=str(step.get("ScheduledProcedureStepID") or ""),
            scheduled_start=_start(str(step.get("ScheduledProcedureStepStartDate") or ""),
                                   str(step.get("ScheduledProcedureStepStartTime") or "")),
            modality=str(step.get("Modality") or self.modality), admission_id=admission)
        return PatientRecord(
            mrn=str(ds.get("PatientID") or ""),
            issuer=str(ds.get("IssuerOfPatientID") or "") or self.default_issuer,
            family=str(name.family_name) if name else "",
            given=str(name.given_name) if name else "",
            birth_date=_date(str(ds.get("PatientBirthDate") or "")),
            sex=sex if sex in ("F", "M", "O") else None, sources=("mwl",),
            encounters=(EncounterRecord(admission, None),) if admission else (),
            worklist=(item,))


def _date(value: str) -> date | None:
    try:
        return datetime.strptime(value, "%Y%m%d").date() if value else None
    except ValueError:
        return None


def _start(day: str, clock: str) -> datetime | None:
    """Scheduled start as a naive local date-time (DA + TM; TM may omit minutes/seconds)."""
    on = _date(day)
    if on is None:
        return None
    digits = clock.split(".")[0]
    try:
        at = time(int(digits[0:2] or 0), int(digits[2:4] or 0), int(digits[4:6] or 0))
    except ValueError:
        at = time()
    return datetime.combine(on, at)
