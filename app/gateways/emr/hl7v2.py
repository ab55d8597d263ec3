"""HL7 v2.5.1 ``ORU^R01`` over MLLP: the IHE EBIW Notify of Imaging Result [RAD-132].

Built and parsed with hl7apy (strict structure validation of what we send). One message per
new state of a study (see below): the Message Control ID
(MSH-10) is derived from the Study UID and that number, so a retry resends the very same
control ID and the receiver can drop the duplicate; a state the receiver already accepted is
not sent again. The first notice has result status F, later ones C (photos or measurement
reports added, or some rejected: IHE IOCM); when every instance of the study was rejected
(wrong patient, say) the correction's OBX-11 is W, "post original as wrong" (HL7 table 0085).
The state is ``StudyFacts.state``, which grows with every addition and rejection
(``hl7_notice.instance_count`` keeps it; it equals the instance count until something is
rejected). Each measured wound value is a numeric OBX (type NM): LOINC and SNOMED CT code as in
the FHIR Observation, UCUM units, OBX-11 W for a value whose SR or photo was rejected, OBX-4
grouping the values of one wound's region, OBX-14 the photo's time, OBX-19 when it was
measured (v2.5.1's OBX ends there: the body site, OBX-20 from v2.6 on, is not sent). Each
warning a value carries (far from the colour chart, extreme tilt) follows its OBX as an NTE
(the observation group's comment segment): NTE-2 L, the filler is its source (table 0105),
NTE-3 the warning's message.

Acknowledgements (original mode, HL7 table 0008):
``AA``/``CA`` accepted; ``AR`` — rejected for reasons unrelated to the content (the receiver
is down or busy; HL7 says resend later, unchanged) -> TransientError; ``AE``, ``CE``, ``CR``
— the message itself is in error -> PermanentError (resending the same bytes cannot help).
No answer, a broken connection or an ACK for another control ID -> TransientError.
"""

from __future__ import annotations

import base64
import hashlib
import socket
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.factories import datatype_factory
from hl7apy.parser import parse_message
from sqlalchemy.orm import Session

from app.db.models import Hl7Notice
from app.gateways.emr.study import StudyRecord, load_study
from app.gateways.errors import PermanentError, TransientError
from app.pipeline.fhir import viewer_url
from app.pipeline.fhir_observation import ENTERED_IN_ERROR, QUANTITY_CODES, MeasuredValue
from app.pipeline.geometry import WARNINGS
from app.settings import Settings

VERSION = "2.5.1"
START, END = b"\x0b", b"\x1c\r"
MAX_ACK_BYTES = 1 << 20
STUDY_UID_CODE = ("110180", "Study Instance UID", "DCM")
INSTANCES_CODE = ("NINST", "Number of Study Related Instances", "L")
VIEWER_CODE = ("VIEWER", "Study viewer", "L")
PROCEDURE_CODE = ("XC", "External-camera Photography", "DCM")
_HL7_SEX = {"F": "F", "M": "M", "O": "O"}


def control_id(study_uid: str, version: int) -> str:
    """MSH-10 for a state of a study: 20 characters (the v2.5.1 maximum), deterministic."""
    digest = hashlib.sha256(f"{study_uid}/{version}".encode()).digest()
    return base64.b32encode(digest).decode()[:20]


def filler_order_number(study_uid: str) -> str:
    """OBR-3: a short, stable identifier of the study's result (every notice shares it)."""
    return base64.b32encode(hashlib.sha256(study_uid.encode()).digest()).decode()[:16]


def _st(value: str, kind: str = "ST") -> Any:  # an hl7apy datatype (hl7apy is untyped)
    """A datatype value: hl7apy escapes ``| ^ & ~ \\`` in it when the message is encoded."""
    return datatype_factory(kind, value, version=VERSION)


def _ts(value: datetime | date) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y%m%d%H%M%S%z")
    return value.strftime("%Y%m%d")


def build_oru(record: StudyRecord, settings: Settings, message_id: str, *,
              correction: bool, now: datetime | None = None) -> str:
    """The ORU^R01 (ER7 text, segments ended by CR) announcing the study's current state."""
    facts = record.facts
    msg = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = msg.msh
    msh.msh_3.hd_1 = _st(settings.emr_hl7_sending_application, "IS")
    if settings.institution_name:
        msh.msh_4.hd_1 = _st(settings.institution_name, "IS")
    if settings.emr_hl7_receiving_application:
        msh.msh_5.hd_1 = _st(settings.emr_hl7_receiving_application, "IS")
    if settings.emr_hl7_receiving_facility:
        msh.msh_6.hd_1 = _st(settings.emr_hl7_receiving_facility, "IS")
    msh.msh_7 = _ts(now or datetime.now(UTC))
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = message_id
    msh.msh_11 = "P"
    msh.msh_18 = "UNICODE UTF-8"

    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    patient = result.add_group("ORU_R01_PATIENT")
    pid = patient.pid
    pid.pid_1 = "1"
    pid.pid_3.cx_1 = _st(record.mrn)
    pid.pid_3.cx_4.hd_1 = _st(record.issuer, "IS")
    pid.pid_3.cx_5 = "MR"
    if record.patient_name:
        # DICOM PN family^given^middle^prefix^suffix -> HL7 XPN family^given^middle^suffix^prefix
        parts = (record.patient_name.split("=")[0].split("^") + [""] * 5)[:5]
        pid.pid_5.xpn_1.fn_1 = _st(parts[0] or "-")
        for field, value in (("xpn_2", parts[1]), ("xpn_3", parts[2]),
                             ("xpn_4", parts[4]), ("xpn_5", parts[3])):
            if value:
                setattr(pid.pid_5, field, _st(value))
    if record.birth_date:
        pid.pid_7 = _ts(record.birth_date)
    pid.pid_8 = _HL7_SEX.get(record.sex or "", "U")
    if record.encounter:
        pv1 = patient.add_group("ORU_R01_VISIT").pv1
        pv1.pv1_1 = "1"
        pv1.pv1_2 = "U"
        pv1.pv1_19.cx_1 = _st(record.encounter)

    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.orc.orc_1 = "RE"
    obr = order.obr
    obr.obr_1 = "1"
    obr.obr_3.ei_1 = _st(filler_order_number(facts.uid))
    obr.obr_3.ei_2 = _st(settings.emr_hl7_sending_application, "IS")
    obr.obr_4 = "^".join(PROCEDURE_CODE)
    obr.obr_7 = _ts(facts.started)
    if facts.accession_number:
        obr.obr_18 = _st(facts.accession_number)
    obr.obr_25 = "C" if correction else "F"
    # OBX-11 (table 0085): W "post original as wrong, e.g. transmitted for wrong patient" when
    # every instance was rejected; table 0123 (OBR-25) has no such code, so OBR-25 stays C.
    wrong = facts.status == "entered-in-error"
    viewer = viewer_url(settings.public_url, facts.uid)
    observations = (("ST", STUDY_UID_CODE, facts.uid),
                    ("NM", INSTANCES_CODE, str(facts.instance_count)),
                    ("RP", VIEWER_CODE, viewer))
    for number, (kind, code, value) in enumerate(observations, start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(number)
        obx.obx_2 = kind
        obx.obx_3 = "^".join(code)
        # OBX-5 "varies": given as ER7, escaped by hl7apy's ST (a URL may hold & or ~)
        escaped = _st(value).to_er7()
        obx.obx_5 = f"{escaped}^^TEXT^HTML" if kind == "RP" else escaped
        obx.obx_11 = "W" if wrong else obr.obr_25.value
        obx.obx_14 = _ts(facts.started)
    for number, (sub_id, measured) in enumerate(_grouped(record.measurements),
                                             start=len(observations) + 1):
        coded = QUANTITY_CODES[measured.quantity]
        group = order.add_group("ORU_R01_OBSERVATION")
        obx = group.obx
        obx.obx_1 = str(number)
        obx.obx_2 = "NM"
        obx.obx_3 = "^".join((*coded.loinc, "LN", *coded.snomed, "SCT") if coded.loinc
                             else (*coded.snomed, "SCT"))
        obx.obx_4 = sub_id
        obx.obx_5 = f"{measured.value:.2f}"
        obx.obx_6 = f"{measured.unit}^{measured.unit}^UCUM"
        obx.obx_11 = "W" if wrong or measured.status == ENTERED_IN_ERROR else obr.obr_25.value
        obx.obx_14 = _ts(measured.taken_at)
        obx.obx_19 = _ts(measured.measured_at)
        for n, warning in enumerate(measured.warnings, start=1):
            nte = group.add_segment("NTE")
            nte.nte_1 = str(n)
            nte.nte_2 = "L"
            nte.nte_3 = _st(WARNINGS[warning], "FT")
    if not msg.validate():
        raise PermanentError("the ORU^R01 failed HL7 v2.5.1 structure validation")
    return msg.to_er7()


def _grouped(values: Sequence[MeasuredValue]) -> list[tuple[str, MeasuredValue]]:
    """Each measured value with its OBX-4 sub-ID ``<wound>.<region>``: wounds numbered in the
    order they first appear, regions (one line or outline of one SR) within each wound, so the
    values of one region (an outline's area and perimeter) share a sub-ID."""
    wounds: dict[str, dict[tuple[str, int], int]] = {}
    out = []
    for value in values:
        regions = wounds.setdefault(value.tracking_uid, {})
        region = regions.setdefault((value.report_uid, value.region), len(regions) + 1)
        out.append((f"{list(wounds).index(value.tracking_uid) + 1}.{region}", value))
    return out


class Hl7v2Notifier:
    """Sends ORU^R01 notices to the MLLP receiver at ``EBIW_EMR_MLLP_ADDRESS``."""

    name = "hl7v2"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        host, _, port = settings.emr_mllp_address.rpartition(":")
        self.address = (host, int(port))

    def notify(self, db: Session, study_uid: str) -> None:
        """Send the study's current state unless the receiver already accepted it.

        Guarantees: the same state always goes with the same control ID; once a receiver
        answers AA the state is recorded in ``db`` (the caller commits) and not sent again.
        """
        record = load_study(db, study_uid)
        version = record.facts.state
        notice = db.get(Hl7Notice, study_uid)
        if notice is not None and notice.instance_count >= version:
            return
        message_id = control_id(study_uid, version)
        er7 = build_oru(record, self.settings, message_id, correction=notice is not None)
        self._check_ack(self._exchange(er7.encode("utf-8")), message_id)
        if notice is None:
            db.add(Hl7Notice(study_uid=study_uid, instance_count=version,
                             control_id=message_id))
        else:
            notice.instance_count, notice.control_id = version, message_id
            notice.accepted_at = datetime.now(UTC)

    def _exchange(self, payload: bytes) -> bytes:
        """Send one MLLP frame and return the payload of the answer frame."""
        timeout = self.settings.emr_timeout_seconds
        try:
            with socket.create_connection(self.address, timeout=timeout) as conn:
                conn.sendall(START + payload + END)
                answer = b""
                while END not in answer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        raise TransientError("the HL7 receiver closed the connection "
                                             "without an acknowledgement")
                    answer += chunk
                    if len(answer) > MAX_ACK_BYTES:
                        raise TransientError("the HL7 receiver's answer is too long")
        except OSError as exc:  # refused, reset, timed out
            raise TransientError(f"HL7 receiver unreachable ({type(exc).__name__})") from exc
        return answer[answer.find(START) + 1:answer.find(END)]

    @staticmethod
    def _check_ack(payload: bytes, message_id: str) -> None:
        """Raise unless the answer accepts ``message_id`` (see the module doc for the codes).

        Reasons name the acknowledgement code and the HL7 error code (table 0357) only:
        MSA-3 and ERR texts may quote the message, so they are never repeated.
        """
        try:
            ack = parse_message(payload.decode("utf-8", "replace").replace("\n", "\r"),
                                find_groups=False)
            code = (ack.msa.msa_1.value or "").upper()
            acked_id = ack.msa.msa_2.value
            error = ack.err.err_3.cwe_1.value if ack.err else None
        except (HL7apyException, AttributeError, IndexError) as exc:
            raise TransientError("the HL7 receiver's answer is not an ACK") from exc
        if acked_id != message_id:
            raise TransientError("the HL7 receiver acknowledged another message")
        if code in ("AA", "CA"):
            return
        detail = f" (error {error})" if error and error.isdigit() else ""
        if code == "AR":
            raise TransientError(f"the HL7 receiver rejected the notice for now: AR{detail}")
        raise PermanentError(f"the HL7 receiver refused the notice: {code or '?'}{detail}")
