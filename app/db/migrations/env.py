"""Alembic's environment: migrations run on the Connection the app hands over.

``app.db.migrate`` (``Database.create_schema()``) opens that connection, takes the upgrade
lock and passes it in ``config.attributes["connection"]``; there is no alembic.ini and no URL
here. Batch mode on SQLite lets later revisions ALTER what SQLite cannot (it rebuilds the
table); ``compare_type`` makes autogenerate and ``schema_differences()`` see type changes.
"""

from alembic import context

from app.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("migrations run through app.db.session.Database (ebiw db upgrade), "
                       "which passes config.attributes['connection']")
context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
