"""`ebiw serve` runs gunicorn on the embedded defaults, logging JSON without query strings."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_and_keeps_query_strings_out_of_the_log(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "EBIW_DATA_DIR": str(tmp_path / "var")}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/healthz?PatientID=SECRET123",
                                        timeout=15)
                break
            except (requests.ConnectionError, requests.Timeout):
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
        assert response.json() == {"status": "ok"}
        anonymous = requests.get(f"http://127.0.0.1:{port}/api/v1/body-sites", timeout=5)
        assert anonymous.status_code == 401
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "SECRET123" not in text
    access = [json.loads(line) for line in text.splitlines() if '"log":"access"' in line]
    assert {(a["path"], a["status"]) for a in access} >= {("/healthz", 200),
                                                          ("/api/v1/body-sites", 401)}
