"""Patient verification: ``capture_session.patient_verified``, false for a session opened for
a patient no directory knew (``EBIW_UNKNOWN_PATIENTS=hold``): its deliveries wait until the
patient is confirmed. Sessions opened before are taken as verified (today's behaviour).

The column is added only when missing: a database that ``create_all`` made from newer models
already has it, and the baseline adopts such databases.

Revision ID: 0006_patient_verification
Revises: 0005_rejection
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_patient_verification"
down_revision = "0005_rejection"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("capture_session")}
    if "patient_verified" not in columns:
        op.add_column("capture_session", sa.Column("patient_verified", sa.Boolean(),
                                                   nullable=False, server_default=sa.true()))


def downgrade() -> None:
    op.drop_column("capture_session", "patient_verified")
