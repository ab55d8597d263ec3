"""EMR notification fixtures: studies made through the intake, the FHIR peer, a fault proxy."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from app.gateways.emr import StudyNotifier
from app.workflow.intake import SessionRequest
from tests.conftest import CHARTS, PEERS, SHARED, services

PHOTOS = [(CHARTS / name).read_bytes() for name in ("jtvd_mini_06.jpg", "jtvd_mini_05.jpg")]
FHIR_EXAMPLES = SHARED / "tools" / "fhir" / "examples"
# The FHIR peer's seed: Patient p1 (MRN0001), p2 (MRN0002), Encounter e1 (ENC-42) of p1.
PATIENT_SYSTEM = "urn:oid:1.2.3.4.5.6"
ENCOUNTER_SYSTEM = "urn:oid:1.2.3.4.5.7"


def make_study(app: Flask, *, mrn: str = "MRN0001", issuer: str = "1.2.3.4.5.6",
               encounter: str | None = "ENC-42", photos: int = 1,
               name: str = "TEST^ALICE", accession: str = "") -> tuple[str, str]:
    """Open a capture session and upload real photos through the intake: (session id, UID)."""
    svc = services(app)
    body: dict[str, Any] = {"patient": {"id": mrn, "issuer": issuer, "name": name,
                                        "birth_date": "1970-01-01", "sex": "F"},
                            "body_site": "14975008", "laterality": "L",
                            "department": "Wound care"}
    if encounter:
        body["encounter"] = encounter
    session, _ = svc.intake.open_session(SessionRequest.from_json(
        body, svc.settings.default_issuer), "tester")
    if accession:
        from app.db.models import CaptureSession

        with svc.db.session() as db:
            db.get(CaptureSession, session.id).accession_number = accession
    for n in range(photos):
        add_photo(app, session.id, n)
    return session.id, session.study_uid


def add_photo(app: Flask, session_id: str, n: int = 0) -> None:
    """Upload one more real photo to the session."""
    services(app).intake.accept_photo(session_id, str(uuid.uuid4()), PHOTOS[n % len(PHOTOS)])


def notify(app: Flask, notifier: StudyNotifier, study_uid: str) -> None:
    """Run a notifier in one transaction, as the outbox worker does."""
    with services(app).db.session() as db:
        notifier.notify(db, study_uid)


def fhir_validate(tmp_path: Path, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate resources with the FHIR peer's validator (one run); return its JSON reports."""
    files = []
    for n, resource in enumerate(resources):
        path = tmp_path / f"resource-{n}.json"
        path.write_text(json.dumps(resource))
        files.append(str(path))
    proc = subprocess.run(["bash", str(PEERS / "fhir_validate.sh"), "--json", *files],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


# --- the FHIR R4 peer ------------------------------------------------------------------------


@dataclass
class FhirPeer:
    url: str  # the FHIR base, http://127.0.0.1:PORT/fhir
    seeded: int = 0  # requests in the peer's log once the seed was stored

    @property
    def root(self) -> str:
        return self.url.removesuffix("/fhir")

    def reset(self) -> None:
        """Empty the store and the request log, then store the default seed again."""
        requests.post(f"{self.root}/__admin/reset", timeout=5).raise_for_status()
        seed = json.loads((FHIR_EXAMPLES / "seed-r4.json").read_text())
        for entry in seed["entry"]:
            r = entry["resource"]
            requests.put(f"{self.url}/{r['resourceType']}/{r['id']}", json=r, timeout=5,
                         headers={"Content-Type": "application/fhir+json"}).raise_for_status()
        self.seeded = len(requests.get(f"{self.root}/__admin/log", timeout=5).json())

    def log(self, method: str | None = None, path: str | None = None) -> list[dict[str, Any]]:
        """Requests the peer saw since it was seeded, optionally filtered."""
        entries = requests.get(f"{self.root}/__admin/log", timeout=5).json()[self.seeded:]
        return [e for e in entries if (method is None or e["method"] == method)
                and (path is None or e["path"] == path)]

    def studies(self, study_uid: str) -> list[dict[str, Any]]:
        bundle = requests.get(f"{self.url}/ImagingStudy", timeout=5, params={
            "identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}).json()
        return [e["resource"] for e in bundle.get("entry", [])]


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirPeer]:
    """The Medplum FHIR peer on a free loopback port, for the whole test session."""
    folder = tmp_path_factory.mktemp("fhir-peer")
    proc = subprocess.run(["bash", str(PEERS / "fhir_start.sh"), str(folder), "0"],
                          capture_output=True, text=True, check=False, timeout=300)
    found = re.search(r"url=(\S+)", proc.stdout)
    assert proc.returncode == 0 and found, proc.stdout + proc.stderr
    try:
        yield FhirPeer(found.group(1))
    finally:
        subprocess.run(["bash", str(PEERS / "stop_pidfile.sh"), str(folder / "fhir.pid")],
                       capture_output=True, check=False)


@pytest.fixture
def fhir_peer(fhir_server: FhirPeer) -> FhirPeer:
    """The FHIR peer, emptied and seeded again for this test."""
    fhir_server.reset()
    return fhir_server


# --- a proxy in front of the peer that injects faults and checks bearer tokens ----------------


@dataclass
class FaultProxy:
    """Forwards to the FHIR peer; ``plan["POST /fhir/ImagingStudy"] = ["503", "late"]`` makes
    the next such requests fail (answer 503 without forwarding) or be forwarded and answered
    too late for the client; ``"race"`` edits the resource in the peer just before forwarding.
    It also serves ``/token`` (OAuth2 client credentials)."""

    target: str
    plan: dict[str, list[str]] = field(default_factory=dict)
    seen: list[dict[str, Any]] = field(default_factory=list)
    valid_tokens: set[str] = field(default_factory=set)
    require_token: bool = False
    token_requests: int = 0
    delay: float = 1.6
    url: str = ""

    def action(self, key: str) -> str:
        queue = self.plan.get(key) or []
        return queue.pop(0) if queue else "pass"


class _ProxyHandler(BaseHTTPRequestHandler):
    proxy: FaultProxy

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def _reply(self, status: int, body: bytes, ctype: str = "application/fhir+json",
               headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        proxy = self.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        if path == "/token":
            proxy.token_requests += 1
            token = f"tok-{proxy.token_requests}"
            proxy.valid_tokens.add(token)
            assert self.headers.get("Authorization", "").startswith("Basic ")
            self._reply(200, json.dumps({"access_token": token, "token_type": "Bearer",
                                         "expires_in": 3600}).encode(), "application/json")
            return
        key = f"{self.command} {path}"
        proxy.seen.append({"key": key, "headers": dict(self.headers),
                           "body": json.loads(body) if body and body[:1] == b"{" else body})
        if proxy.require_token:
            auth = self.headers.get("Authorization", "")
            if auth.removeprefix("Bearer ") not in proxy.valid_tokens:
                self._reply(401, b'{"resourceType":"OperationOutcome","issue":[{"severity":'
                                 b'"error","code":"login"}]}')
                return
        action = proxy.action(key)
        if action.isdigit():
            outcome = {"resourceType": "OperationOutcome", "issue": [{
                "severity": "error", "code": "invalid",
                "diagnostics": "Patient MRN0001 TEST^ALICE is not valid here"}]}
            self._reply(int(action), json.dumps(outcome).encode())
            return
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "authorization", "content-length")}
        if action == "race":  # someone in the EMR edits the resource just before our PUT
            current = requests.get(proxy.target + self.path, timeout=5).json()
            requests.put(proxy.target + self.path, timeout=5,
                         json={**current, "description": "edited in the EMR"},
                         headers={"Content-Type": "application/fhir+json"}).raise_for_status()
        answer = requests.request(self.command, proxy.target + self.path, data=body,
                                  headers=headers, timeout=10)
        if action == "late":
            time.sleep(proxy.delay)
        keep = {k: v for k, v in answer.headers.items()
                if k.lower() in ("etag", "location", "last-modified")}
        # After "late" the client has given up waiting: exactly the point of it.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._reply(answer.status_code, answer.content,
                        answer.headers.get("Content-Type", "application/fhir+json"), keep)


@pytest.fixture
def proxy(fhir_peer: FhirPeer) -> Iterator[FaultProxy]:
    """A fault-injecting proxy on a free loopback port in front of the (reset) FHIR peer."""
    state = FaultProxy(target=fhir_peer.root)
    handler = type("Handler", (_ProxyHandler,), {"proxy": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def app_overrides() -> dict[str, object]:
    """These tests count instances per upload and build their own derived instances: the
    colour step (which adds a normalized instance per chart photo) is tested elsewhere."""
    return {"color_normalization": False}
