"""Cancelled deliveries: ``delivery.status`` widened from 8 to 16 characters for
``cancelled`` (a PACS row whose instance was rejected before it was sent,
``app.workflow.corrections``).

Revision ID: 0008_delivery_cancelled
Revises: 0007_retention
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_delivery_cancelled"
down_revision = "0007_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("delivery") as batch:
        batch.alter_column("status", existing_type=sa.String(8), type_=sa.String(16),
                           existing_nullable=False)


def downgrade() -> None:
    op.execute("UPDATE delivery SET status = 'dead' WHERE status = 'cancelled'")
    with op.batch_alter_table("delivery") as batch:
        batch.alter_column("status", existing_type=sa.String(16), type_=sa.String(8),
                           existing_nullable=False)
