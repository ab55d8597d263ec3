"""kill -9 of one gthread worker while 20 uploads arrive at once fails at most the uploads
that worker was serving (its threads), and retrying those with the same upload UUIDs stores
every photo exactly once.

A worker accepts no more connections than it has threads (``app/gunicorn_conf.py``); the
other connections wait in the shared listen backlog and are served by the surviving worker
or the one the master starts instead. ``GUNICORN_CMD_ARGS="--worker-connections 1000"``
(gunicorn's default) shows the failure this guards against: the killed worker resets every
connection it had queued.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import requests

from tests.conftest import CHARTS
from tests.load.harness import Server, Upload, _attempt, check_archive

PHOTOS = sorted(CHARTS.glob("oycq_*_iphone.jpg"))[:5]
UPLOADS = 20
THREADS = 2  # per worker: EBIW_THREADS's default
KILL_AFTER_S = 1.5
DEADLINE_S = 180


def test_a_killed_worker_fails_only_its_in_flight_uploads(tmp_path: Path) -> None:
    with Server(tmp_path / "var", "", env={"EBIW_THREADS": str(THREADS)}) as server:
        token = server.token("kill-test")
        headers = {"Authorization": f"Bearer {token}"}
        opened = requests.post(f"{server.url}/api/v1/sessions", headers=headers, timeout=30,
                               json={"patient": {"id": "KILL0001", "issuer": "LOADTEST"}})
        assert opened.status_code == 201, opened.text
        photos = f"{server.url}/api/v1/sessions/{opened.json()['id']}/photos"
        put_headers = {**headers, "Content-Type": "image/jpeg"}
        uploads = [Upload(0, p, p.read_bytes()) for p in
                   (PHOTOS[i % len(PHOTOS)] for i in range(UPLOADS))]

        def first_try(upload: Upload) -> None:
            with requests.Session() as http:
                _attempt(http, f"{photos}/{upload.upload_uuid}", put_headers, upload)

        threads = [threading.Thread(target=first_try, args=(u,)) for u in uploads]
        for thread in threads:
            thread.start()
        time.sleep(KILL_AFTER_S)
        victim = server.worker_pids()[0]
        os.kill(victim, 9)
        for thread in threads:
            thread.join(DEADLINE_S)
        cut = [u for u in uploads if u.ack is None]

        deadline = time.monotonic() + DEADLINE_S
        with requests.Session() as http:
            for upload in cut:
                while time.monotonic() < deadline and not _attempt(
                        http, f"{photos}/{upload.upload_uuid}", put_headers, upload):
                    http.close()
                    time.sleep(0.5)
        report = check_archive(server, uploads)
        assert victim not in server.worker_pids()

    failures = [f for u in uploads for f in u.failures[:1]]
    print(f"first tries: {UPLOADS - len(cut)} stored, {len(cut)} cut off {failures}; "
          f"after retries: {report.photos} photos, {report.instances} instances")
    assert 1 <= len(cut) <= THREADS, failures  # the kill hit the worker's in-flight uploads
    assert set(failures) <= {"connection"}, failures
    assert report.problems == []
    assert report.photos == UPLOADS and all(u.ack is not None for u in uploads)
