"""Telemetry: raw device messages (deduplicated by device and sequence number), events, per-window model
figures, hourly roll-ups, drift scores, and the devices' MQTT status.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "device_messages",
        sa.Column("device_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ts", ts, nullable=False),
        sa.Column("received_at", ts, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
    )
    op.create_index("ix_device_messages_received_at", "device_messages", ["received_at"])
    op.create_table(
        "device_events",
        sa.Column("device_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("ts", ts, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
    )
    op.create_index("ix_device_events_ts", "device_events", ["ts"])
    op.create_table(
        "model_windows",
        sa.Column("device_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("ts", ts, nullable=False),
        sa.Column("window_s", sa.Float, nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("latency", sa.JSON, nullable=False),
        sa.Column("stats", sa.JSON, nullable=False),
        sa.Column("runtime", sa.String(32), nullable=True),
        sa.Column("accelerator", sa.String(100), nullable=True),
        sa.Column("fallback", sa.Boolean, nullable=True),
    )
    op.create_index("ix_model_windows_model_version_ts", "model_windows", ["model", "version", "ts"])
    op.create_table(
        "model_hourly",
        sa.Column("device_id", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("hour", ts, primary_key=True),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("latency", sa.JSON, nullable=False),
        sa.Column("drift", sa.Float, nullable=True),
    )
    op.create_table(
        "drift_scores",
        sa.Column("device_id", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("tensors", sa.JSON, nullable=False),
        sa.Column("summaries", sa.JSON, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
    )
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("mqtt_status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("status_at", ts, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("status_at")
        batch.drop_column("mqtt_status")
    op.drop_table("drift_scores")
    op.drop_table("model_hourly")
    op.drop_index("ix_model_windows_model_version_ts", table_name="model_windows")
    op.drop_table("model_windows")
    op.drop_index("ix_device_events_ts", table_name="device_events")
    op.drop_table("device_events")
    op.drop_index("ix_device_messages_received_at", table_name="device_messages")
    op.drop_table("device_messages")
