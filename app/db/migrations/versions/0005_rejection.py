"""Rejection (IHE IOCM): ``instance.rejected_at``, ``rejection_code`` and
``rejected_by_kos``, set when a Key Object Selection rejection note rejects the instance
(``app.workflow.corrections``). A rejected instance stays on disk, hidden from QIDO-RS,
WADO-RS, the viewer and the EMR.

Columns are added only when missing: a database that ``create_all`` made from newer models
already has them, and the baseline adopts such databases.

Revision ID: 0005_rejection
Revises: 0004_wound_measurement
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_rejection"
down_revision = "0004_wound_measurement"
branch_labels = None
depends_on = None

COLUMNS = (("rejected_at", sa.DateTime(timezone=True)),
           ("rejection_code", sa.String(16)),
           ("rejected_by_kos", sa.String(64)))


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("instance")}
    for name, kind in COLUMNS:
        if name not in present:
            op.add_column("instance", sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instance") as batch:
        for name, _kind in reversed(COLUMNS):
            batch.drop_column(name)
