"""The fleet's tables (SQLAlchemy 2 declarative models).

The schema itself is owned by the Alembic migrations in ``edgeml.fleet.migrations``; these models must
describe exactly what the migrations create (a test compares them). Times are stored as timezone-aware
UTC; ids are short random strings so they can be shown, typed and used in MQTT topics.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes even for timezone=True columns; treat them as UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out, on every database (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return as_utc(value)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[str]: JSON, datetime: UTCDateTime}


class ApiToken(Base):
    """A person's or a device's API token. Only the sha256 of the secret is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    device_id: Mapped[str | None] = mapped_column(ForeignKey("devices.id"), nullable=True)


class AuditEntry(Base):
    """One change: who (token name), what (action + target + details), when, from where (client address)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class TrustedKey(Base):
    """A public key whose bundle signatures this fleet accepts (kept in the DB so servers share it)."""

    __tablename__ = "trusted_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    public_pem: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(String(200))
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class Bundle(Base):
    """A signed bundle; ``id`` is the sha256 of the file, so the same bytes are stored once."""

    __tablename__ = "bundles"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(100))
    runtime: Mapped[str] = mapped_column(String(32))
    precision: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[dict[str, Any]] = mapped_column()
    uploaded_at: Mapped[datetime] = mapped_column(default=utcnow)
    uploaded_by: Mapped[str] = mapped_column(String(200))


class Device(Base):
    """An enrolled device. ``mqtt_password_hash`` is in mosquitto's ``$7$`` (PBKDF2-SHA512) format."""

    __tablename__ = "devices"
    __table_args__ = (Index("ix_devices_enrolled_at_id", "enrolled_at", "id"),)   # keyset pages of the list

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    group: Mapped[str | None] = mapped_column("group_name", String(100), nullable=True, index=True)
    tags: Mapped[list[str]] = mapped_column(default=list)
    hardware: Mapped[dict[str, Any]] = mapped_column(default=dict)
    installed: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enrolled_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    mqtt_password_hash: Mapped[str] = mapped_column(String(255))
    mqtt_status: Mapped[str | None] = mapped_column(String(16), nullable=True)   # retained status: online/offline
    status_at: Mapped[datetime | None] = mapped_column(nullable=True)


class EnrollmentToken(Base):
    """A one-time, expiring token that lets one device enrol, optionally into a group with tags."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    group: Mapped[str | None] = mapped_column("group_name", String(100), nullable=True)
    tags: Mapped[list[str]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Rollout(Base):
    """A bundle being rolled out to the devices a selector picks, wave by wave, gated on their telemetry."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    bundle_id: Mapped[str] = mapped_column(ForeignKey("bundles.id"), index=True)
    state: Mapped[str] = mapped_column(String(32), default="created")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Revision 0004: the rollout engine (edgeml.fleet.rollouts).
    name: Mapped[str] = mapped_column(String(200), server_default="")
    version: Mapped[str] = mapped_column(String(64), server_default="")
    selector: Mapped[dict[str, Any]] = mapped_column(default=dict)
    waves: Mapped[list[int]] = mapped_column(JSON, default=list)
    gates: Mapped[dict[str, Any]] = mapped_column(default=dict)
    probation: Mapped[dict[str, Any]] = mapped_column(default=dict)
    observe_s: Mapped[float] = mapped_column(Float, server_default="600")
    wave_timeout_s: Mapped[float] = mapped_column(Float, server_default="1800")
    on_failure: Mapped[str] = mapped_column(String(16), server_default="pause")
    current_wave: Mapped[int] = mapped_column(Integer, server_default="0")
    wave_started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    observe_started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str] = mapped_column(String(200), server_default="")
    updated_at: Mapped[datetime | None] = mapped_column(nullable=True)


class RolloutDevice(Base):
    """One device's part in a rollout: its wave, where it stands, and the version to send it back to."""

    __tablename__ = "rollout_devices"

    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True, index=True)
    wave: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(32))
    previous_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class DesiredDocument(Base):
    """The latest signed desired state of one device (served to polling agents, re-published on start)."""

    __tablename__ = "desired_documents"
    __table_args__ = (Index("ix_desired_documents_published_at", "published_at"),)   # revision 0007

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    serial: Mapped[int] = mapped_column(BigInteger)
    models: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    wire: Mapped[str] = mapped_column(Text)
    rollout_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(nullable=True)


class RolloutWakeup(Base):
    """A note for the rollout controller that something it waits on happened (revision 0007; see
    ``edgeml.fleet.rollouts.wakeups``). One row per key: a burst of events is one row."""

    __tablename__ = "rollout_wakeups"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    at: Mapped[datetime] = mapped_column()


class Lease(Base):
    """A named lease: with several server processes on one database, only the holder acts (e.g. rollouts)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column()


class Setting(Base):
    """Server-wide values every server process sharing the DB must agree on (e.g. the broker service account)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
