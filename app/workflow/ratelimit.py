"""Fixed-window rate limits whose counters every worker and node shares.

Counters live in the database (SQLite or PostgreSQL: the ``rate_counter`` table, one atomic
UPDATE per hit) or, when ``EBIW_REDIS_URL`` is set, in Redis (INCR + EXPIRE). A window is
``window_seconds`` long and aligned to the epoch, so every worker agrees on which window a hit
belongs to. Keys are SHA-256 digests: no client address or username is stored.

If the counter store fails, the request is allowed (and the failure logged by type): the
lockout in :mod:`app.workflow.accounts` still guards passwords, and clinicians keep working.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from app.db.models import RateCounter
from app.db.session import Database, affected_rows
from app.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """The outcome of one hit: allowed or not, and when the window ends (whole seconds)."""

    allowed: bool
    count: int
    retry_after: int


class CounterUnavailable(Exception):
    """The counter store did not answer (database or Redis down)."""


class Counters(Protocol):
    """Where hits are counted; ``incr`` returns the count including this hit, or raises
    :class:`CounterUnavailable`."""

    def incr(self, key: str, window_seconds: int, expires_at: float) -> int: ...


class DatabaseCounters:
    """Counters in the ``rate_counter`` table of the app's database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def incr(self, key: str, window_seconds: int, expires_at: float) -> int:
        """Add one to ``key``; concurrent workers never lose a hit (atomic UPDATE, or the
        first INSERT retried as an UPDATE when another worker inserted first)."""
        expires = datetime.fromtimestamp(expires_at, UTC)
        column = RateCounter.__table__.c
        for _attempt in range(3):
            try:
                with self.db.session() as session:
                    if not affected_rows(session.execute(
                            update(RateCounter).where(column.key == key)
                            .values(count=column.count + 1))):
                        session.execute(insert(RateCounter).values(key=key, count=1,
                                                                   expires_at=expires))
                        session.execute(delete(RateCounter).where(
                            column.expires_at < datetime.now(UTC) - timedelta(seconds=1)))
                    return session.scalar(select(column.count).where(column.key == key)) or 1
            except IntegrityError:
                continue
            except SQLAlchemyError as exc:
                raise CounterUnavailable(type(exc).__name__) from exc
        return 1  # pragma: no cover - three lost insert races in a row


class RedisCounters:
    """Counters in Redis; each key expires when its window has passed."""

    def __init__(self, url: str) -> None:
        import redis  # only needed when EBIW_REDIS_URL is set

        self.client: Any = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)

    def incr(self, key: str, window_seconds: int, expires_at: float) -> int:
        """INCR and EXPIRE in one round trip (MULTI/EXEC)."""
        try:
            pipe = self.client.pipeline()
            pipe.incr(f"ebiw:rate:{key}")
            pipe.expireat(f"ebiw:rate:{key}", math.ceil(expires_at) + 1)
            count, _ = pipe.execute()
        except self.errors as exc:
            raise CounterUnavailable(type(exc).__name__) from exc
        return int(count)


class RateLimiter:
    """Checks and counts hits against per-window limits (a minute unless said), shared across
    workers."""

    def __init__(self, counters: Counters, window_seconds: int = 60) -> None:
        self.counters = counters
        self.window = window_seconds

    def hit(self, name: str, client: str, limit: int, now: float | None = None, *,
            window: int | None = None) -> Decision:
        """Count one request of ``client`` against limit ``name``.

        Guarantees: at most ``limit`` hits per window (``window`` seconds, default the
        limiter's) are allowed for one client, whichever worker receives them; ``limit`` 0
        allows everything without counting.
        """
        if limit <= 0:
            return Decision(True, 0, 0)
        window = window or self.window
        now = time.time() if now is None else now
        start = math.floor(now / window) * window
        end = start + window
        key = hashlib.sha256(f"{name}\0{client}\0{start}".encode()).hexdigest()
        try:
            count = self.counters.incr(key, window, end)
        except CounterUnavailable as exc:
            log.error("rate-limit counter unavailable: %s", exc)
            return Decision(True, 0, 0)
        return Decision(count <= limit, count, max(1, math.ceil(end - now)))


def build_rate_limiter(settings: Settings, db: Database) -> RateLimiter:
    """Redis counters when ``EBIW_REDIS_URL`` is set, else the database's."""
    return RateLimiter(RedisCounters(settings.redis_url) if settings.redis_url
                       else DatabaseCounters(db))
