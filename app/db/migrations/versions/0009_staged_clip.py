"""Staged clips: ``staged_clip``, a video clip accepted but waiting for the worker to
re-encode it to H.264 (VP8/VP9 WebM…); its job is a ``video`` row of the outbox.

The table is created only when missing: a database that ``create_all`` made from newer models
already has it, and the baseline adopts such databases.

Revision ID: 0009_staged_clip
Revises: 0008_delivery_cancelled
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_staged_clip"
down_revision = "0008_delivery_cancelled"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "staged_clip",
        sa.Column("upload_uuid", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("media_type", sa.String(length=32), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=False),
        sa.Column("failure", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["capture_session.id"]),
        sa.PrimaryKeyConstraint("upload_uuid"),
        sa.UniqueConstraint("sop_uid"),
        if_not_exists=True,
    )
    op.create_index("ix_staged_clip_session_id", "staged_clip", ["session_id"],
                    if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_staged_clip_session_id", table_name="staged_clip")
    op.drop_table("staged_clip")
