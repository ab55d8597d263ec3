"""Rate limits on login, identify and upload hold across workers (two app instances sharing one
database, as gunicorn workers do), and in Redis when EBIW_REDIS_URL is set."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from app.factory import create_app
from app.workflow.ratelimit import (
    CounterUnavailable,
    DatabaseCounters,
    RateLimiter,
    RedisCounters,
)
from app.workflow.tokens import create_token
from tests.conftest import services
from tests.security.conftest import PHOTO, away_from_window_edge

REDIS_URL = "redis://127.0.0.1:6379/15"
LIMITS = {"rate_login_per_minute": 3, "rate_identify_per_minute": 2,
          "rate_upload_per_minute": 2}


@pytest.fixture
def workers(tmp_path: Path, database_url: str) -> Iterator[tuple[Flask, Flask]]:
    """Two app instances on one data dir and database: two workers of one deployment."""
    apps = tuple(create_app({"data_dir": tmp_path / "var", "env": "test",
                             "database_url": database_url, **LIMITS}) for _ in range(2))
    services(apps[0]).db.create_schema()
    yield apps  # type: ignore[misc]
    for app in apps:
        services(app).db.engine.dispose()


def test_login_limit_is_shared_by_workers(workers: tuple[Flask, Flask]) -> None:
    away_from_window_edge()
    clients = [app.test_client() for app in workers]
    statuses = [clients[i % 2].post("/login", json={"username": "x", "password": "y"})
                for i in range(4)]
    assert [r.status_code for r in statuses] == [401, 401, 401, 429]
    refused = statuses[-1]
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["Cache-Control"] == "no-store"
    # another client address has its own budget
    other = clients[0].post("/login", json={"username": "x", "password": "y"},
                            environ_base={"REMOTE_ADDR": "10.9.8.7"})
    assert other.status_code == 401


def test_identify_and_upload_limits_count_per_user(workers: tuple[Flask, Flask]) -> None:
    away_from_window_edge()
    db = services(workers[0]).db
    nurse = {"Authorization": f"Bearer {create_token(db, 'nurse', 'capture')}"}
    other = {"Authorization": f"Bearer {create_token(db, 'other', 'capture')}"}
    a, b = (app.test_client() for app in workers)
    codes = [c.post("/api/v1/identify", json={"barcode": "00123456"}, headers=nurse)
             .status_code for c in (a, b, a)]
    assert codes[:2] != [429, 429] and codes[2] == 429
    assert b.post("/api/v1/identify", json={"barcode": "00123456"},
                  headers=other).status_code != 429
    session = a.post("/api/v1/sessions", json={"patient": {"id": "1", "issuer": "LOCAL"}},
                     headers=nurse).get_json()["id"]
    puts = [c.put(f"/api/v1/sessions/{session}/photos/{uuid.uuid4()}", data=PHOTO,
                  headers={**nurse, "Content-Type": "image/jpeg"}) for c in (a, b, a)]
    assert [p.status_code for p in puts] == [201, 201, 429]
    assert "Retry-After" in puts[2].headers


def test_limiter_windows_and_switch_off(app: Flask) -> None:
    limiter = RateLimiter(DatabaseCounters(services(app).db))
    start = 1_800_000_000.0  # a window boundary
    assert [limiter.hit("t", "c", 2, now=start + s).allowed for s in (0, 1, 2)] == \
        [True, True, False]
    assert limiter.hit("t", "c", 2, now=start + 59).retry_after == 1
    assert limiter.hit("t", "c", 2, now=start + 60).allowed  # a new window
    assert limiter.hit("t", "c", 0, now=start).allowed  # 0: no limit


def test_an_unavailable_counter_store_lets_requests_through(app: Flask) -> None:
    class Down:
        def incr(self, key: str, window_seconds: int, expires_at: float) -> int:
            raise CounterUnavailable("down")

    assert RateLimiter(Down()).hit("login", "c", 1).allowed


def test_redis_counters(tmp_path: Path) -> None:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    away_from_window_edge()
    apps = [create_app({"data_dir": tmp_path / f"node{i}", "env": "test",
                        "redis_url": REDIS_URL, **LIMITS}) for i in range(2)]
    user = f"nurse-{uuid.uuid4().hex[:8]}"  # fresh counters whatever ran before
    headers = []
    for app in apps:  # two nodes with separate databases share only Redis
        services(app).db.create_schema()
        token = create_token(services(app).db, user, "capture")
        headers.append({"Authorization": f"Bearer {token}"})
    codes = [apps[i % 2].test_client().post("/api/v1/identify", json={"barcode": "1"},
                                            headers=headers[i % 2]).status_code
             for i in range(3)]
    assert codes[2] == 429 and 429 not in codes[:2]
    limiter = RateLimiter(RedisCounters(REDIS_URL))
    client = uuid.uuid4().hex
    assert [limiter.hit("t", client, 1, now=1_800_000_000.0).allowed for _ in range(2)] == \
        [True, False]
    assert RateLimiter(RedisCounters("redis://127.0.0.1:1/0")).hit("t", client, 1).allowed
