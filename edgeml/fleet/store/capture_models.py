"""Captured samples (migration 0009): one row per sample a device sent; the bytes live in the artifact
store under their sha256 (``file_sha256``). (device, capture id) is the key that makes an upload
idempotent: a device that sends the same sample again (after a crash or a lost answer) stores it once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from edgeml.fleet.store.models import Base


class Capture(Base):
    __tablename__ = "captures"
    __table_args__ = (
        Index("ix_captures_model_received_at", "model", "received_at"),
        Index("ix_captures_received_at", "received_at"),
    )

    device_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    capture_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64))
    trigger: Mapped[str] = mapped_column(String(32))
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)
    tensors: Mapped[dict[str, Any]] = mapped_column(JSON)     # {"in/x": {"dtype", "shape"}, ...}
    captured_at: Mapped[datetime] = mapped_column()
    received_at: Mapped[datetime] = mapped_column()
    size: Mapped[int] = mapped_column(BigInteger)
    file_sha256: Mapped[str] = mapped_column(String(64))
