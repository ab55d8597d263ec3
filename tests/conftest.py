"""Shared fixtures: the real test data beside the checkout, an app on a temp data dir, tokens."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socketserver import BaseServer
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from werkzeug.serving import WSGIRequestHandler, make_server

from app.factory import create_app
from app.web import Services
from app.workflow.accounts import create_user
from app.workflow.tokens import create_token

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TESTDATA = SHARED / "testdata"
PEERS = SHARED / "tools" / "peers"
CHARTS = TESTDATA / "colourchart"
BARCODES = TESTDATA / "barcodes"
WOUNDS = TESTDATA / "wounds"  # FUSeg photos with expert outlines (SOURCES.md there)


POSTGRES_ADMIN_URL = os.environ.get("EBIW_TEST_POSTGRES_URL", "")
"""Set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres) to run on PostgreSQL."""


@pytest.fixture
def database_url() -> Iterator[str]:
    """Empty for the embedded SQLite; else a throw-away PostgreSQL database for this test."""
    if not POSTGRES_ADMIN_URL:
        yield ""
        return
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"ebiw_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def app_overrides() -> dict[str, object]:
    """Settings a test folder changes for its ``app`` (override this fixture there)."""
    return {}


@pytest.fixture
def app(tmp_path: Path, database_url: str, app_overrides: dict[str, object]) -> Iterator[Flask]:
    """An app on embedded defaults (or PostgreSQL) in a fresh data dir, schema created."""
    flask_app = create_app({"data_dir": tmp_path / "var", "env": "test",
                            "database_url": database_url, **app_overrides})
    services(flask_app).db.create_schema()
    yield flask_app
    services(flask_app).db.engine.dispose()


def services(flask_app: Flask) -> Services:
    return flask_app.extensions["ebiw"]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def auth(app: Flask) -> dict[str, dict[str, str]]:
    """Authorization headers per role."""
    db = services(app).db
    return {role: {"Authorization": f"Bearer {create_token(db, f'{role}-user', role)}"}
            for role in ("capture", "view", "admin")}


PASSWORD = "correct horse battery staple"
"""The password of the :func:`users` accounts."""


@pytest.fixture
def users(app: Flask) -> dict[str, str]:
    """One local account per role: role -> username (password :data:`PASSWORD`)."""
    for role in ("capture", "view", "admin"):
        create_user(services(app).db, f"{role}-nurse", PASSWORD, role)
    return {"capture": "capture-nurse", "view": "view-nurse", "admin": "admin-nurse"}


def log_in(client: FlaskClient, username: str, password: str = PASSWORD) -> str:
    """Log ``client`` in (``POST /login``, must answer 200); return the session's CSRF token."""
    response = client.post("/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["csrf_token"]


def dicom_validate(*files: Path, iod: str = "VLPhotographicImage",
                   decode: bool = True) -> tuple[int, int, str]:
    """Run dciodvfy (through the shared peer script) expecting ``iod``, with --decode unless
    ``decode`` is false (DCMTK decodes no video): (errors, warnings, output)."""
    proc = subprocess.run(["bash", str(PEERS / "dicom_validate.sh"), "--iod", iod,
                           *(["--decode"] if decode else []), *map(str, files)],
                          capture_output=True, text=True, check=False)
    total = re.search(r"TOTAL errors=(\d+) warnings=(\d+)", proc.stdout)
    assert total, proc.stdout + proc.stderr
    return int(total.group(1)), int(total.group(2)), proc.stdout


# --- test peers and stub servers on loopback --------------------------------------------------


Server = TypeVar("Server", bound=BaseServer)


@contextmanager
def serving(server: Server) -> Iterator[Server]:
    """Serve ``server`` (bound on loopback) from a daemon thread; shut it down and close it at
    the end."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class StubHandler(BaseHTTPRequestHandler):
    """The request handler of a stub server: no access log; answers with a body or JSON."""

    def log_message(self, *_args: object) -> None:
        pass

    def send_body(self, status: int, data: bytes, content_type: str,
                  headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, body: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> None:
        self.send_body(status, json.dumps(body).encode(), "application/json", headers)

    def grant_code(self, codes: dict[str, dict[str, str]], query: dict[str, str]) -> None:
        """Grant an authorization request (OAuth 2.0 code flow) at once: a new code, kept in
        ``codes`` with the request's ``query``, goes back to its ``redirect_uri`` with its
        ``state`` (302)."""
        code = secrets.token_urlsafe(16)
        codes[code] = query
        self.send_response(302)
        self.send_header("Location", query["redirect_uri"] + "?" + urlencode(
            {"code": code, "state": query["state"]}))
        self.end_headers()


FHIR_EXAMPLES = SHARED / "tools" / "fhir" / "examples"


@dataclass
class FhirPeer:
    """The FHIR R4 peer (``tools/peers/fhir_start.sh``): Patient p1 (MRN0001), p2 (MRN0002) and
    an in-progress Encounter e1 of p1, identifier system ``urn:oid:1.2.3.4.5.6``."""

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
        """Requests the peer saw since it was seeded, oldest first, optionally filtered."""
        entries = requests.get(f"{self.root}/__admin/log", timeout=5).json()[self.seeded:]
        return [e for e in entries if (method is None or e["method"] == method)
                and (path is None or e["path"] == path)]

    def studies(self, study_uid: str) -> list[dict[str, Any]]:
        bundle = requests.get(f"{self.url}/ImagingStudy", timeout=5, params={
            "identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}).json()
        return [e["resource"] for e in bundle.get("entry", [])]


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirPeer]:
    """The FHIR peer on a free loopback port, one for the whole test session."""
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL pass, run only the tests that use a database."""
    if not POSTGRES_ADMIN_URL:
        return
    skip = pytest.mark.skip(reason="uses no database: covered by the SQLite pass")
    for item in items:
        if "database_url" not in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


# --- a headless Chromium for browser tests ----------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "tests" / ".artifacts"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--no-first-run"]
T = TypeVar("T")
PHONE = {"viewport": {"width": 390, "height": 844}, "screen": {"width": 390, "height": 844},
         "device_scale_factor": 2.625, "is_mobile": True, "has_touch": True,
         "user_agent": "Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 "
                       "(KHTML, like Gecko) Chrome/156.0.0.0 Mobile Safari/537.36"}
"""``browser.new_context(**PHONE)``: a Pixel 7 at 390×844 CSS pixels, touch, mobile layout."""


class Browser:
    """A headless Chromium owned by one worker thread; ``run(fn)`` calls ``fn(browser)`` there
    (Playwright's sync API must stay on one thread, and may share a pytest run with others)."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
        self.playwright = self.thread.submit(lambda: sync_playwright().start()).result()
        self.browser = self.thread.submit(lambda: self.playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)).result()

    def run(self, fn: Callable[[Any], T]) -> T:
        return self.thread.submit(fn, self.browser).result()

    def close(self) -> None:
        self.thread.submit(self.browser.close).result()
        self.thread.submit(self.playwright.stop).result()
        self.thread.shutdown()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One browser per test module; skipped where Debian's chromium is not installed."""
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser = Browser()
    yield browser
    browser.close()


# --- what a page at phone size is checked for: tap targets and axe-core ------------------

AXE = REPO / "tests" / ".node" / "node_modules" / "axe-core" / "axe.min.js"
"""axe-core from npm (``make axe``); injected into a page with ``add_script_tag``."""

TAP_TARGETS = """() => {
  const shown = (el) => el.getClientRects().length > 0
    && getComputedStyle(el).visibility !== "hidden";
  const tapped = (el) => {
    // a radio, a check box or a visually hidden file input is tapped through its label
    const small = el.type === "radio" || el.type === "checkbox" || el.type === "file";
    return small ? (el.closest("label") || document.querySelector(`label[for="${el.id}"]`)) : el;
  };
  const out = [];
  const controls = "a[href], button, input:not([type=hidden]), select, textarea, summary";
  for (const el of document.querySelectorAll(controls)) {
    const target = tapped(el);
    if (!target || !shown(el) && !shown(target)) continue;
    const box = target.getBoundingClientRect();
    if (box.width < 44 || box.height < 44) {
      const size = `${Math.round(box.width)}x${Math.round(box.height)}`;
      out.push(`${el.outerHTML.slice(0, 90)} is ${size}`);
    }
  }
  return out;
}"""

AXE_RUN = """async () => {
  const result = await axe.run(document, { resultTypes: ["violations"] });
  return result.violations.filter((v) => ["serious", "critical"].includes(v.impact))
    .map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
}"""


@pytest.fixture(scope="module")
def axe_script() -> Path:
    """axe.min.js from npm, installed by ``make axe`` when missing."""
    if not AXE.exists():
        subprocess.run(["make", "-C", str(REPO), "axe"], check=True, capture_output=True)
    return AXE


# --- the app on a loopback port, for browsers and other HTTP clients ---------------------------


class QuietHandler(WSGIRequestHandler):
    """No access log: query strings (QIDO PatientID) must not reach any log."""

    def log_request(self, *args: object, **kwargs: object) -> None:
        return None


@contextmanager
def served(app: Flask, *, public_url: bool = False) -> Iterator[str]:
    """``app`` served by a threaded werkzeug server on a free loopback port: its base URL. With
    ``public_url``, the app's public URL (the base of Retrieve URIs and redirect URIs) is set to
    that address."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    url = f"http://127.0.0.1:{server.server_port}"
    if public_url:
        svc = services(app)
        app.extensions["ebiw"] = replace(svc, settings=replace(svc.settings, public_url=url))
    with serving(server):
        yield url


DEPLOYMENT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; manifest-src 'self'; worker-src 'self'; media-src 'self' blob:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
"""The Content-Security-Policy a deployment adds: the pages must work under it."""


class HoldPuts:
    """WSGI middleware holding each PUT (a photo upload) ``seconds`` on the server, so that a
    pause or a cut link lands mid-upload."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seconds = 0.0

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        if environ["REQUEST_METHOD"] == "PUT" and self.seconds:
            time.sleep(self.seconds)
        return self.app(environ, start_response)


@contextmanager
def served_as_deployed(app: Flask) -> Iterator[tuple[str, HoldPuts]]:
    """``app`` on a free loopback port under :data:`DEPLOYMENT_CSP`, behind :class:`HoldPuts`:
    (base URL, the middleware)."""

    @app.after_request
    def strict_csp(response: Any) -> Any:
        response.headers["Content-Security-Policy"] = DEPLOYMENT_CSP
        return response

    hold = HoldPuts(app.wsgi_app)
    app.wsgi_app = hold  # type: ignore[method-assign]
    with served(app) as url:
        yield url, hold
