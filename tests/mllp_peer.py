"""An HL7 v2 MLLP receiver on loopback for the ``hl7v2`` EMR notifier: it parses every message
with hl7apy's strict v2.5.1 structure validation, keeps it, and acknowledges it (AA unless told
otherwise)."""

from __future__ import annotations

import socketserver
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

from tests.conftest import serving

START, END = b"\x0b", b"\x1c\r"


@dataclass
class Receiver:
    """An MLLP listener: answers each message with the next code of ``plan`` (default AA);
    ``silent`` reads the message and never answers, ``close`` hangs up."""

    plan: list[str] = field(default_factory=list)
    received: list[Message] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    address: str = ""


class _Handler(socketserver.BaseRequestHandler):
    receiver: Receiver

    def handle(self) -> None:
        data = b""
        while END not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        er7 = data[data.index(START) + 1:data.index(END)].decode("utf-8")
        # The message must parse with hl7apy's strict v2.5.1 structure validation.
        message = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT)
        self.receiver.raw.append(er7)
        self.receiver.received.append(message)
        code = self.receiver.plan.pop(0) if self.receiver.plan else "AA"
        if code == "close":
            return
        if code == "silent":
            self.request.recv(1)  # until the client gives up
            return
        ack = Message("ACK", version="2.5.1")
        ack.msh.msh_3 = message.msh.msh_5.value
        ack.msh.msh_5 = message.msh.msh_3.value
        ack.msh.msh_9 = "ACK^R01^ACK"
        ack.msh.msh_10 = f"ACK{len(self.receiver.received)}"
        ack.msh.msh_11 = "P"
        ack.msa.msa_1 = code
        ack.msa.msa_2 = message.msh.msh_10.value
        if code != "AA":
            ack.msa.msa_3 = "MRN0001 unknown"  # texts may quote the message: never repeated
            ack.add_segment("ERR")
            ack.err.err_3 = "207^Application internal error^HL70357"
            ack.err.err_4 = "E"
        self.request.sendall(START + ack.to_er7().encode() + END)


@contextmanager
def mllp_receiver() -> Iterator[Receiver]:
    """A :class:`Receiver` on a free loopback port (``address``), served from threads."""
    state = Receiver()
    handler = type("Handler", (_Handler,), {"receiver": state})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    state.address = f"127.0.0.1:{server.server_address[1]}"
    with serving(server):
        yield state
