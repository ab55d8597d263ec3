"""Schema migrations with Alembic (``app/db/migrations``): upgrade, current revision, the
difference between the database and the models, new revisions.

Imported only by the processes that migrate (``Database.create_schema()`` and friends load it
on first use): Alembic costs every importer about 12 MiB and 0.1 s, which web workers, which
never migrate, are spared.
"""

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
from sqlalchemy import Connection, Engine, func, inspect, select

from app.db.models import Base

MIGRATIONS = Path(__file__).with_name("migrations")
"""The Alembic environment (env.py) and its revisions (versions/), shipped with the package."""

UPGRADE_LOCK = 0x6562_6977_6462  # b"ebiwdb": the PostgreSQL advisory lock key of upgrades


@dataclass(frozen=True)
class SchemaUpgrade:
    """What one ``upgrade()`` did.

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


def upgrade(engine: Engine) -> SchemaUpgrade:
    """Upgrade the schema to the newest revision; idempotent.

    An empty database gets every table; one at an older revision runs the revisions after it;
    one that ``create_all`` made (tables, no ``alembic_version``) is adopted by the baseline,
    which creates only what is missing, and then upgraded. All of it happens in one
    ``upgrade_transaction()``: a concurrent upgrade waits, then finds nothing to do, and a
    failing revision leaves the database as it was.
    """
    with upgrade_transaction(engine) as connection:
        before = MigrationContext.configure(connection).get_current_revision()
        adopted = before is None and bool(
            set(inspect(connection).get_table_names()) & set(Base.metadata.tables))
        command.upgrade(alembic_config(connection), "head")
        after = MigrationContext.configure(connection).get_current_revision()
    assert after is not None  # an upgrade to head always records a revision
    return SchemaUpgrade(before, after, adopted)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never upgraded, or made by ``create_all``)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def differences(engine: Engine) -> list[Any]:
    """Alembic's ``compare_metadata`` of the live database against the models.

    Empty when the database has exactly the tables, columns, types, indexes and constraints
    the models describe; else what a new revision must change (what autogenerate would write).
    """
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def new_revision(engine: Engine, message: str) -> Path:
    """Write the next revision, ``versions/NNNN_<slug>.py``, that autogenerate derives from
    the models against this database (upgraded first); returns its path. It is a draft, to be
    read and tidied before it is committed."""
    upgrade(engine)
    script = ScriptDirectory(str(MIGRATIONS))
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:24].rstrip("_")
    rev_id = f"{len(list(script.walk_revisions())) + 1:04d}_{slug}"
    with upgrade_transaction(engine) as connection:
        written = command.revision(alembic_config(connection), message,
                                   autogenerate=True, rev_id=rev_id)
    assert written is not None and not isinstance(written, list)  # one revision, no branches
    return Path(written.path)


@contextmanager
def upgrade_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that only one upgrade holds at a time, committed when
    the block ends normally and rolled back otherwise.

    PostgreSQL: ``pg_advisory_xact_lock`` first; DDL is transactional. SQLite:
    ``BEGIN IMMEDIATE`` takes the database's write lock at once (its DDL is transactional
    too), foreign-key enforcement is off meanwhile (batch mode rebuilds a referenced table by
    drop and rename, which enforcement would cascade or refuse; it can only be switched
    outside a transaction) and ``PRAGMA foreign_key_check`` must find no dangling reference
    before the commit.
    """
    with engine.connect() as connection:
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


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration for ``MIGRATIONS``, handing ``env.py`` the connection."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("file_template", "%%(rev)s")  # new_revision's ids name the files
    config.attributes["connection"] = connection
    return config
