"""Ten clinics upload batches at once to ``ebiw serve`` (2 gunicorn workers, free loopback
port) while a worker, or the whole server, is killed with SIGKILL at a random point; clients
retry what was not acknowledged. Afterwards every acknowledged photo is stored exactly once and
nothing half-written is visible (``harness.check_archive``).

CI-sized: small real photos (about 3 MP), 10 x 6 uploads per run; the 12 MP, 10 x 50 run is
``bench/bench_load.py``. The random points come from a seed printed with each run
(``EBIW_LOAD_SEED`` replays one).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import CHARTS
from tests.load.harness import (
    Server,
    Upload,
    batches,
    check_archive,
    run_load,
    summary,
    wait_for_acks,
)
from tests.s3_peer import S3Peer, s3_peer

PHOTOS = sorted(CHARTS.glob("jtvd_classic_0[1-5].jpg")) + \
    sorted(CHARTS.glob("oycq_*_iphone.jpg"))[:3]
CLINICS, PER_CLINIC = 10, 6
DEADLINE_S = 150
SEED = int(os.environ.get("EBIW_LOAD_SEED") or random.SystemRandom().randrange(1 << 30))


@pytest.fixture
def rng() -> random.Random:
    print(f"EBIW_LOAD_SEED={SEED}")
    return random.Random(SEED)


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[S3Peer]:
    with s3_peer(tmp_path / "moto.log") as peer:
        yield peer


def kills(rng: random.Random, kill: Callable[[], None]) -> Callable[[list[Upload]], None]:
    """A fault that calls ``kill`` twice, each after a random number of acknowledgements (the
    first within the first half of the uploads, the second in the third quarter) and a random
    fraction of a second more."""
    total = CLINICS * PER_CLINIC
    points = [rng.randint(CLINICS, total // 2), rng.randint(total // 2 + 1, total * 3 // 4)]

    def fault(uploads: list[Upload]) -> None:
        for point in points:
            wait_for_acks(uploads, point, DEADLINE_S)
            time.sleep(rng.uniform(0, 0.3))
            kill()

    return fault


def run(server: Server, fault: Callable[[list[Upload]], None]) -> dict[str, object]:
    stats = run_load(server, batches(PHOTOS, CLINICS, PER_CLINIC), DEADLINE_S, fault)
    figures = summary(stats)
    report = check_archive(server, stats.uploads, server.peer)
    print(json.dumps({**figures, "photos": report.photos, "instances": report.instances,
                      "stored": report.stored, "temp_files": report.temp_files}))
    assert report.problems == []
    assert figures["acked"] == CLINICS * PER_CLINIC == report.photos
    assert figures["http_5xx"] == 0 and figures["http_429"] == 0
    assert figures["no_answer"] >= 1  # the kill did cut requests off
    return figures


def test_kill_a_worker_during_batches(tmp_path: Path, database_url: str,
                                      rng: random.Random) -> None:
    with Server(tmp_path / "var", database_url) as server:
        killed: list[int] = []
        run(server, kills(rng, lambda: killed.append(server.kill_worker(rng))))
        assert len(killed) == 2 and not set(killed) & set(server.worker_pids())
        assert len(server.worker_pids()) == 2  # the master replaced them


def restart(server: Server) -> Callable[[], None]:
    """SIGKILL master and workers at once, then start the server again on the same port."""

    def kill() -> None:
        server.kill_all()
        time.sleep(0.5)
        server.start()

    return kill


def test_kill_the_whole_server_during_batches_and_restart(tmp_path: Path, database_url: str,
                                                          rng: random.Random) -> None:
    with Server(tmp_path / "var", database_url) as server:
        run(server, kills(rng, restart(server)))


def test_kill_the_whole_server_with_the_archive_on_s3(tmp_path: Path, database_url: str,
                                                      rng: random.Random, moto: S3Peer) -> None:
    with Server(tmp_path / "var", database_url, peer=moto) as server:
        run(server, kills(rng, restart(server)))
        assert not (tmp_path / "var" / "archive").exists()
