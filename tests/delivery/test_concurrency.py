"""Two `ebiw worker` processes on one outbox never deliver a row twice: PostgreSQL (row locks,
SKIP LOCKED, a throw-away database per run) and the suite's database (SQLite: one writer,
atomic claims; on the PostgreSQL pass that case is the same as the first and is skipped)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, select

from app.db.models import Delivery
from tests.conftest import REPO
from tests.delivery.conftest import NOCHART, Deployment, wait_for
from tests.delivery.fakes import FakeStow

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"  # where the throw-away one is made


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    name = f"ebiw_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError:
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    """`ebiw worker --threads 2`, returned once its threads run."""
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--threads", "2"],
                            cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "worker threads started" in line:
            return proc
    raise AssertionError(f"the worker did not start (exit {proc.wait()})")


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_two_worker_processes_never_deliver_a_row_twice(
        database: str, deploy: Callable[..., Deployment], tmp_path: Path,
        database_url: str, request: pytest.FixtureRequest) -> None:
    if database == "sqlite" and database_url:
        pytest.skip("the PostgreSQL pass: the postgresql case covers it")
    settings = {"database_url": request.getfixturevalue("postgres_url")} \
        if database == "postgresql" else {}
    server = FakeStow(delay=0.05)  # slow enough for the workers to overlap
    workers: list[subprocess.Popen[str]] = []
    try:
        d = deploy([{"name": "pacs", "type": "stow-rs", "url": server.url, "batch_size": 2}],
                   **settings)
        env = {**os.environ, "EBIW_ENV": "test", "EBIW_DATA_DIR": str(tmp_path / "var"),
               "EBIW_DESTINATIONS_FILE": str(d.services.settings.destinations_file),
               "EBIW_DATABASE_URL": d.services.settings.database_url}
        with ThreadPoolExecutor(2) as pool:
            workers = list(pool.map(start_worker, [env, env]))
        sessions = [d.open_session() for _ in range(4)]
        sops = [d.upload(sessions[i % 4], NOCHART)["sop_instance_uid"]
                for i in range(40)]  # accepted while both workers deliver

        def sent() -> int:
            with d.services.db.session() as db:
                return db.scalar(select(func.count()).select_from(Delivery)
                                 .where(Delivery.status == "sent")) or 0

        wait_for(lambda: sent() == 40, 30, "all 40 deliveries")
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        results = [worker.communicate(timeout=30) for worker in workers]
        assert [w.returncode for w in workers] == [0, 0], [e[-2000:] for _, e in results]
        handled = [json.loads(out.splitlines()[-1])["handled"] for out, _ in results]
        assert sum(handled) == 40 and min(handled) > 0  # both took part
        assert dict(server.stored) == dict.fromkeys(sops, 1)  # every instance exactly once
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        server.close()
