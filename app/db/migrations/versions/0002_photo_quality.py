"""Photo quality: ``photo.quality``, the quality record of each stored photo (sharpness,
exposure, chart, tilt, px per mm; ``app.pipeline.quality``). Photos stored before have none.

The column is added only when missing: a database that ``create_all`` made from newer models
already has it, and the baseline adopts such databases.

Revision ID: 0002_photo_quality
Revises: 0001_baseline
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_photo_quality"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("photo")}
    if "quality" not in columns:
        op.add_column("photo", sa.Column("quality", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("photo", "quality")
