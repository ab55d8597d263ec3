"""Inbound HL7 v2 from the EMR: ``ADT^A40`` (merge patient) over MLLP, and its ACK.

:func:`parse_merge` reads a message (hl7apy, any version it knows) into a :class:`MergeRequest`:
for each PID/MRG pair, the surviving patient (PID-3) and the merged one (MRG-1), each an
identifier ``MRN^^^issuer^MR`` (the repetition typed ``MR``, else the first; the issuer is
the assigning authority's namespace ID, else its universal ID, else ``EBIW_DEFAULT_ISSUER``).
Bad input raises :class:`AdtRefused` with the acknowledgement code and HL7 error code
(table 0357) to answer with; its text never quotes the message (identifiers are PHI).
:func:`build_ack` writes the original-mode ACK. :class:`MllpListener` serves MLLP frames on
a socket, one answer per frame, and hands each message to a callable.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socketserver
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

log = logging.getLogger(__name__)

ACK_VERSION = "2.5.1"
START, END = b"\x0b", b"\x1c\r"
MAX_MESSAGE_BYTES = 1 << 20
IDLE_SECONDS = 300  # a connection with no frame for this long is closed

# HL7 table 0357 (message error condition codes) used in ERR-3
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_VERSION = "203"
UNKNOWN_KEY_IDENTIFIER = "204"
APPLICATION_ERROR = "207"
_ERROR_TEXT = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNSUPPORTED_VERSION: "Unsupported version id",
    UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    APPLICATION_ERROR: "Application internal error",
}


class AdtRefused(Exception):
    """The message is answered ``code`` (AE: its content is in error; AR: rejected, e.g. a
    message type we do not take or a directory that cannot answer now) with HL7 error
    ``error`` (table 0357). ``str()`` is a reason without PHI, sent as MSA-3."""

    def __init__(self, code: str, error: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.error = code, error


@dataclass(frozen=True)
class PatientKey:
    """A patient as our studies name them: (Issuer of Patient ID, Patient ID)."""

    issuer: str
    mrn: str


@dataclass(frozen=True)
class MergePair:
    """One PID/MRG pair of an A40: ``merged`` becomes ``surviving``."""

    surviving: PatientKey
    merged: PatientKey


@dataclass(frozen=True)
class Header:
    """What an ACK needs of the message it answers (read even from a message that cannot be
    parsed as a whole): MSH-3, MSH-4, MSH-10 and the trigger event of MSH-9."""

    sending_application: str
    sending_facility: str
    control_id: str
    event: str


@dataclass(frozen=True)
class MergeRequest:
    """An ADT^A40: its header and its PID/MRG pairs, in message order."""

    header: Header
    pairs: tuple[MergePair, ...]


def read_header(er7: str) -> Header:
    """The MSH fields an ACK needs; empty strings for what is missing. Never raises."""
    first = er7.lstrip().split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        return Header("", "", "", "")
    separator, encoding = first[3], first[4:8]
    # msh[n] is MSH-n (MSH-1 is the separator itself)
    msh = ["MSH", separator, *first.split(separator)[1:], *[""] * 10]
    components = encoding[0]
    message_type = msh[9].split(components)
    return Header(_unescape(msh[3].split(components)[0], encoding),
                  _unescape(msh[4].split(components)[0], encoding),
                  _unescape(msh[10], encoding),
                  message_type[1] if len(message_type) > 1 else "")


def parse_merge(er7: str, *, default_issuer: str) -> MergeRequest:
    """The merge request of an ``ADT^A40`` (ER7, segments ended by CR; LF is accepted).

    Guarantees: at least one pair; every identifier has an MRN and an issuer; a surviving
    patient differs from the merged one. Raises :class:`AdtRefused`: AR 200/201/203 for
    another message type, event or an unknown HL7 version; AE 100/101 for a message that
    cannot be parsed, an MRG without its PID, a missing MRG, PID-3 or MRG-1.
    """
    er7 = er7.replace("\r\n", "\r").replace("\n", "\r")
    header = read_header(er7)
    try:
        message = parse_message(er7, find_groups=False,
                                validation_level=VALIDATION_LEVEL.TOLERANT)
    except HL7apyException as exc:
        if type(exc).__name__ == "UnsupportedVersion":
            raise AdtRefused("AR", UNSUPPORTED_VERSION, "unsupported HL7 version") from None
        raise AdtRefused("AE", SEGMENT_SEQUENCE_ERROR, "the message cannot be parsed") from None
    kind = (message.msh.msh_9.msg_1.value or "").upper()
    event = (message.msh.msh_9.msg_2.value or "").upper()
    if kind != "ADT":
        raise AdtRefused("AR", UNSUPPORTED_MESSAGE_TYPE, "only ADT^A40 is accepted")
    if event != "A40":
        raise AdtRefused("AR", UNSUPPORTED_EVENT_CODE, "only ADT^A40 is accepted")
    encoding = message.msh.msh_2.value
    pairs: list[MergePair] = []
    surviving: PatientKey | None = None
    for segment in message.children:
        if segment.name == "PID":
            surviving = _identifier(segment.pid_3, encoding, default_issuer, "PID-3")
        elif segment.name == "MRG":
            if surviving is None:
                raise AdtRefused("AE", SEGMENT_SEQUENCE_ERROR, "an MRG segment without its PID")
            merged = _identifier(segment.mrg_1, encoding, default_issuer, "MRG-1")
            if merged == surviving:
                raise AdtRefused("AE", UNKNOWN_KEY_IDENTIFIER,
                                 "the merged patient is the surviving patient")
            pairs.append(MergePair(surviving, merged))
            surviving = None
    if not pairs:
        raise AdtRefused("AE", REQUIRED_FIELD_MISSING, "the MRG segment is missing")
    return MergeRequest(header, tuple(pairs))


def _identifier(field: Any, encoding: str, default_issuer: str, name: str) -> PatientKey:
    """The patient identifier of a CX field (hl7apy repetitions): the one typed MR, else the
    first with a value."""
    found = [(_unescape(r.cx_1.to_er7(), encoding), r) for r in field]
    found = [(mrn, r) for mrn, r in found if mrn.strip()]
    if not found:
        raise AdtRefused("AE", REQUIRED_FIELD_MISSING, f"{name} has no patient identifier")
    mrn, cx = next(((m, r) for m, r in found if r.cx_5.to_er7().upper() == "MR"), found[0])
    issuer = (_unescape(cx.cx_4.hd_1.to_er7(), encoding)
              or _unescape(cx.cx_4.hd_2.to_er7(), encoding) or default_issuer)
    return PatientKey(issuer=issuer.strip(), mrn=mrn.strip())


def _unescape(value: str, encoding: str) -> str:
    r"""An ER7 value with the escapes ``\F\ \S\ \T\ \R\ \E\`` (HL7 v2 §2.7) replaced;
    ``encoding`` is MSH-2 (component, repetition, escape, subcomponent characters)."""
    if len(encoding) < 4 or encoding[2] not in value:
        return value
    chars = {"F": "|", "S": encoding[0], "R": encoding[1], "E": encoding[2], "T": encoding[3]}
    return re.sub(re.escape(encoding[2]) + "([FSTRE])" + re.escape(encoding[2]),
                  lambda m: chars[m.group(1)], value)


def build_ack(header: Header, code: str, *, sending_application: str, sending_facility: str,
              error: str | None = None, reason: str = "") -> str:
    """An original-mode ACK (HL7 v2.5.1, ER7) of the message ``header`` describes: MSA-1
    ``code``, MSA-2 its control ID; with ``error``, MSA-3 ``reason`` and an ERR segment
    (ERR-3 the table 0357 code, ERR-4 severity E). Validated by hl7apy."""
    ack = Message("ACK", version=ACK_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    ack.msh.msh_3 = _text(sending_application)
    if sending_facility:
        ack.msh.msh_4 = _text(sending_facility)
    if header.sending_application:
        ack.msh.msh_5 = _text(header.sending_application)
    if header.sending_facility:
        ack.msh.msh_6 = _text(header.sending_facility)
    ack.msh.msh_7 = datetime.now(UTC).strftime("%Y%m%d%H%M%S%z")
    ack.msh.msh_9 = f"ACK^{header.event or 'A40'}^ACK"
    ack.msh.msh_10 = uuid.uuid4().hex[:20]
    ack.msh.msh_11 = "P"
    ack.msa.msa_1 = code
    ack.msa.msa_2 = _text(header.control_id)
    if error is not None:
        ack.msa.msa_3 = _text(reason[:80])
        ack.add_segment("ERR")
        ack.err.err_3 = f"{error}^{_ERROR_TEXT[error]}^HL70357"
        ack.err.err_4 = "E"
    return str(ack.to_er7())


def _text(value: str) -> str:
    """``value`` escaped for an ER7 field of the ACK (our delimiters are the default ones)."""
    for char, escape in (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"),
                         ("~", "\\R\\")):
        value = value.replace(char, escape)
    return value


# --- MLLP ------------------------------------------------------------------------------------


class MllpListener(socketserver.ThreadingTCPServer):
    """An MLLP server: each frame received is passed to ``answer`` (ER7 text in, ER7 ACK out)
    and its result sent back in one frame, in order, on the same connection.

    Connections from addresses outside ``allowed_networks`` (empty: any) are closed before a
    byte is read. A frame over 1 MiB, bytes outside a frame or an idle connection close it.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], answer: Callable[[str], str],
                 allowed_networks: Sequence[str] = ()) -> None:
        self.answer = answer
        self.allowed = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)
        super().__init__(address, _MllpHandler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Accept only the allowed networks; a refused peer is logged by address only."""
        if not self.allowed:
            return True
        peer = ipaddress.ip_address(client_address[0])
        if any(peer in network for network in self.allowed):
            return True
        log.warning("MLLP: connection from %s refused (not in EBIW_ADT_ALLOWED_NETWORKS)",
                    client_address[0])
        return False


class _MllpHandler(socketserver.BaseRequestHandler):
    server: MllpListener

    def handle(self) -> None:
        self.request.settimeout(IDLE_SECONDS)
        buffer = b""
        try:
            while True:
                while END not in buffer:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                    if len(buffer) > MAX_MESSAGE_BYTES + 3:
                        log.warning("MLLP: frame over %d bytes from %s, connection closed",
                                    MAX_MESSAGE_BYTES, self.client_address[0])
                        return
                frame, _, buffer = buffer.partition(END)
                if not frame.lstrip(b"\r\n ").startswith(START):
                    log.warning("MLLP: bytes outside a frame from %s, connection closed",
                                self.client_address[0])
                    return
                er7 = frame[frame.index(START) + 1:].decode("utf-8", "replace")
                reply = self.server.answer(er7)
                self.request.sendall(START + reply.encode("utf-8") + END)
        except OSError:  # timed out, reset
            return
