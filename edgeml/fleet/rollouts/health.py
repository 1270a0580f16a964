"""Where the controller reads the devices' telemetry: a seam over ``edgeml.fleet.telemetry_store``
(unit tests of the controller's decisions pass a fake; the server and the end-to-end test use this)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from edgeml.fleet.rollouts.gates import Health


class UpdateEvent(Protocol):
    device_id: str
    ts: datetime
    body: dict[str, Any]


class HealthSource(Protocol):
    def version_health(self, session: Session, *, model: str, version: str, device_ids: Sequence[str] | None,
                       since: datetime) -> Health: ...

    def update_events(self, session: Session, *, device_ids: list[str], since: datetime) -> Sequence[UpdateEvent]: ...


class TelemetryHealth:
    """The real source: what the ingest stored from the devices' MQTT telemetry and events."""

    def version_health(self, session: Session, *, model: str, version: str, device_ids: Sequence[str] | None,
                       since: datetime) -> Health:
        from edgeml.fleet import telemetry_store

        return telemetry_store.version_health(session, model=model, version=version,
                                              device_ids=None if device_ids is None else list(device_ids), since=since)

    def update_events(self, session: Session, *, device_ids: list[str], since: datetime) -> Sequence[UpdateEvent]:
        from edgeml.fleet import telemetry_store

        return telemetry_store.update_events(session, device_ids=device_ids, since=since)
