"""Measurement warnings: ``wound_measurement.warnings``, the codes of the warnings each
measured value carries (far from the chart, extreme tilt: ``app.pipeline.geometry.WARNINGS``),
so the viewer, the FHIR Observations and the HL7 notices still say them after the save.
Rows indexed before have none (an empty list): their warnings were shown once and not kept.

The column is added only when missing: a database that ``create_all`` made from newer models
already has it, and the baseline adopts such databases.

Revision ID: 0010_measurement_warnings
Revises: 0009_staged_clip
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_measurement_warnings"
down_revision = "0009_staged_clip"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("wound_measurement")}
    if "warnings" not in columns:
        op.add_column("wound_measurement", sa.Column("warnings", sa.JSON(), nullable=False,
                                                     server_default=sa.text("'[]'")))


def downgrade() -> None:
    op.drop_column("wound_measurement", "warnings")
