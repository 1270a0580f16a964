"""Telemetry tables (migration 0003). Raw messages are kept ``raw_retention_days``; hourly roll-ups and
drift scores are kept for good."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from edgeml.fleet.store.models import Base


class DeviceMessage(Base):
    """Every message a device sent, once: (device, sequence number) is the key that drops duplicates."""

    __tablename__ = "device_messages"
    __table_args__ = (Index("ix_device_messages_received_at", "received_at"),)

    device_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    ts: Mapped[datetime] = mapped_column()
    received_at: Mapped[datetime] = mapped_column()
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


class DeviceEvent(Base):
    """Events (model loaded, fallback, update progress, errors) with their name in ``kind``."""

    __tablename__ = "device_events"
    __table_args__ = (Index("ix_device_events_ts", "ts"),)

    device_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[datetime] = mapped_column()
    kind: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


class ModelWindow(Base):
    """One device's figures for one model version over one telemetry window."""

    __tablename__ = "model_windows"
    __table_args__ = (Index("ix_model_windows_model_version_ts", "model", "version", "ts"),)

    device_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    ts: Mapped[datetime] = mapped_column()
    window_s: Mapped[float] = mapped_column(Float)
    requests: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    latency: Mapped[list[int]] = mapped_column(JSON)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    runtime: Mapped[str | None] = mapped_column(String(32), nullable=True)
    accelerator: Mapped[str | None] = mapped_column(String(100), nullable=True)
    fallback: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class ModelHourly(Base):
    __tablename__ = "model_hourly"

    device_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    requests: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    latency: Mapped[list[int]] = mapped_column(JSON)
    drift: Mapped[float | None] = mapped_column(Float, nullable=True)


class DriftScore(Base):
    """The running drift of one device's live data for one model version against the bundle's reference."""

    __tablename__ = "drift_scores"

    device_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    tensors: Mapped[dict[str, Any]] = mapped_column(JSON)
    summaries: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column()
