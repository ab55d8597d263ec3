"""Retention: ``instance.purged_at`` and ``capture_session.purged_at`` (a retention purge
deleted the files; the rows stay as the record) and the ``legal_hold`` table (a study, or
every study of a patient, that no purge may touch).

Columns and the table are added only when missing: a database that ``create_all`` made from
newer models already has them, and the baseline adopts such databases.

Revision ID: 0007_retention
Revises: 0006_patient_verification
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_retention"
down_revision = "0006_patient_verification"
branch_labels = None
depends_on = None

PURGED = ("instance", "capture_session")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table in PURGED:
        if "purged_at" not in {c["name"] for c in inspector.get_columns(table)}:
            op.add_column(table, sa.Column("purged_at", sa.DateTime(timezone=True),
                                           nullable=True))
    if not inspector.has_table("legal_hold"):
        op.create_table(
            "legal_hold",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("study_uid", sa.String(64), nullable=True),
            sa.Column("issuer", sa.String(64), nullable=True),
            sa.Column("patient_id", sa.String(64), nullable=True),
            sa.Column("reason", sa.String(256), nullable=False),
            sa.Column("set_by", sa.String(128), nullable=False),
            sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
            sa.UniqueConstraint("study_uid"),
            sa.UniqueConstraint("issuer", "patient_id"))


def downgrade() -> None:
    op.drop_table("legal_hold")
    for table in reversed(PURGED):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("purged_at")
