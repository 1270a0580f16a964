"""What the update states may touch: the agent's services, the persisted record, the work directory,
settings, the health watch and the event sink — handed in, typed, nothing found by name."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from edgeml.desired import DesiredModel, DesiredState, parse_desired
from edgeml.jsontypes import JSON
from edgeml.protocol import UpdateState
from edgeml_agent.registry import LoadedModel
from edgeml_agent.services import EventSink, Services
from edgeml_agent.updates.health import HealthWatch, Shadow
from edgeml_agent.updates.record import RecordFile, UpdateRecord
from edgeml_agent.updates.settings import UpdateSettings

log = logging.getLogger("edgeml_agent.updates")


@dataclass
class UpdateContext:
    services: Services
    records: RecordFile
    work_dir: Path
    settings: UpdateSettings
    health: HealthWatch
    events: EventSink
    server_url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    device_id: str = ""
    staged: LoadedModel | None = None          # built in smoke_testing, swapped in switching
    shadow: Shadow | None = None

    def desired(self, record: UpdateRecord) -> tuple[DesiredState, DesiredModel]:
        assert record.desired is not None and record.model is not None
        state = parse_desired(record.desired.encode(), self.services.trust.fleet, device_id=self.device_id,
                              now=0.0)  # expiry was checked on receipt and is checked again before switching
        model = state.model(record.model)
        assert model is not None
        return state, model

    def bundle_path(self, record: UpdateRecord) -> Path:
        return self.work_dir / "downloads" / f"{record.bundle_sha256}.edgepkg"

    def checkpoint(self, state: UpdateState, point: str) -> None:
        """The test seam: ``services.on_state`` (a no-op in production) sees each fixed point."""
        self.services.on_state(state, point)

    def report(self, kind: str, **data: JSON) -> None:
        log.info("%s: %s", kind, {k: v for k, v in data.items() if v is not None})
        self.events.event(kind, **data)
