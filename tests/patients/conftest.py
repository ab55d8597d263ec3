"""Patient directory fixtures: DCMTK's worklist server, a slow HTTP server (the FHIR peer,
`fhir_peer`, is in tests/conftest.py)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import PEERS, serving

PATIENT_SYSTEM = "urn:oid:1.2.3.4.5.6"  # the FHIR peer's MRN system (seed-r4.json)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WorklistPeer:
    port: int
    aet: str = "WLMSCP"


@pytest.fixture(scope="session")
def mwl_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorklistPeer]:
    """DCMTK wlmscpfs with today's two XC items (MRN0001 with ACC0001, MRN0002 without)."""
    folder = tmp_path_factory.mktemp("mwl-peer")
    for _attempt in range(5):  # another test run may take the port between probe and start
        port = free_port()
        proc = subprocess.run(["bash", str(PEERS / "mwl_start.sh"), str(folder), str(port)],
                              capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        yield WorklistPeer(port)
    finally:
        subprocess.run(["bash", str(PEERS / "stop_pidfile.sh"), str(folder / "wlmscpfs.pid")],
                       capture_output=True, check=False)


class _Slow(BaseHTTPRequestHandler):
    delay = 5.0

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        time.sleep(self.delay)
        self.send_response(200)
        self.end_headers()


@pytest.fixture
def slow_server() -> Iterator[str]:
    """An HTTP server that answers only after 5 s: the base URL of a FHIR server that hangs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    server.daemon_threads = True
    with serving(server):
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir"


@pytest.fixture
def closed_port() -> int:
    """A loopback port where nothing listens (an EMR that is down)."""
    return free_port()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
