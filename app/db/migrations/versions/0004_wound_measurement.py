"""Wound measurements: ``wound_measurement``, the index of the values each measurement SR holds
(one row per value), for the viewer, the EMR's Observations and the healing trajectory.

The table is created only when missing: a database that ``create_all`` made from newer models
already has it, and the baseline adopts such databases.

Revision ID: 0004_wound_measurement
Revises: 0003_token_expiry
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_wound_measurement"
down_revision = "0003_token_expiry"
branch_labels = None
depends_on = None

TABLE = "wound_measurement"


def upgrade() -> None:
    if TABLE in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        TABLE,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("report_sop_uid", sa.String(64), sa.ForeignKey("instance.sop_uid"),
                  nullable=False),
        sa.Column("photo_sop_uid", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(36), sa.ForeignKey("capture_session.id"),
                  nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("tracking_uid", sa.String(64), nullable=False),
        sa.Column("wound_label", sa.String(64), nullable=False),
        sa.Column("region", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.String(16), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("uncertainty", sa.Double(), nullable=False),
        sa.Column("unit", sa.String(8), nullable=False),
        sa.Column("points", sa.JSON(), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("observer", sa.String(64), nullable=False),
        sa.UniqueConstraint("report_sop_uid", "region", "quantity"),
    )
    for column in ("report_sop_uid", "photo_sop_uid", "session_id", "study_uid",
                   "tracking_uid"):
        op.create_index(f"ix_{TABLE}_{column}", TABLE, [column])


def downgrade() -> None:
    op.drop_table(TABLE)
