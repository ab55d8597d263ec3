"""PostgreSQL stops for a while under uploads: every answer meanwhile is a quick 503 with
``Retry-After`` (no hang, no 500), ``/readyz`` says not ready, and once the database is back
the clients' retries of the same upload UUIDs are stored, without restarting the app.

The database is a private throw-away cluster (Debian's ``initdb`` and ``pg_ctl`` on a free
loopback port, run as the ``postgres`` user), never the machine's shared server.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from app.db.models import Photo
from app.db.session import CONNECT_TIMEOUT_SECONDS
from app.factory import create_app
from app.workflow.tokens import create_token
from tests.conftest import CHARTS, served, services
from tests.test_serve import free_port
from tests.web.test_api import SESSION_BODY

PHOTO = (CHARTS / "jtvd_classic_01.jpg").read_bytes()
CLIENTS = 4
DOWN_SECONDS = 30
HANG_GUARD_SECONDS = 5.0  # not a speed claim: an answer slower than this is a hang


@dataclass
class Cluster:
    """A private PostgreSQL cluster: ``pg_ctl`` as its owner on ``port``."""

    bin: Path
    data: Path
    port: int
    user: str

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run(as_owner(self.user, str(self.bin / "pg_ctl"), "-D", str(self.data),
                                *args), check=check, capture_output=True, timeout=120)

    def start(self) -> None:
        self.pg_ctl("-w", "-l", str(self.data.parent / "postgres.log"), "-o",
                    f"-p {self.port} -k {self.data.parent} -c listen_addresses=127.0.0.1",
                    "start")

    def stop(self, *, check: bool = True) -> None:
        """Stop at once, as a crash would (``-m immediate``)."""
        self.pg_ctl("-m", "immediate", "stop", check=check)


def as_owner(user: str, *command: str) -> list[str]:
    """``command`` run as ``user`` (``initdb`` refuses root)."""
    return ["runuser", "-u", user, "--", *command] if os.geteuid() == 0 else list(command)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL server binaries (Debian's postgresql package) are absent")
    bin_dir = Path(found[-1]).parent
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    home = Path(tempfile.mkdtemp(prefix="ebiw-pg-"))  # not under root's private tmp_path
    data = home / "data"
    if os.geteuid() == 0:
        shutil.chown(home, user)
    subprocess.run(as_owner(user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                            "--auth=trust", "--no-sync"),
                   check=True, capture_output=True, timeout=300)
    db = Cluster(bin_dir, data, free_port(), user)
    db.start()
    try:
        yield db
    finally:
        db.stop(check=False)
        shutil.rmtree(home, ignore_errors=True)


@dataclass
class Client:
    """A phone's uploader: one photo under one UUID, sent again after each 5xx or cut link."""

    url: str
    headers: dict[str, str]
    answers: list[tuple[int, float, str, str]] = field(default_factory=list)
    """(status, seconds, Retry-After, error code) of every try; status 0: no answer."""
    stored: bool = False

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                answer = requests.put(self.url, data=PHOTO, headers=self.headers, timeout=60)
            except requests.RequestException as exc:
                self.answers.append((0, time.monotonic() - started, "", type(exc).__name__))
            else:
                self.answers.append((answer.status_code, time.monotonic() - started,
                                     answer.headers.get("Retry-After", ""),
                                     answer.json()["error"]["code"] if answer.status_code >= 400
                                     else ""))
                if answer.status_code == 201:
                    self.stored = True
                    return
            time.sleep(0.5)


def test_uploads_answer_503_while_postgresql_is_down_and_are_stored_after_it_restarts(
        tmp_path: Path, cluster: Cluster) -> None:
    app = create_app({"data_dir": tmp_path / "var", "env": "test",
                      "database_url": cluster.url})
    db = services(app).db
    db.create_schema()
    token = create_token(db, "capture-user", "capture")
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with served(app) as base:
            opened = requests.post(f"{base}/api/v1/sessions", json=SESSION_BODY,
                                   headers=headers, timeout=30)
            assert opened.status_code == 201, opened.text
            photos = f"{base}/api/v1/sessions/{opened.json()['id']}/photos"
            upload = {**headers, "Content-Type": "image/jpeg"}
            first = requests.put(f"{photos}/{uuid.uuid4()}", data=PHOTO, headers=upload,
                                 timeout=60)
            assert first.status_code == 201, first.text  # the pool holds live connections

            cluster.stop()
            down_at = time.monotonic()
            clients = [Client(f"{photos}/{uuid.uuid4()}", upload) for _ in range(CLIENTS)]
            stop = threading.Event()
            threads = [threading.Thread(target=c.run, args=(stop,)) for c in clients]
            for thread in threads:
                thread.start()
            started = time.monotonic()
            ready = requests.get(f"{base}/readyz", timeout=30)
            ready_seconds = time.monotonic() - started
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["database"].startswith("failed")
            assert ready_seconds < HANG_GUARD_SECONDS
            time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_at)))
            while_down = [a for c in clients for a in c.answers]

            cluster.start()
            back = time.monotonic()
            deadline = back + 60
            while not all(c.stored for c in clients) and time.monotonic() < deadline:
                time.sleep(0.5)
            stop.set()
            for thread in threads:
                thread.join(60)
            recovered = time.monotonic() - back
            assert requests.get(f"{base}/readyz", timeout=30).status_code == 200
    finally:
        db.engine.dispose()

    print(f"answers while down: {len(while_down)}, slowest "
          f"{max(a[1] for a in while_down):.2f} s; all stored {recovered:.1f} s after the restart")
    assert len(while_down) >= CLIENTS * 10
    assert {a[0] for a in while_down} == {503}, while_down  # no 500, no cut connection
    assert all(a[2] for a in while_down), "every 503 carries Retry-After"
    assert {a[3] for a in while_down} == {"database_unavailable"}
    assert max(a[1] for a in while_down) < HANG_GUARD_SECONDS
    assert all(c.stored for c in clients), [c.answers[-3:] for c in clients]
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Photo)) == CLIENTS + 1
    db.engine.dispose()


def test_a_database_that_never_answers_gives_503_after_the_connect_timeout_not_a_hang(
        tmp_path: Path) -> None:
    """A PostgreSQL address that accepts TCP connections and then says nothing (a hung server,
    a half-open firewall): libpq would wait for ever; the connect timeout ends the wait."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connections complete in the kernel and are never answered
        app = create_app({"data_dir": tmp_path / "var", "env": "test", "database_url":
                          f"postgresql+psycopg://postgres@127.0.0.1:{silent.getsockname()[1]}"
                          "/postgres"})
        try:
            with served(app) as base:
                for method, path in (("GET", "/readyz"),
                                     ("PUT", f"/api/v1/sessions/{uuid.uuid4()}/photos/"
                                             f"{uuid.uuid4()}")):
                    started = time.monotonic()
                    answer = requests.request(method, f"{base}{path}", data=PHOTO, timeout=60,
                                              headers={"Authorization": "Bearer not-a-token",
                                                       "Content-Type": "image/jpeg"})
                    seconds = time.monotonic() - started
                    assert answer.status_code == 503, answer.text
                    assert CONNECT_TIMEOUT_SECONDS <= seconds < 4 * CONNECT_TIMEOUT_SECONDS
        finally:
            services(app).db.engine.dispose()
    assert answer.json()["error"]["code"] == "database_unavailable"
    assert answer.headers["Retry-After"]
