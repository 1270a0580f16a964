"""The agent's optional components, built from the services: telemetry first (the update component
reports through it and receives desired states over its MQTT connection), then updates."""

from __future__ import annotations

from collections.abc import Sequence

from edgeml_agent.services import Component, Services
from edgeml_agent.telemetry.component import TelemetryComponent
from edgeml_agent.updates.component import UpdateComponent


def build_components(services: Services) -> Sequence[Component]:
    telemetry = TelemetryComponent(services.config.telemetry, services)
    return [telemetry, UpdateComponent(services.config.updates, services, events=telemetry, desired=telemetry)]
