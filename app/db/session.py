"""Engine and session factory for the configured database, and its schema migrations."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, func, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Base

MIGRATIONS = Path(__file__).with_name("migrations")
"""The Alembic environment (env.py) and its revisions (versions/), shipped with the package."""

UPGRADE_LOCK = 0x6562_6977_6462  # b"ebiwdb": the PostgreSQL advisory lock key of upgrades


@dataclass(frozen=True)
class SchemaUpgrade:
    """What one ``Database.create_schema()`` did.

    ``before`` is the revision the database was at (None: no ``alembic_version`` table), and
    ``after`` the one it is at now, the newest. ``adopted``: the database held tables that
    ``create_all`` made before migrations existed, and the baseline took them over.
    """

    before: str | None
    after: str
    adopted: bool

    def describe(self) -> str:
        """One line for ``ebiw db upgrade``: from which revision to which."""
        if self.adopted:
            return (f"database made before migrations (create_all) adopted at the baseline, "
                    f"now at {self.after}")
        if self.before == self.after:
            return f"database is up to date at {self.after}"
        return f"database upgraded from {self.before or 'empty'} to {self.after}"


class Database:
    """One engine per process; ``session()`` gives a unit of work that commits or rolls back."""

    def __init__(self, url: str) -> None:
        self.url = url
        sqlite = url.startswith("sqlite")
        self.engine: Engine = create_engine(
            url, pool_pre_ping=not sqlite,
            connect_args={"timeout": 30} if sqlite else {})
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> SchemaUpgrade:
        """Upgrade the schema to the newest revision (``ebiw db upgrade``); idempotent.

        An empty database gets every table; one at an older revision runs the revisions after
        it; one that ``create_all`` made (tables, no ``alembic_version``) is adopted by the
        baseline, which creates only what is missing, and then upgraded. Everything happens in
        one transaction that no other upgrade can hold at the same time: on PostgreSQL under
        ``pg_advisory_xact_lock`` (a concurrent upgrade waits, then finds nothing to do), on
        SQLite under the database's write lock taken at ``BEGIN IMMEDIATE``.
        """
        with self._upgrade_transaction() as connection:
            before = MigrationContext.configure(connection).get_current_revision()
            adopted = before is None and bool(
                set(inspect(connection).get_table_names()) & set(Base.metadata.tables))
            command.upgrade(_alembic_config(connection), "head")
            after = MigrationContext.configure(connection).get_current_revision()
        assert after is not None  # upgrade to head always records a revision
        return SchemaUpgrade(before, after, adopted)

    def schema_revision(self) -> str | None:
        """The revision the database is at (None: never upgraded, or made by ``create_all``)."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def schema_differences(self) -> list[Any]:
        """Alembic's ``compare_metadata`` of the live database against the models.

        Empty when the migrations made exactly the tables, columns, types, indexes and
        constraints the models describe; else what a new revision must change (the entries
        autogenerate would write).
        """
        with self.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))

    def new_revision(self, message: str) -> Path:
        """Write the next revision (``versions/NNNN_<slug>.py``) that autogenerate derives from
        the models against this database, upgraded first; returns its path, to be read and
        tidied before it is committed."""
        self.create_schema()
        script = ScriptDirectory(str(MIGRATIONS))
        slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:24].rstrip("_")
        rev_id = f"{len(list(script.walk_revisions())) + 1:04d}_{slug}"
        with self._upgrade_transaction() as connection:
            written = command.revision(_alembic_config(connection), message,
                                       autogenerate=True, rev_id=rev_id)
        assert written is not None and not isinstance(written, list)
        return Path(written.path)

    @contextmanager
    def _upgrade_transaction(self) -> Iterator[Connection]:
        """A connection in a transaction only one upgrade holds at a time, committed when the
        block ends normally and rolled back otherwise.

        SQLite: foreign-key enforcement is off while migrations run (batch mode rebuilds a
        referenced table by drop and rename, which enforcement would cascade or refuse; it can
        only be switched outside a transaction) and ``PRAGMA foreign_key_check`` must find no
        dangling reference before the commit.
        """
        with self.engine.connect() as connection:
            dialect = connection.dialect.name
            if dialect != "sqlite":
                with connection.begin():
                    if dialect == "postgresql":
                        connection.execute(select(func.pg_advisory_xact_lock(UPGRADE_LOCK)))
                    yield connection
                return
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            try:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
                yield connection
                dangling = connection.exec_driver_sql("PRAGMA foreign_key_check").first()
                if dangling is not None:
                    raise RuntimeError(f"a migration left a dangling foreign key in "
                                       f"{dangling[0]} (row {dangling[1]}); rolled back")
                connection.commit()
            finally:
                connection.rollback()
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends normally and rolls back otherwise."""
        with self.sessions() as session, session.begin():
            yield session


def _alembic_config(connection: Connection) -> Config:
    """Alembic's configuration for ``app/db/migrations``, handing ``env.py`` the connection."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("file_template", "%%(rev)s")  # new_revision's ids name the files
    config.attributes["connection"] = connection
    return config


def _sqlite_pragmas(connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the one writer
    cursor.execute("PRAGMA synchronous=FULL")  # a committed upload survives power loss
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
