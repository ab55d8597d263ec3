"""Schema migrations (Alembic, app/db/migrations): ``Database.create_schema()`` is
``ebiw db upgrade``. Every test runs on SQLite and, on the PostgreSQL pass, on PostgreSQL."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import DBAPIError

from app.cli import cli
from app.db import migrate
from app.db.migrate import MIGRATIONS, alembic_config, upgrade_transaction
from app.db.models import ApiToken, Base, Encounter, Patient, WoundMeasurement
from app.db.session import Database
from tests.conftest import REPO

HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()


@pytest.fixture
def url(tmp_path: Path, database_url: str) -> str:
    return database_url or f"sqlite:///{tmp_path / 'ebiw.sqlite3'}"


@pytest.fixture
def db(url: str) -> Iterator[Database]:
    database = Database(url)
    yield database
    database.engine.dispose()


def _add_patient_with_encounter(db: Database, mrn: str) -> None:
    with db.session() as s:
        s.add(Patient(mrn=mrn, issuer="HOSP", family="TEST", given="ALICE",
                      encounters=[Encounter(identifier=f"V-{mrn}")]))


def _counts(db: Database) -> tuple[int, int]:
    with db.session() as s:
        return (s.scalar(select(func.count()).select_from(Patient)) or 0,
                s.scalar(select(func.count()).select_from(Encounter)) or 0)


def test_the_migrations_build_exactly_what_the_models_describe(db: Database) -> None:
    """Fails when a model changes without a revision (``ebiw db revision -m ...``)."""
    result = db.create_schema()
    assert (result.before, result.after, result.adopted) == (None, HEAD, False)
    assert db.schema_differences() == []
    assert db.schema_revision() == HEAD


def test_schema_differences_sees_what_a_migration_missed(db: Database) -> None:
    db.create_schema()
    with db.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_delivery_due"))
    assert [d[0] for d in db.schema_differences()] == ["add_index"]


def test_a_database_made_by_create_all_is_adopted_and_keeps_its_rows(db: Database) -> None:
    Base.metadata.create_all(db.engine)
    _add_patient_with_encounter(db, "M1")
    with db.session() as s:
        s.add(ApiToken(token_hash="h" * 64, user="ward7", role="capture"))
    assert db.schema_revision() is None

    result = db.create_schema()
    assert (result.before, result.after, result.adopted) == (None, HEAD, True)
    assert "adopted" in result.describe()
    assert db.schema_differences() == []
    assert _counts(db) == (1, 1)
    with db.session() as s:
        assert s.scalars(select(ApiToken.user)).all() == ["ward7"]


def test_an_older_create_all_database_gets_the_tables_it_lacked(db: Database) -> None:
    """A version before the batch import or the audit trail made fewer tables."""
    Base.metadata.create_all(db.engine, tables=[Patient.__table__, Encounter.__table__])
    _add_patient_with_encounter(db, "M1")
    assert db.create_schema().adopted
    assert set(Base.metadata.tables) <= set(inspect(db.engine).get_table_names())
    assert db.schema_differences() == []
    assert _counts(db) == (1, 1)


def test_upgrading_again_changes_nothing(db: Database) -> None:
    db.create_schema()
    _add_patient_with_encounter(db, "M1")
    again = db.create_schema()
    assert (again.before, again.after, again.adopted) == (HEAD, HEAD, False)
    assert again.describe() == f"database is up to date at {HEAD}"
    assert _counts(db) == (1, 1)


def test_concurrent_upgrades_run_one_after_the_other(url: str) -> None:
    """Nodes (or the web service and the worker) starting at once: one upgrade builds the
    schema, the others wait for its lock and then find nothing to do."""
    databases = [Database(url) for _ in range(3)]
    start = threading.Barrier(len(databases))
    results: list[object] = []

    def upgrade(database: Database) -> None:
        start.wait()
        try:
            results.append(database.create_schema())
        except Exception as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=upgrade, args=(d,)) for d in databases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "an upgrade hangs"
    assert [r for r in results if isinstance(r, Exception)] == []
    assert sorted(getattr(r, "before", None) or "empty" for r in results) == \
        sorted(["empty", HEAD, HEAD])
    assert databases[0].schema_differences() == []
    for d in databases:
        d.engine.dispose()


def test_downgrade_to_base_then_upgrade_to_head(db: Database) -> None:
    db.create_schema()
    with upgrade_transaction(db.engine) as conn:
        command.downgrade(alembic_config(conn), "base")
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    assert db.create_schema().before is None
    assert db.schema_differences() == []


REVISION_HEADER = '''
import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{head}"
branch_labels = None
depends_on = None
'''


def _migrations_with(tmp_path: Path, revision: str, body: str) -> Path:
    """A copy of the app's migrations with one more revision after HEAD: ``body`` (its
    ``upgrade`` and ``downgrade``) under the usual header, in ``<revision>.py``."""
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    (migrations / "versions" / f"{revision}.py").write_text(
        REVISION_HEADER.format(revision=revision, head=HEAD) + body)
    return migrations


EXTRA_REVISION = '''

def upgrade() -> None:
    # SQLite cannot drop NOT NULL: batch mode rebuilds "patient", which "encounter" references.
    with op.batch_alter_table("patient") as batch:
        batch.add_column(sa.Column("note", sa.String(32), nullable=True))
        batch.alter_column("family", existing_type=sa.String(128), nullable=True)
    op.execute("UPDATE patient SET note = 'migrated'")


def downgrade() -> None:
    with op.batch_alter_table("patient") as batch:
        batch.alter_column("family", existing_type=sa.String(128), nullable=False)
        batch.drop_column("note")
'''


def test_a_later_revision_alters_a_referenced_table_and_rows_survive(
        db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    migrations = _migrations_with(tmp_path, "0099_test", EXTRA_REVISION)
    db.create_schema()
    _add_patient_with_encounter(db, "M1")
    _add_patient_with_encounter(db, "M2")

    monkeypatch.setattr(migrate, "MIGRATIONS", migrations)
    result = db.create_schema()
    assert (result.before, result.after) == (HEAD, "0099_test")
    assert "from " + HEAD + " to 0099_test" in result.describe()
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT note FROM patient")).scalars().all() == \
            ["migrated", "migrated"]
    columns = {c["name"]: c for c in inspect(db.engine).get_columns("patient")}
    assert columns["family"]["nullable"]
    assert [fk["referred_table"] for fk in inspect(db.engine).get_foreign_keys("encounter")] \
        == ["patient"]
    assert _counts(db) == (2, 2)

    with upgrade_transaction(db.engine) as conn:
        command.downgrade(alembic_config(conn), HEAD)
    monkeypatch.undo()
    assert db.schema_revision() == HEAD
    assert db.schema_differences() == []
    assert _counts(db) == (2, 2)


def test_ebiw_db_upgrade_and_current_print_the_revision(tmp_path: Path, url: str) -> None:
    env = {"EBIW_DATA_DIR": str(tmp_path / "var"), "EBIW_DATABASE_URL": url}
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "current"], env=env).output == "none\n"
    first = runner.invoke(cli, ["db", "upgrade"], env=env)
    assert first.exit_code == 0, first.output
    assert first.stdout == f"database upgraded from empty to {HEAD}\n"
    assert first.stderr == ""  # no difference between the models and the database
    second = runner.invoke(cli, ["db", "upgrade"], env=env)
    assert second.stdout == f"database is up to date at {HEAD}\n"
    assert runner.invoke(cli, ["db", "current"], env=env).output == f"{HEAD}\n"


FAILING_REVISION = '''

def upgrade() -> None:
    op.create_table("half_done", sa.Column("id", sa.Integer(), primary_key=True))
    with op.batch_alter_table("patient") as batch:
        batch.add_column(sa.Column("note", sa.String(32), nullable=True))
    op.execute("SELECT no_such_column FROM patient")


def downgrade() -> None:
    pass
'''


def test_a_failing_revision_changes_nothing(
        db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole upgrade is one transaction, on SQLite as on PostgreSQL."""
    migrations = _migrations_with(tmp_path, "0099_fails", FAILING_REVISION)
    db.create_schema()
    _add_patient_with_encounter(db, "M1")

    monkeypatch.setattr(migrate, "MIGRATIONS", migrations)
    with pytest.raises(DBAPIError, match="no_such_column"):
        db.create_schema()
    monkeypatch.undo()
    assert db.schema_revision() == HEAD
    assert "half_done" not in inspect(db.engine).get_table_names()
    assert db.schema_differences() == []
    assert _counts(db) == (1, 1)


def test_the_web_app_does_not_load_alembic() -> None:
    """Web workers never migrate: Alembic (about 12 MiB each) loads only where it is used."""
    probe = ("import sys, app.factory, app.db.session; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


def test_0002_adds_photo_quality_to_a_baseline_database_and_keeps_its_rows(db: Database) -> None:
    with upgrade_transaction(db.engine) as conn:
        command.upgrade(alembic_config(conn), "0001_baseline")
    _add_patient_with_encounter(db, "M1")
    assert "quality" not in {c["name"] for c in inspect(db.engine).get_columns("photo")}
    result = db.create_schema()
    assert (result.before, result.after) == ("0001_baseline", HEAD)
    assert "quality" in {c["name"] for c in inspect(db.engine).get_columns("photo")}
    assert db.schema_differences() == []
    assert _counts(db) == (1, 1)
    with upgrade_transaction(db.engine) as conn:  # and back
        command.downgrade(alembic_config(conn), "0001_baseline")
    assert "quality" not in {c["name"] for c in inspect(db.engine).get_columns("photo")}


REJECTION_COLUMNS = {"rejected_at", "rejection_code", "rejected_by_kos"}


def test_0005_adds_the_rejection_columns_to_the_instance_index_and_keeps_its_rows(
        db: Database) -> None:
    with upgrade_transaction(db.engine) as conn:
        command.upgrade(alembic_config(conn), "0004_wound_measurement")
        conn.execute(text("INSERT INTO instance (sop_uid, study_uid, series_uid, sop_class_uid,"
                          " path, sha256, size, attributes, stored_at) VALUES ('1.2.3', '1.2',"
                          " '1.2.1', '1.2.840.10008.5.1.4.1.1.77.1.4', 'a.dcm', 'x', 1, '{}',"
                          " CURRENT_TIMESTAMP)"))
    assert not REJECTION_COLUMNS & {c["name"] for c in inspect(db.engine).get_columns("instance")}
    assert db.create_schema().after == HEAD
    assert {c["name"] for c in inspect(db.engine).get_columns("instance")} >= REJECTION_COLUMNS
    assert db.schema_differences() == []
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT sop_uid, rejected_at FROM instance")).all() == \
            [("1.2.3", None)]
    with upgrade_transaction(db.engine) as conn:  # and back
        command.downgrade(alembic_config(conn), "0004_wound_measurement")
    assert not REJECTION_COLUMNS & {c["name"] for c in inspect(db.engine).get_columns("instance")}


def test_0010_adds_measurement_warnings_as_an_empty_list_to_the_rows_there(
        db: Database) -> None:
    with upgrade_transaction(db.engine) as conn:
        command.upgrade(alembic_config(conn), "0009_staged_clip")
        conn.execute(text("INSERT INTO capture_session (id, study_uid, patient_id, issuer,"
                          " source, created_by, created_at, utc_offset_minutes, status,"
                          " photo_count, accession_number, patient_verified, sensitive) VALUES"
                          " ('s1', '1.2', 'M1', 'HOSP', 'capture', 'nurse', CURRENT_TIMESTAMP,"
                          " 0, 'open', 0, '', true, false)"))
        conn.execute(text("INSERT INTO instance (sop_uid, study_uid, series_uid, sop_class_uid,"
                          " path, sha256, size, attributes, stored_at) VALUES ('1.2.3', '1.2',"
                          " '1.2.1', '1.2.840.10008.5.1.4.1.1.88.34', 'a.dcm', 'x', 1, '{}',"
                          " CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO wound_measurement (report_sop_uid, photo_sop_uid,"
                          " session_id, study_uid, tracking_uid, wound_label, region, quantity,"
                          " value, uncertainty, unit, points, taken_at, measured_at, observer)"
                          " VALUES ('1.2.3', '1.2.4', 's1', '1.2', '2.25.1', 'wound 1', 1,"
                          " 'length', 12.5, 0.3, 'mm', '[[0, 0], [1, 1]]', CURRENT_TIMESTAMP,"
                          " CURRENT_TIMESTAMP, 'nurse')"))
    assert "warnings" not in {c["name"] for c in inspect(db.engine).get_columns(
        "wound_measurement")}
    assert db.create_schema().after == HEAD
    assert db.schema_differences() == []
    with db.session() as s:
        [row] = s.scalars(select(WoundMeasurement)).all()
        assert (row.value, row.warnings) == (12.5, [])
        row.warnings = ["far_from_chart"]
    with db.session() as s:
        assert s.scalars(select(WoundMeasurement.warnings)).all() == [["far_from_chart"]]
    with upgrade_transaction(db.engine) as conn:  # and back
        command.downgrade(alembic_config(conn), "0009_staged_clip")
    assert "warnings" not in {c["name"] for c in inspect(db.engine).get_columns(
        "wound_measurement")}
