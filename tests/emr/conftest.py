"""EMR notification fixtures: studies made through the intake, a fault proxy in front of the
FHIR peer (`fhir_peer`, in tests/conftest.py)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from app.gateways.emr import StudyNotifier
from app.workflow.intake import SessionRequest
from tests.conftest import CHARTS, PEERS, FhirPeer, StubHandler, services, serving

PHOTOS = [(CHARTS / name).read_bytes() for name in ("jtvd_mini_06.jpg", "jtvd_mini_05.jpg")]
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


class _ProxyHandler(StubHandler):
    proxy: FaultProxy

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def _reply(self, status: int, body: bytes, ctype: str = "application/fhir+json",
               headers: dict[str, str] | None = None) -> None:
        self.send_body(status, body, ctype, headers)

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
    with serving(server):
        yield state


@pytest.fixture
def app_overrides() -> dict[str, object]:
    """These tests count instances per upload and build their own derived instances: the
    colour step (which adds a normalized instance per chart photo) is tested elsewhere."""
    return {"color_normalization": False}
