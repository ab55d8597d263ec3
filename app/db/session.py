"""Engine and session factory for the configured database."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

if TYPE_CHECKING:
    from app.db.migrate import SchemaUpgrade


CONNECT_TIMEOUT_SECONDS = 3
"""How long a new PostgreSQL connection may take before the request fails (libpq's own)."""
POOL_TIMEOUT_SECONDS = 10
"""How long a request waits for a free pooled connection."""
SQLITE_BUSY_SECONDS = 30
"""How long an SQLite connection waits for another's write lock before "database is locked"."""


class Database:
    """One engine per process; ``session()`` gives a unit of work that commits or rolls back.

    The schema methods load Alembic (``app.db.migrate``) on first use only.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        sqlite = url.startswith("sqlite")
        # A server database that stopped or restarted is seen at checkout (pre-ping) and a
        # connection attempt gives up after CONNECT_TIMEOUT_SECONDS, so a request fails fast
        # (503, app.web.errors) instead of hanging, and the next one after a restart works.
        self.engine: Engine = create_engine(
            url, pool_pre_ping=not sqlite, pool_timeout=POOL_TIMEOUT_SECONDS,
            connect_args={"timeout": SQLITE_BUSY_SECONDS} if sqlite
            else {"connect_timeout": CONNECT_TIMEOUT_SECONDS})
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> SchemaUpgrade:
        """Upgrade the schema to the newest migration (``ebiw db upgrade``), creating it in an
        empty database and adopting one that ``create_all`` made; idempotent, one upgrade at
        a time, all or nothing (``app.db.migrate.upgrade``)."""
        from app.db import migrate

        return migrate.upgrade(self.engine)

    def schema_revision(self) -> str | None:
        """The revision the database is at (None: never upgraded, or made by ``create_all``)."""
        from app.db import migrate

        return migrate.current_revision(self.engine)

    def schema_differences(self) -> list[Any]:
        """What differs between the database and the models (Alembic's ``compare_metadata``);
        empty after ``create_schema()`` unless a model changed without its revision."""
        from app.db import migrate

        return migrate.differences(self.engine)

    def new_revision(self, message: str) -> Path:
        """Autogenerate the next revision from the models against this database; its path."""
        from app.db import migrate

        return migrate.new_revision(self.engine, message)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends normally and rolls back otherwise."""
        with self.sessions() as session, session.begin():
            yield session


def affected_rows(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched. ``Session.execute`` returns a ``CursorResult``
    for such a statement, but is typed as returning a plain ``Result``, which has no rowcount."""
    return cast("CursorResult[Any]", result).rowcount


def _sqlite_pragmas(connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
    _write_ahead_log(cursor)  # readers never block the one writer
    cursor.execute("PRAGMA synchronous=FULL")  # a committed upload survives power loss
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _write_ahead_log(cursor: Any) -> None:
    """Put the database in WAL mode. Switching a new database needs its exclusive lock, and
    SQLite answers "database is locked" at once, without waiting its busy timeout, while
    another connection holds a lock on the file (another node creating the schema at the
    same time): retried until `SQLITE_BUSY_SECONDS`."""
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
