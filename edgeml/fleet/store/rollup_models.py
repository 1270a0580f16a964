"""Telemetry roll-ups (migration 0005): what the API reads instead of raw telemetry rows.

Ingest keeps them current, batch by batch, in the transaction that stores the raw messages, so they
count every (device, seq) exactly once:

- ``device_versions``: per (device, model, version), lifetime requests/errors, first and last window,
  the last window's latency quantiles and the current drift score. "Which devices ran this version
  since T" is one index range (model, version, last_ts).
- ``version_minutes``: per (model, version, minute, writer), requests, errors and the merged latency
  histogram. ``writer`` is the ingest process that wrote the row, so several ingest processes never
  update the same row (no lock waits, no lost updates); readers add the writers up.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from edgeml.fleet.store.models import Base


class DeviceVersion(Base):
    __tablename__ = "device_versions"
    __table_args__ = (Index("ix_device_versions_model_version_last_ts", "model", "version", "last_ts"),)

    device_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_ts: Mapped[datetime] = mapped_column()
    last_ts: Mapped[datetime] = mapped_column()
    windows: Mapped[int] = mapped_column(BigInteger)
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    last_p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_p95_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    drift: Mapped[float | None] = mapped_column(Float, nullable=True)


class VersionMinute(Base):
    __tablename__ = "version_minutes"
    __table_args__ = (Index("ix_version_minutes_minute", "minute"),)

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    minute: Mapped[datetime] = mapped_column(primary_key=True)
    writer: Mapped[str] = mapped_column(String(64), primary_key=True)
    windows: Mapped[int] = mapped_column(Integer)
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    latency: Mapped[list[int]] = mapped_column(JSON)
