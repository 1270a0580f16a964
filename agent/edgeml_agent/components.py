"""The agent's optional components, built from the services: telemetry first (the update component
reports through it and receives desired states over its MQTT connection), then updates, then capture
(it reads the telemetry's drift figures, takes its policy overrides from the desired states the update
component accepts, and keeps the samples its probation shadow disagrees on)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from edgeml_agent.capture.component import CaptureComponent
from edgeml_agent.services import Component, Services
from edgeml_agent.telemetry.component import TelemetryComponent
from edgeml_agent.updates.component import UpdateComponent


def build_components(services: Services) -> Sequence[Component]:
    telemetry = TelemetryComponent(services.config.telemetry, services)
    updates = UpdateComponent(services.config.updates, services, events=telemetry, desired=telemetry)

    def drift(model: str, version: str) -> Mapping[str, float]:
        collector = telemetry.collector   # None until telemetry started (or when it is off)
        return collector.drift_scores(model, version) if collector is not None else {}

    capture = CaptureComponent(services, events=telemetry, drift=drift)
    updates.health.on_shadow_disagreement.append(capture.shadow_disagreed)
    updates.desired_listeners.append(capture.desired_changed)
    return [telemetry, updates, capture]
