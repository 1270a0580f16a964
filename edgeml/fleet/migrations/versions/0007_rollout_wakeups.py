"""The rollout controller's wake-ups: a small table of "something happened" notes (one row per key) that
the API and the ingest write and the controller takes, so it sleeps instead of polling the fleet; and an
index on desired_documents.published_at (the controller looks up the documents the broker has not
acknowledged yet).

Revision ID: 0007
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollout_wakeups",
        sa.Column("key", sa.String(80), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_desired_documents_published_at", "desired_documents", ["published_at"])


def downgrade() -> None:
    op.drop_index("ix_desired_documents_published_at", table_name="desired_documents")
    op.drop_table("rollout_wakeups")
