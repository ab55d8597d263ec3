"""API tokens: an optional expiry and the time of last use.

Both columns are added only when missing, as the baseline creates tables: a database that
``create_all`` made with today's models already has them when the baseline adopts it.

Revision ID: 0003_token_expiry
Revises: 0002_photo_quality
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_token_expiry"
down_revision = "0002_photo_quality"
branch_labels = None
depends_on = None

COLUMNS = ("expires_at", "last_used_at")


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("api_token")}
    for name in COLUMNS:
        if name not in present:
            op.add_column("api_token", sa.Column(name, sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_token") as batch:
        for name in COLUMNS:
            batch.drop_column(name)
