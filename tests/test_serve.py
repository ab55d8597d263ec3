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
    subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], cwd=REPO, env=env,
                   check=True, capture_output=True)  # DICOMweb audits every request
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}", proc, log)
        response = requests.get(f"http://127.0.0.1:{port}/healthz?PatientID=SECRET123",
                                timeout=15)
        assert response.json() == {"status": "ok"}
        anonymous = requests.get(f"http://127.0.0.1:{port}/api/v1/body-sites", timeout=5)
        assert anonymous.status_code == 401
        qido = requests.get(f"http://127.0.0.1:{port}/dicomweb/studies?00100020=SECRET456"
                            "&PatientName=SECRETNAME*&includefield=00081030", timeout=5)
        assert qido.status_code == 401
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "SECRET" not in text
    access = [json.loads(line) for line in text.splitlines() if '"log":"access"' in line]
    assert {(a["path"], a["status"]) for a in access} >= {("/healthz", 200),
                                                          ("/api/v1/body-sites", 401),
                                                          ("/dicomweb/studies", 401)}


def test_serve_takes_its_port_from_ebiw_port_and_keeps_its_control_socket_in_the_data_dir(
        tmp_path: Path) -> None:
    """EBIW_PORT alone chooses the port, the links follow it (no EBIW_PUBLIC_URL), and
    gunicorn's control socket is this instance's, under EBIW_DATA_DIR, not in $HOME."""
    port = free_port()
    data = tmp_path / "var"
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("EBIW_PUBLIC_URL", "EBIW_BIND", "XDG_RUNTIME_DIR")}
    env.update(EBIW_DATA_DIR=str(data), EBIW_PORT=str(port), HOME=str(home))
    subprocess.run([sys.executable, "-m", "app.cli", "demo"], cwd=REPO, env=env, check=True,
                   capture_output=True)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}", proc, log)
        assert f"serving http://127.0.0.1:{port}/" in log.read_text()
        control = data / "gunicorn.ctl"
        deadline = time.monotonic() + 10
        while not control.is_socket() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert control.is_socket(), log.read_text()
        assert control.stat().st_mode & 0o077 == 0
        assert not (home / ".gunicorn").exists()
        token = subprocess.run([sys.executable, "-m", "app.cli", "token", "create", "--user",
                                "reader", "--role", "view"], cwd=REPO, env=env, check=True,
                               capture_output=True, text=True).stdout.strip()
        links = requests.get(f"http://127.0.0.1:{port}/fhir/Patient?identifier=00123456",
                             headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert links.status_code == 200, links.text
        assert links.json()["entry"][0]["fullUrl"].startswith(f"http://127.0.0.1:{port}/fhir/")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float = 60) -> None:
    """Return once ``url``/healthz answers 200; fail with the server's log if it died."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=15).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)
