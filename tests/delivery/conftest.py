"""Fixtures of the delivery tests: apps with a destinations file, Orthanc peers, fakes."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.db.models import Instance
from app.factory import create_app
from app.gateways.registry import Registry
from app.web import Services
from app.workflow.delivery import (
    BackgroundDelivery,
    DeliveryState,
    DeliveryWorker,
    study_deliveries,
)
from app.workflow.tokens import create_token
from tests.conftest import CHARTS, PEERS

# Real phone/camera photos, smallest first: the bulk tests use the small ones.
PHOTOS = sorted(CHARTS.glob("*.jpg"), key=lambda p: p.stat().st_size)
SMALL = [p for p in PHOTOS if p.stat().st_size < 400_000]
# A real photo without a colour chart: one instance per upload (no colour-normalized DERIVED
# instance), for the tests that count instances, requests and batches exactly.
NOCHART = CHARTS / "karnehen_cam2_nochart.jpg"
FAST_RETRY = {"base_seconds": 0.02, "cap_seconds": 0.2}
PATIENT = {"id": "00123456", "issuer": "HOSP-A", "name": "DEMO^ALICE"}


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it; other test runs pick others)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Orthanc:
    """A throw-away Orthanc (shared peer scripts) on free loopback ports."""

    root: Path
    http: int = field(default_factory=free_port)
    dicom: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self) -> Orthanc:
        proc = subprocess.run(["bash", str(PEERS / "orthanc_start.sh"), str(self.root),
                               str(self.http), str(self.dicom)],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return self

    def stop(self) -> None:
        if (self.root / "orthanc.pid").exists():
            subprocess.run(["bash", str(PEERS / "orthanc_stop.sh"), str(self.root)],
                           capture_output=True, check=False)

    def instances(self, study_uid: str) -> list[str]:
        """SOP Instance UIDs QIDO-RS finds in the study (one entry per stored copy)."""
        response = requests.get(f"{self.dicomweb}/studies/{study_uid}/instances", timeout=10)
        if response.status_code == 204 or not response.content:
            return []
        response.raise_for_status()
        return [item["00080018"]["Value"][0] for item in response.json()]

    def tags(self, sop_uid: str) -> dict[str, Any]:
        """Main tags of the stored instance (Orthanc REST, ``simplified-tags``)."""
        found = requests.post(f"{self.url}/tools/find", json={
            "Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}}, timeout=10).json()
        assert len(found) == 1, found
        return requests.get(f"{self.url}/instances/{found[0]}/simplified-tags",
                            timeout=10).json()

    def frame(self, sop_uid: str) -> bytes:
        """The first encapsulated frame of the stored instance, raw (Orthanc REST)."""
        found = requests.post(f"{self.url}/tools/find", json={
            "Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}}, timeout=10).json()
        response = requests.get(f"{self.url}/instances/{found[0]}/frames/0/raw", timeout=30)
        response.raise_for_status()
        return response.content


@pytest.fixture
def orthancs(tmp_path: Path) -> Iterator[Callable[[], Orthanc]]:
    """Make Orthancs (not started); every one is stopped at the end of the test."""
    made: list[Orthanc] = []

    def make() -> Orthanc:
        made.append(Orthanc(tmp_path / f"orthanc{len(made)}"))
        return made[-1]

    yield make
    with ThreadPoolExecutor() as pool:  # Orthanc takes seconds to stop: stop them together
        list(pool.map(Orthanc.stop, made))


@dataclass
class Deployment:
    """An app with a destinations file, tokens per role and helpers to upload and deliver."""

    app: Flask
    client: FlaskClient
    headers: dict[str, dict[str, str]]

    @property
    def services(self) -> Services:
        return self.app.extensions["ebiw"]

    @property
    def registry(self) -> Registry:
        return self.app.extensions["ebiw"].registry

    def open_session(self, **body: Any) -> dict[str, Any]:
        response = self.client.post("/api/v1/sessions", json={"patient": PATIENT, **body},
                                    headers=self.headers["capture"])
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    def upload(self, session: dict[str, Any], photo: Path) -> dict[str, Any]:
        response = self.client.put(f"/api/v1/sessions/{session['id']}/photos/{uuid.uuid4()}",
                                   data=photo.read_bytes(), headers=self.headers["capture"])
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    def worker(self, registry: Registry | None = None) -> DeliveryWorker:
        return DeliveryWorker(self.services.db, self.services.archive,
                              registry or self.registry)

    def background(self, registry: Registry | None = None, count: int = 1) -> BackgroundDelivery:
        return BackgroundDelivery(self.services.db, self.services.archive,
                                  registry or self.registry, count).start()

    def states(self, study_uid: str) -> list[DeliveryState]:
        return study_deliveries(self.services.db, study_uid)

    def instances(self, study_uid: str) -> list[str]:
        """Every SOP Instance UID archived in the study: the photos' originals and the
        colour-normalized DERIVED instances the colour step made of them."""
        with self.services.db.session() as db:
            return sorted(db.scalars(select(Instance.sop_uid)
                                     .where(Instance.study_uid == study_uid)))


@pytest.fixture
def deploy(tmp_path: Path, database_url: str) -> Iterator[Callable[..., Deployment]]:
    """``deploy(destinations, **settings)``: an app whose EBIW_DESTINATIONS_FILE lists
    ``destinations`` (fast retries), on the suite's database (SQLite, or PostgreSQL on the
    PostgreSQL pass); no EMR notifier unless ``emr_notifiers`` is given. Apps made by one test
    share the data dir and database, like the nodes of one deployment."""
    apps: list[Flask] = []

    def make(destinations: list[dict[str, Any]], **settings: Any) -> Deployment:
        config = tmp_path / f"destinations{len(apps)}.json"
        config.write_text(json.dumps({"destinations": destinations, "retry": FAST_RETRY,
                                      "lease_seconds": 30}))
        overrides = {"data_dir": tmp_path / "var", "env": "test", "emr_notifiers": "",
                     "database_url": database_url, "destinations_file": config, **settings}
        app = create_app(overrides)
        apps.append(app)
        services: Services = app.extensions["ebiw"]
        services.db.create_schema()
        headers = {role: {"Authorization":
                          f"Bearer {create_token(services.db, f'{role}-user', role)}"}
                   for role in ("capture", "view", "admin")}
        return Deployment(app, app.test_client(), headers)

    yield make
    for app in apps:
        if "ebiw.delivery" in app.extensions:
            app.extensions["ebiw.delivery"].stop()
        app.extensions["ebiw"].db.engine.dispose()
