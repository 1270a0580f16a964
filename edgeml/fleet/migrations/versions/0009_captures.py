"""Captured samples: metadata per (device, capture id); the bytes are in the artifact store.

Revision ID: 0009
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "captures",
        sa.Column("device_id", sa.String(32), primary_key=True),
        sa.Column("capture_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("tensors", sa.JSON(), nullable=False),
        sa.Column("captured_at", TS, nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
    )
    op.create_index("ix_captures_model_received_at", "captures", ["model", "received_at"])
    op.create_index("ix_captures_received_at", "captures", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_captures_received_at", table_name="captures")
    op.drop_index("ix_captures_model_received_at", table_name="captures")
    op.drop_table("captures")
