"""What every router needs, built once per server: the store, the artifact directory, the broker facts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastapi import Request

from edgeml.errors import EdgeMLError
from edgeml.fleet.artifacts import ArtifactStore
from edgeml.fleet.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerInfo:
    """Where devices find the MQTT broker. ``host`` None means "the host the device used for the API"."""

    port: int
    host: str | None = None
    tls: bool = False


class BrokerCredentials(Protocol):
    """A broker that keeps its own list of device credentials (managed Mosquitto, a Mosquitto password file).

    Both return only once the broker applied the change. ``add_device`` runs before the enrolment's
    transaction (which then takes it back with ``remove_device`` if it fails), ``remove_device`` inside
    the revocation's transaction; one that raises (EdgeMLError) stops the enrolment or revocation, so
    every device in the store can log in and no revoked one can.
    """

    def add_device(self, device_id: str, password: str) -> None: ...

    def remove_device(self, device_id: str) -> None: ...


@dataclass
class FleetContext:
    store: Store
    artifacts: ArtifactStore
    broker: BrokerInfo
    online_window_s: float = 120.0
    # Called after a device's broker credentials change (enrol, revoke): keeps mosquitto's files in sync.
    on_credentials_changed: list[Callable[[], None]] = field(default_factory=list)
    # Called with a device id after it was revoked: the embedded broker withdraws its open session's rights.
    on_device_revoked: list[Callable[[str], None]] = field(default_factory=list)
    ingest: Any = None  # the telemetry IngestService once started (its counters feed /metrics)
    broker_credentials: BrokerCredentials | None = None  # None: the broker asks the store (embedded)

    def credentials_changed(self) -> None:
        # The change is already committed; a failing sync (e.g. mosquitto's pid file is stale) must not
        # turn it into an error response, but it must be loud: the broker still has the old credentials.
        for hook in self.on_credentials_changed:
            try:
                hook()
            except EdgeMLError:
                log.exception("could not bring the broker's credentials in sync; fix it and run "
                              "'edgeml-fleet broker-config' (or restart the server)")

    def device_revoked(self, device_id: str) -> None:
        for hook in self.on_device_revoked:
            hook(device_id)


def get_context(request: Request) -> FleetContext:
    ctx: FleetContext = request.app.state.fleet
    return ctx


def data_paths(data_dir: Path) -> tuple[Path, Path]:
    """(database file, artifact directory) inside a data directory."""
    return data_dir / "fleet.db", data_dir / "artifacts"
