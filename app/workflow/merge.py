"""Patient merge from the EMR: the studies of a merged MRN move to the surviving patient.

Two sources say that a patient was merged into another:

- an HL7 v2 ``ADT^A40`` received by ``ebiw adt-listener`` (:class:`AdtMerge`, one answer per
  message: AA done or nothing to do, AE bad content or an unknown surviving patient, AR a
  message we do not take or a directory that cannot answer now);
- a FHIR ``Patient.link`` ``replaced-by``, which the FHIR patient directory follows when it
  looks a patient up (``PatientRecord.replaces``); ``ebiw patients merge-replaced``
  (:func:`merge_replaced`, a job run on a schedule) asks the directory about every patient
  who still has studies here and merges those it finds replaced.

Both call :func:`merge_patient`, which moves each study of the merged patient that still has
an instance to move through the one correction path (``corrections.move_to_patient``, reason
"patient merge"): corrected copies in a new study for the survivor, a rejection note for the
originals, PACS and EMR notified. A study once moved has nothing left to move, so a resent
message or a second run changes nothing: each study moves exactly once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Exists, exists, select
from sqlalchemy.orm import Session

from app.db.models import CaptureSession, Instance
from app.gateways.emr.adt import (
    APPLICATION_ERROR,
    SEGMENT_SEQUENCE_ERROR,
    UNKNOWN_KEY_IDENTIFIER,
    AdtRefused,
    MergeRequest,
    PatientKey,
    build_ack,
    parse_merge,
    read_header,
)
from app.gateways.patients import build_directories
from app.pipeline.dicom.kos import KOS_SOP_CLASS_UID
from app.workflow import audit
from app.workflow.corrections import (
    CorrectionError,
    DirectoryDown,
    PatientMove,
    directory_patient,
    move_to_patient,
)
from app.workflow.services import Services

log = logging.getLogger(__name__)

MERGE_REASON = "patient merge"
LINK_ACTOR = "fhir:Patient.link"  # the actor of merges found by merge_replaced


class MergeError(Exception):
    """A merge stopped part way: the studies before it were moved (and stay moved), the rest
    were not; running it again moves the rest. The message names UIDs at most."""


def studies_to_move(db: Session, patient: PatientKey) -> list[str]:
    """Study UIDs of ``patient``'s sessions that still have a shown instance other than a
    rejection note, oldest first: the studies a merge of that patient moves."""
    return list(db.scalars(select(CaptureSession.study_uid).where(
        CaptureSession.issuer == patient.issuer, CaptureSession.patient_id == patient.mrn,
        _movable()).order_by(CaptureSession.created_at, CaptureSession.study_uid)))


def _movable() -> Exists:
    """The condition "the session's study shows an instance other than a rejection note"."""
    return exists().where(Instance.study_uid == CaptureSession.study_uid, Instance.shown(),
                          Instance.sop_class_uid != KOS_SOP_CLASS_UID)


def merge_patient(services: Services, merged: PatientKey, surviving: PatientKey, *,
                  actor: str, detail: Mapping[str, object]) -> list[PatientMove]:
    """Move every study of ``merged`` that has anything left to move to ``surviving``.

    Guarantees: each study moves in its own correction transaction (see
    ``corrections.move_to_patient``), whose ``correction.patient`` record carries ``detail``;
    when anything moved, one ``patient.merge`` audit record names both patients, the studies
    (old → new) and ``detail``. A study that another correction emptied meanwhile is skipped.
    Raises :class:`~app.workflow.corrections.DirectoryDown` before anything moves when the
    directory cannot answer for ``surviving``, :class:`CorrectionError` when it does not know
    them, and :class:`MergeError` when a study cannot be moved (those before it stay moved).
    """
    directory_patient(services, surviving.mrn, surviving.issuer)
    with services.db.session() as db:
        studies = studies_to_move(db, merged)
    moves: list[PatientMove] = []
    for study_uid in studies:
        try:
            moves.append(move_to_patient(services, study_uid, surviving.mrn, surviving.issuer,
                                         MERGE_REASON, actor=actor, detail=detail))
        except CorrectionError as exc:
            with services.db.session() as db:
                if study_uid not in studies_to_move(db, merged):
                    continue  # moved or rejected by another correction meanwhile
            _audit_merge(services, merged, surviving, moves, actor, detail)
            raise MergeError(f"study {study_uid} could not be moved: {exc}") from exc
    _audit_merge(services, merged, surviving, moves, actor, detail)
    return moves


def _audit_merge(services: Services, merged: PatientKey, surviving: PatientKey,
                 moves: list[PatientMove], actor: str, detail: Mapping[str, object]) -> None:
    if not moves:
        return
    audit.append(services.db, actor, "patient.merge",
                 audit.patient_ref(merged.mrn, merged.issuer),
                 audit.patient_ref(surviving.mrn, surviving.issuer),
                 *(audit.study_ref(m.old_study_uid) for m in moves),
                 *(audit.study_ref(m.new_study_uid) for m in moves),
                 outcome=audit.SUCCESS, node=services.settings.node,
                 detail={**detail, "moved": {m.old_study_uid: m.new_study_uid for m in moves}})


# --- HL7 v2 ADT^A40 ----------------------------------------------------------------------------


class AdtMerge:
    """Answers each ADT message received by the MLLP listener (:meth:`answer`).

    Messages are handled one at a time in this process (a lock), so two copies of one merge
    never race; across processes each study still moves once (the rejection of its
    originals is conditional).
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self.allowed = services.settings.adt_allowed_sender_list
        self._lock = threading.Lock()

    def answer(self, er7: str) -> str:
        """The ACK (ER7) of ``er7``, after doing what it asks (see :meth:`handle`)."""
        header = read_header(er7)
        settings = self.services.settings
        ack = {"sending_application": settings.emr_hl7_sending_application,
               "sending_facility": settings.institution_name}
        try:
            moved = self.handle(er7)
        except AdtRefused as exc:
            refused = exc
        except Exception as exc:  # the database is down, say: the sender resends later
            log.error("ADT %s: %s, answered AR", header.control_id[:20] or "-",
                      type(exc).__name__)
            refused = AdtRefused("AR", APPLICATION_ERROR, "internal error; resend later")
        else:
            log.info("ADT %s from %s: AA, %d studies moved", header.control_id[:20],
                     header.sending_application[:20], len(moved))
            return build_ack(header, "AA", **ack)
        log.warning("ADT %s from %s: %s %s (%s)", header.control_id[:20] or "-",
                    header.sending_application[:20] or "-", refused.code, refused.error, refused)
        return build_ack(header, refused.code, error=refused.error, reason=str(refused), **ack)

    def handle(self, er7: str) -> list[PatientMove]:
        """Merge what an ``ADT^A40`` says was merged (see :func:`merge_patient`) and return
        the studies moved; none when the merged patient has no study here (answered AA all
        the same: nothing to do, as HL7 expects).

        Raises :class:`AdtRefused`: AE 100 for a message without MSH; what
        :func:`~app.gateways.emr.adt.parse_merge` refuses; AR 207 for a sending application
        (MSH-3) not in ``EBIW_ADT_ALLOWED_SENDERS``, or a patient directory that cannot
        answer now (resend later); AE 204 for a surviving patient the directory does not know
        (nothing changed); AE 207 for a study that could not be moved (the ones before it
        stay moved; a resend moves the rest).
        """
        header = read_header(er7)
        if not er7.lstrip().startswith("MSH"):
            raise AdtRefused("AE", SEGMENT_SEQUENCE_ERROR, "the message has no MSH segment")
        if header.sending_application not in self.allowed:
            raise AdtRefused("AR", APPLICATION_ERROR,
                             "the sending application is not allowed (EBIW_ADT_ALLOWED_SENDERS)")
        request = parse_merge(er7, default_issuer=self.services.settings.default_issuer)
        with self._lock:
            return self._merge(request)

    def _merge(self, request: MergeRequest) -> list[PatientMove]:
        for pair in request.pairs:  # every survivor known before anything moves
            self._check_known(pair.surviving)
        detail = {"source": "HL7 ADT^A40", "control_id": request.header.control_id,
                  "sender": request.header.sending_application}
        moves: list[PatientMove] = []
        for pair in request.pairs:
            try:
                moves += merge_patient(self.services, pair.merged, pair.surviving,
                                       actor=f"hl7:{request.header.sending_application}",
                                       detail=detail)
            except MergeError as exc:
                log.error("ADT %s: %s", request.header.control_id[:20], exc)
                raise AdtRefused("AE", APPLICATION_ERROR,
                                 "a study could not be moved; resend to retry") from exc
            except CorrectionError as exc:
                raise _directory_refusal(exc) from exc
        return moves

    def _check_known(self, patient: PatientKey) -> None:
        try:
            directory_patient(self.services, patient.mrn, patient.issuer)
        except CorrectionError as exc:
            raise _directory_refusal(exc) from exc


def _directory_refusal(exc: CorrectionError) -> AdtRefused:
    if isinstance(exc, DirectoryDown):
        return AdtRefused("AR", APPLICATION_ERROR,
                          "the patient directory cannot answer now; resend later")
    return AdtRefused("AE", UNKNOWN_KEY_IDENTIFIER,
                      "the surviving patient is not in the patient directory")


# --- FHIR Patient.link replaced-by ---------------------------------------------------------------


@dataclass(frozen=True)
class ReplacedReport:
    """What :func:`merge_replaced` did: patients asked about, those found replaced, studies
    moved (old → new Study UID), and the patients left for a later run (a directory could not
    answer for them, or for the patient that replaced them)."""

    checked: int
    merged: int
    moved: dict[str, str]
    left: int


def merge_replaced(services: Services) -> ReplacedReport:
    """Ask the patient directories about every patient who has a study to move here; merge
    each one a directory says was replaced (``PatientRecord.replaces``, from FHIR
    ``Patient.link``) into the patient that replaced them.

    Guarantees: a patient whose own record the directories still return is left alone; a
    study moves once however often this runs (see :func:`merge_patient`); a directory that
    cannot answer for a patient leaves that patient for the next run. Raises
    :class:`MergeError` when a study cannot be moved.
    """
    directories = build_directories(services.settings, services.db)
    with services.db.session() as db:
        patients = [PatientKey(issuer, mrn) for issuer, mrn in db.execute(
            select(CaptureSession.issuer, CaptureSession.patient_id).where(_movable())
            .distinct().order_by(CaptureSession.issuer, CaptureSession.patient_id))]
    merged = left = 0
    moved: dict[str, str] = {}
    for patient in patients:
        lookup = directories.find(patient.mrn, patient.issuer)
        key = (patient.issuer, patient.mrn)
        if any(p.key == key for p in lookup.patients):
            continue
        survivors = [p for p in lookup.patients if key in p.replaces]
        if len(survivors) != 1:
            left += bool(lookup.unavailable)
            continue
        survivor = PatientKey(survivors[0].issuer, survivors[0].mrn)
        try:
            moves = merge_patient(services, patient, survivor, actor=LINK_ACTOR,
                                  detail={"source": "FHIR Patient.link replaced-by"})
        except CorrectionError as exc:
            log.warning("Patient.link merge left for a later run: %s", exc)
            left += 1
            continue
        merged += 1
        moved.update({m.old_study_uid: m.new_study_uid for m in moves})
    return ReplacedReport(checked=len(patients), merged=merged, moved=moved, left=left)
