"""The rollout engine: rollout parameters and progress, per-device rollout state, signed desired-state
documents, and leases (one acting controller among several server processes).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def rollout_columns() -> list[sa.Column[Any]]:
    # fresh objects per call: a Column belongs to one table once attached
    return [
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("version", sa.String(64), nullable=False, server_default=""),
        sa.Column("selector", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("waves", sa.JSON(), nullable=False, server_default=sa.text("'[]'")),
        sa.Column("gates", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("probation", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("observe_s", sa.Float(), nullable=False, server_default="600"),
        sa.Column("wave_timeout_s", sa.Float(), nullable=False, server_default="1800"),
        sa.Column("on_failure", sa.String(16), nullable=False, server_default="pause"),
        sa.Column("current_wave", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("wave_started_at", TS, nullable=True),
        sa.Column("observe_started_at", TS, nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(200), nullable=False, server_default=""),
        sa.Column("updated_at", TS, nullable=True),
    ]


def upgrade() -> None:
    for column in rollout_columns():
        op.add_column("rollouts", column)
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.String(32), sa.ForeignKey("rollouts.id"), primary_key=True),
        sa.Column("device_id", sa.String(32), sa.ForeignKey("devices.id"), primary_key=True),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("previous_version", sa.String(64), nullable=True),
        sa.Column("sent_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_rollout_devices_device_id", "rollout_devices", ["device_id"])
    op.create_table(
        "desired_documents",
        sa.Column("device_id", sa.String(32), sa.ForeignKey("devices.id"), primary_key=True),
        sa.Column("serial", sa.BigInteger(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("wire", sa.Text(), nullable=False),
        sa.Column("rollout_id", sa.String(32), nullable=True),
        sa.Column("issued_at", TS, nullable=False),
        sa.Column("published_at", TS, nullable=True),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("desired_documents")
    op.drop_index("ix_rollout_devices_device_id", table_name="rollout_devices")
    op.drop_table("rollout_devices")
    with op.batch_alter_table("rollouts") as batch:
        for column in reversed(rollout_columns()):
            batch.drop_column(column.name)
