"""The README cannot rot: its first block's ``make run`` serves the app on a free port, and every
other ``sh`` example runs, in order, against that server as a new user would run it from the
checkout (``.venv``, ``tests`` and a ``photo.jpg`` beside them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
import requests
from sqlalchemy import select

from app.db.models import Photo
from app.db.session import Database
from app.settings import Settings
from tests.conftest import CHARTS, REPO
from tests.test_serve import free_port, wait_for

README = REPO / "README.md"
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
FIRST_SCREEN = ["make run", "make test"]


def sh_blocks() -> list[str]:
    """The README's ``sh`` examples, in order."""
    return SH_BLOCK.findall(README.read_text())


def test_the_readme_starts_with_the_two_commands() -> None:
    first = sh_blocks()[0]
    commands = [line.split("#")[0].strip() for line in first.splitlines()]
    assert commands == FIRST_SCREEN
    assert README.read_text().index("```sh") < 200  # the first thing a reader sees


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's examples use curl")
def test_every_shell_example_runs(tmp_path: Path) -> None:
    """``make run PORT=…`` on a fresh data dir, then each example (``make test`` itself is the
    command CI runs, so it is not run again from inside the suite)."""
    port = free_port()
    data = tmp_path / "var"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("EBIW_") and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.update(EBIW_DATA_DIR=str(data), FUZZ_SECONDS="60", FUZZ_SEED="1", FUZZ_RUNS="300")
    log = tmp_path / "make-run.log"
    with log.open("w") as out:
        server = subprocess.Popen(["make", "--no-print-directory", "run", f"PORT={port}"],
                                  cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    work = tmp_path / "checkout"
    work.mkdir()
    for name in (".venv", "tests"):
        (work / name).symlink_to(REPO / name)
    shutil.copy(CHARTS / "oycq_data_iphone.jpg", work / "photo.jpg")
    try:
        wait_for(f"http://127.0.0.1:{port}", server, log, seconds=300)
        outputs = []
        for block in sh_blocks()[1:]:
            script = block.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
                                 capture_output=True, text=True, timeout=300, check=False)
            assert run.returncode == 0, (block, run.stdout[-2000:], run.stderr[-2000:])
            outputs.append(run.stdout)
        _check_the_upload(outputs, data, port)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def _check_the_upload(outputs: list[str], data: Path, port: int) -> None:
    """The shell upload stored a DICOM photo for the demo patient, and its viewer URL opens for
    the account the README made."""
    answers = [json.loads(line) for out in outputs for line in out.splitlines()
               if line.startswith("{") and "sop_instance_uid" in line]
    assert len(answers) == 1, outputs
    answer = answers[0]
    settings = Settings.from_env({"EBIW_DATA_DIR": str(data)})
    with Database(settings.database).session() as db:
        photo = db.scalars(select(Photo)).one()
    assert photo.sop_uid == answer["sop_instance_uid"]
    stored = next(settings.archive_root.rglob(f"{photo.sop_uid}.dcm"))
    assert pydicom.dcmread(stored).PatientID == "00123456"
    viewer = answer["viewer_url"]
    assert viewer.startswith(f"http://127.0.0.1:{port}/studies/")
    user = re.search(r"--username (\S+)", README.read_text())
    password = re.search(r"printf '%s\\n' '([^']+)'", README.read_text())
    assert user and password
    browser = requests.Session()
    login = browser.post(f"http://127.0.0.1:{port}/login", timeout=10,
                         json={"username": user[1], "password": password[1]})
    assert login.status_code == 200, login.text
    page = browser.get(viewer, timeout=10)
    assert page.status_code == 200, page.text[:500]
    assert "text/html" in page.headers["Content-Type"]
