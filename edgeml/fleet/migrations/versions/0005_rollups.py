"""Telemetry roll-ups the API reads instead of raw rows (device_versions, version_minutes), and the
index that pages the device list.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BACKFILL_WRITER = "migration-0005"


def upgrade() -> None:
    op.create_table(
        "device_versions",
        sa.Column("device_id", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("first_ts", TS, nullable=False),
        sa.Column("last_ts", TS, nullable=False),
        sa.Column("windows", sa.BigInteger, nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("last_p50_ms", sa.Float, nullable=True),
        sa.Column("last_p95_ms", sa.Float, nullable=True),
        sa.Column("drift", sa.Float, nullable=True),
    )
    op.create_index("ix_device_versions_model_version_last_ts", "device_versions", ["model", "version", "last_ts"])
    op.create_table(
        "version_minutes",
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("minute", TS, primary_key=True),
        sa.Column("writer", sa.String(64), primary_key=True),
        sa.Column("windows", sa.Integer, nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("latency", sa.JSON, nullable=False),
    )
    op.create_index("ix_version_minutes_minute", "version_minutes", ["minute"])
    op.create_index("ix_devices_enrolled_at_id", "devices", ["enrolled_at", "id"])
    _backfill()


def _backfill() -> None:
    """Roll up the raw windows an existing fleet already holds (raw retention bounds how many)."""
    from edgeml.telemetry.latency import merge

    bind = op.get_bind()
    windows = sa.table("model_windows", sa.column("device_id"), sa.column("model"), sa.column("version"),
                       sa.column("ts", TS), sa.column("requests"), sa.column("errors"), sa.column("latency", sa.JSON))
    drift = sa.table("drift_scores", sa.column("device_id"), sa.column("model"), sa.column("version"),
                     sa.column("score"))
    scores = {(d, m, v): s for d, m, v, s in bind.execute(sa.select(drift.c.device_id, drift.c.model,
                                                                    drift.c.version, drift.c.score))}
    devices: dict[tuple[str, str, str], dict[str, Any]] = {}
    minutes: dict[tuple[str, str, datetime], dict[str, Any]] = {}
    for d, m, v, ts, requests, errors, latency in bind.execute(sa.select(windows)):
        ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
        row = devices.setdefault((d, m, v), {"device_id": d, "model": m, "version": v, "first_ts": ts,
                                             "last_ts": ts, "windows": 0, "requests": 0, "errors": 0,
                                             "last_p50_ms": None, "last_p95_ms": None,
                                             "drift": scores.get((d, m, v))})
        row.update(first_ts=min(row["first_ts"], ts), last_ts=max(row["last_ts"], ts), windows=row["windows"] + 1,
                   requests=row["requests"] + requests, errors=row["errors"] + errors)
        minute = ts.replace(second=0, microsecond=0)
        cell = minutes.setdefault((m, v, minute), {"model": m, "version": v, "minute": minute,
                                                   "writer": BACKFILL_WRITER, "windows": 0, "requests": 0,
                                                   "errors": 0, "latency": []})
        cell.update(windows=cell["windows"] + 1, requests=cell["requests"] + requests,
                    errors=cell["errors"] + errors, latency=merge([cell["latency"] or merge([]), latency]))
    if devices:
        op.bulk_insert(sa.table("device_versions", *[sa.column(k) for k in next(iter(devices.values()))]),
                       list(devices.values()))
    if minutes:
        op.bulk_insert(sa.table("version_minutes", sa.column("model"), sa.column("version"),
                                sa.column("minute", TS), sa.column("writer"), sa.column("windows"),
                                sa.column("requests"), sa.column("errors"), sa.column("latency", sa.JSON)),
                       list(minutes.values()))


def downgrade() -> None:
    op.drop_index("ix_devices_enrolled_at_id", table_name="devices")
    op.drop_index("ix_version_minutes_minute", table_name="version_minutes")
    op.drop_table("version_minutes")
    op.drop_index("ix_device_versions_model_version_last_ts", table_name="device_versions")
    op.drop_table("device_versions")
