"""A write killed between its temporary file and the rename leaves a ``.tmp-*`` file; the next
start of the server (gunicorn's master) or of a worker removes it, and never the temporary
file of a writer that is still alive, on this host or another sharing the folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import gunicorn_conf
from app.durable import STALE_AFTER_S, sweep_temp_files
from tests.conftest import REPO

FOLDER = Path("archive") / "2.25.1" / "2.25.2"
# A child that writes one archive file with write_durably and stops right before the rename:
# killed there (SIGKILL, as by the OOM killer or kill -9), or held alive until stdin closes.
WRITER = """
import os, signal, sys
from pathlib import Path
from app import durable

def stop(src, dst):
    print("ready", flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()
    return real(src, dst)

real, durable.os.replace = os.replace, stop
durable.write_durably(Path(sys.argv[1]) / "2.25.3.dcm", b"DICM" * 1000)
"""


def _writer(folder: Path, mode: str) -> subprocess.Popen[str]:
    """Start a writer; return once its temporary file is written and synced."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), mode], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def _temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(".tmp-*"))


def test_a_killed_writers_file_goes_at_the_next_start_a_live_writers_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "var"
    killed = _writer(data / FOLDER, "kill")
    assert killed.wait(timeout=30) == -signal.SIGKILL
    [leftover] = _temp_files(data)
    assert leftover.read_bytes() == b"DICM" * 1000
    assert leftover.name.endswith(f".{killed.pid}@{socket.gethostname()}")

    live = _writer(data / "archive" / "2.25.9" / "2.25.8", "hold")
    try:
        [held] = [p for p in _temp_files(data) if p != leftover]
        # The server's start: gunicorn calls this hook in its master before any worker.
        monkeypatch.setenv("EBIW_DATA_DIR", str(data))
        gunicorn_conf.on_starting(None)
        assert _temp_files(data) == [held]
    finally:
        assert live.stdin is not None
        live.stdin.close()
    assert live.wait(timeout=30) == 0
    assert (data / "archive" / "2.25.9" / "2.25.8" / "2.25.3.dcm").read_bytes() == b"DICM" * 1000
    assert _temp_files(data) == []


def test_a_worker_start_sweeps_the_archive_dir_outside_the_data_dir(tmp_path: Path) -> None:
    data, archive = tmp_path / "var", tmp_path / "elsewhere"
    killed = _writer(archive / "2.25.1" / "2.25.2", "kill")
    assert killed.wait(timeout=30) == -signal.SIGKILL and len(_temp_files(archive)) == 1
    env = {**os.environ, "PYTHONPATH": str(REPO), "EBIW_DATA_DIR": str(data),
           "EBIW_ARCHIVE_DIR": str(archive)}
    subprocess.run([sys.executable, "-m", "app.cli", "worker", "--drain"], cwd=REPO, env=env,
                   check=True, capture_output=True, timeout=120)
    assert _temp_files(archive) == []


def test_other_nodes_files_go_only_once_stale(tmp_path: Path) -> None:
    """A writer on another node sharing the archive cannot be asked whether it is alive: its
    file stays until no write could still be using it; so does an untagged (older) name."""
    folder = tmp_path / "2.25.1"
    folder.mkdir()
    fresh = [folder / ".tmp-abc123.4242@other-node", folder / ".tmp-k2j4h5g6"]
    stale = [folder / ".tmp-def456.4242@other-node", folder / ".tmp-q9w8e7r6"]
    instance = folder / "2.25.3.dcm"
    for path in [*fresh, *stale, instance]:
        path.write_bytes(b"x")
    old = time.time() - STALE_AFTER_S - 60
    for path in [*stale, instance]:
        os.utime(path, (old, old))
    assert sweep_temp_files(tmp_path) == 2
    assert sorted(folder.iterdir()) == sorted([*fresh, instance])
