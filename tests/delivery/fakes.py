"""Fake PACSs that count what they store: a STOW-RS HTTP server and a C-STORE SCP."""

from __future__ import annotations

import io
import json
import threading
from collections import Counter
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pydicom
from pydicom.uid import JPEGBaseline8Bit
from pynetdicom import AE, evt

from app.pipeline.dicom.builder import VL_PHOTOGRAPHIC_IMAGE_STORAGE

# A responder gets (request number from 1, SOP UIDs posted) and answers (HTTP status, JSON).
Responder = Callable[[int, list[str]], tuple[int, object]]


def stored(sop_uids: list[str]) -> dict:
    """A STOW-RS success body (Referenced SOP Sequence)."""
    return {"00081199": {"vr": "SQ", "Value": [
        {"00081155": {"vr": "UI", "Value": [uid]}} for uid in sop_uids]}}


def refused(sop_uids: list[str], reason: int) -> dict:
    """A STOW-RS body listing every instance in the Failed SOP Sequence with ``reason``."""
    return {"00081198": {"vr": "SQ", "Value": [
        {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [reason]}}
        for uid in sop_uids]}}


def ok(_number: int, sop_uids: list[str]) -> tuple[int, object]:
    return 200, stored(sop_uids)


class FakeStow:
    """A threaded HTTP server taking STOW-RS POSTs; ``stored`` counts instances answered 200."""

    def __init__(self, responder: Responder = ok, delay: float = 0.0) -> None:
        self.responder = responder
        self.delay = delay
        self.requests = 0
        self.stored: Counter[str] = Counter()
        self.auth: list[str | None] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                sop_uids = fake.sop_uids(self.headers["Content-Type"], body)
                with fake._lock:
                    fake.requests += 1
                    number = fake.requests
                    fake.auth.append(self.headers.get("Authorization"))
                if fake.delay:
                    threading.Event().wait(fake.delay)
                status, answer = fake.responder(number, sop_uids)
                referenced = [item["00081155"]["Value"][0] for item in
                              answer.get("00081199", {}).get("Value", [])] \
                    if isinstance(answer, dict) else sop_uids
                if status in (200, 202):
                    with fake._lock:
                        fake.stored.update(referenced)
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json" if answer is not None
                                 else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    @staticmethod
    def sop_uids(content_type: str, body: bytes) -> list[str]:
        """The SOP Instance UIDs of the application/dicom parts of a multipart body."""
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        return [str(pydicom.dcmread(io.BytesIO(part.get_payload(decode=True)),
                                    stop_before_pixels=True).SOPInstanceUID)
                for part in message.iter_parts()]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeScp:
    """A C-STORE SCP (pynetdicom) answering the given statuses in turn, then success."""

    def __init__(self, statuses: list[int], ae_title: str = "FAKESCP") -> None:
        self.statuses = list(statuses)
        self.stored: Counter[str] = Counter()
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(VL_PHOTOGRAPHIC_IMAGE_STORAGE, JPEGBaseline8Bit)
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self.server.server_address[1]

    def _store(self, event: evt.Event) -> int:
        status = self.statuses.pop(0) if self.statuses else 0x0000
        if status == 0x0000:
            self.stored[str(event.request.AffectedSOPInstanceUID)] += 1
        return status

    def close(self) -> None:
        self.server.shutdown()
