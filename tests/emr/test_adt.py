"""ADT^A40 parsing, its ACK (checked by hl7apy's strict parser and by python-hl7) and the MLLP
listener's framing and network allow-list."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from app.gateways.emr.adt import (
    END,
    START,
    AdtRefused,
    MllpListener,
    PatientKey,
    build_ack,
    parse_merge,
    read_header,
)
from tests.conftest import serving

MSH = "MSH|^~\\&|EMR|HOSP|EBIW|HOSP|20261207120000||ADT^A40^ADT_A39|CTRL-1|P|{version}"


def message(*segments: str, version: str = "2.5.1") -> str:
    return "\r".join([MSH.format(version=version), "EVN|A40|20261207120000", *segments]) + "\r"


def test_pairs_identifiers_and_escapes() -> None:
    er7 = message("PID|1||X1^^^OTHER~A\\T\\1^^^&1.2.3&ISO^MR||ONE^A",
                  "MRG|B1",
                  "PID|1||C1^^^HOSP-A^MR||TWO^B",
                  "MRG|D\\S\\1^^^HOSP-A^MR~E1^^^HOSP-B").replace("\r", "\n")  # LF works too
    request = parse_merge(er7, default_issuer="LOCAL")
    assert request.header.control_id == "CTRL-1" and request.header.sending_application == "EMR"
    assert [(p.surviving, p.merged) for p in request.pairs] == [
        (PatientKey("1.2.3", "A&1"), PatientKey("LOCAL", "B1")),  # typed MR; universal ID
        (PatientKey("HOSP-A", "C1"), PatientKey("HOSP-A", "D^1"))]


@pytest.mark.parametrize(("er7", "code", "error"), [
    (message("PID|1||A1^^^H^MR", version="9.9"), "AR", "203"),
    (message("PID|1||A1^^^H^MR", "MRG|A1^^^H^MR"), "AE", "204"),  # merged into itself
    (message("MRG|B1^^^H^MR", "PID|1||A1^^^H^MR"), "AE", "100"),  # MRG before its PID
    (message("PID|1||A1^^^H^MR"), "AE", "101"),  # no MRG
    (message("PID|1||A1^^^H^MR", "MRG|^^^H^MR"), "AE", "101"),  # MRG-1 without an MRN
    (message("PID|1||^^^H^MR", "MRG|B1^^^H^MR"), "AE", "101"),
    (message("PID|1||A1", "MRG|B1").replace("ADT^A40^ADT_A39", "ORU^R01^ORU_R01"), "AR", "200"),
    (message("PID|1||A1", "MRG|B1").replace("ADT^A40", "ADT^A34"), "AR", "201"),
    ("MSH|garbage", "AE", "100"),
])
def test_bad_messages_are_refused_with_a_code(er7: str, code: str, error: str) -> None:
    with pytest.raises(AdtRefused) as refused:
        parse_merge(er7, default_issuer="LOCAL")
    assert (refused.value.code, refused.value.error) == (code, error)
    assert "A1" not in str(refused.value) and "B1" not in str(refused.value)


def test_the_ack_is_valid_hl7_that_both_parsers_read() -> None:
    header = read_header(message("PID|1||A1", "MRG|B1"))
    for ack in (build_ack(header, "AA", sending_application="EBIW", sending_facility="Clinic"),
                build_ack(header, "AE", sending_application="EBIW", sending_facility="",
                          error="204", reason="a|b^c & d")):
        strict = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT)
        assert strict.msa.msa_2.value == "CTRL-1"
        parsed = hl7.parse(ack)
        assert str(parsed.segment("MSH")[5]) == "EMR"  # answered to the sender
        assert str(parsed.segment("MSH")[9]) == "ACK^A40^ACK"
    assert str(parsed.segment("MSA")[1]) == "AE"
    assert parsed.unescape(str(parsed.segment("MSA")[3])) == "a|b^c & d"
    assert str(parsed.segment("ERR")[3][0][0]) == "204"


@contextmanager
def listening(answer: Callable[[str], str], networks: tuple[str, ...] = ()) -> Iterator[int]:
    server = MllpListener(("127.0.0.1", 0), answer, networks)
    with serving(server):
        yield server.server_address[1]


def exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    return received


def test_frames_are_answered_in_order_on_one_connection() -> None:
    with listening(lambda er7: f"ACK:{er7}") as port:
        assert exchange(port, START + b"one" + END + START + b"two" + END) == \
            START + b"ACK:one" + END + START + b"ACK:two" + END
        # Bytes outside a frame end the connection, unanswered.
        assert exchange(port, b"junk" + END) == b""


def test_peers_outside_the_allowed_networks_are_not_answered() -> None:
    seen: list[str] = []
    with listening(lambda er7: seen.append(er7) or "ACK", ("10.0.0.0/8",)) as port, \
            suppress(OSError):  # closed unanswered (reset, or no longer connected)
        assert exchange(port, START + b"message" + END) == b""
    assert seen == []
    with listening(lambda er7: "ACK", ("127.0.0.0/8",)) as port:
        assert exchange(port, START + b"message" + END) == START + b"ACK" + END
